"""Dark scene or darkened photo? The embedded image tower decides whether the auto-grade's midtone lift stays.

The exposure gate (:mod:`.auto`) sees only the tones, and no tone statistic tells a correct low-key photo (a night
street, a portrait on black, a reef at depth) from a photo darkened by a curve: both are darker than nearly every
correctly exposed photo (bench/README.md, Enhancement). What differs is what the lift does to the *content*:
lifting a darkened photo brings back an ordinary photo, lifting a dark scene makes a washed-out one. The locked
EfficientNet-Lite0 sees that. The probe is a logistic regression on the change of its embedding under the lift,
``embed(lifted) - embed(photo)``, and the exposure evidence g; a lift whose score falls below the probe's threshold
is taken back (levels and white balance stay). It was fitted by ``bench/fit_dark_scene_probe.py`` on 800 Flickr8k
photos and the author's own darkened copies of them (never on the enhancement benchmark's CBSD68), with the
threshold set where it keeps DARK_SCENE_KEEP_LIFTS (spec) of the lifts of darkened copies (cross-validated);
the file records that.

The probe belongs to one tower: its file carries the tower's fingerprint and is refused for any other.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch

from ..common.errors import LitError
from ..common.safetensors_io import load_tensors, read_metadata
from . import spec
from .ops import EnhancementParams, apply_enhancement

PROBE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dark_scene_probe.safetensors")


@dataclass(frozen=True)
class DarkSceneProbe:
    weight: torch.Tensor   # [D + 1]: the embedding change, then g
    bias: float
    threshold: float       # a margin below it means "dark scene": the lift is taken back
    tower_fingerprint: str
    path: str

    def margin(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D + 1]`` -> ``[B]`` logit of "darkened photo" minus the threshold (< 0: a dark scene)."""
        return features.float() @ self.weight + self.bias - self.threshold

    def keep(self, margin: torch.Tensor) -> torch.Tensor:
        """How much of the lift stays, 0..1, from the margin."""
        return ((margin + spec.DARK_SCENE_RAMP) / (2 * spec.DARK_SCENE_RAMP)).clamp(0.0, 1.0)


_PROBES: dict[tuple[str, float], DarkSceneProbe] = {}  # keyed by file and its modification time


def load_probe(path: str = PROBE_FILE) -> DarkSceneProbe:
    """The probe in ``path`` (the shipped one by default), checked: finite weights, a threshold, a fingerprint."""
    fix = "reinstall ComfyUI-LiT (the file ships with it), or turn the node's dark_scene_check off."
    if not os.path.isfile(path):
        raise LitError(f"the dark-scene probe '{path}' is missing.", input_name="dark_scene_check", fix=fix)
    key = (path, os.path.getmtime(path))
    if key in _PROBES:
        return _PROBES[key]
    meta = read_metadata(path, input_name="dark_scene_check")
    tensors = load_tensors(path, input_name="dark_scene_check")
    try:
        weight, bias = tensors["weight"].float().reshape(-1), float(tensors["bias"].reshape(()))
        threshold, fingerprint = float(meta["threshold"]), meta["tower_fingerprint"]
    except (KeyError, ValueError, RuntimeError) as err:
        raise LitError(f"the dark-scene probe '{path}' is malformed ({err}).", input_name="dark_scene_check",
                       fix=fix) from None
    if not (torch.isfinite(weight).all() and math.isfinite(bias) and math.isfinite(threshold)):
        raise LitError(f"the dark-scene probe '{path}' holds NaN or infinite weights.", input_name="dark_scene_check",
                       fix=fix)
    probe = DarkSceneProbe(weight, bias, threshold, fingerprint, path)
    _PROBES[key] = probe
    return probe


def lift_features(tower, photo: torch.Tensor, lifted: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The probe's input: the tower's embedding change under the lift, then the exposure evidence.

    ``photo`` and ``lifted`` ``[B,H,W,3]`` in 0..1, ``g`` ``[B]`` -> ``[B, D + 1]``. The tower sees each through
    its own preprocessing and the probe's views (the whole photo: a dark corner may be all the evidence)."""
    with torch.no_grad():
        before = tower.encode(photo)
        after = tower.encode(lifted)
    return torch.cat([(after - before).float().cpu(), g.float().reshape(-1, 1).cpu()], 1)


def check_tower(probe: DarkSceneProbe, tower) -> None:
    """Refuse a probe fitted on another tower (its fingerprint or its width differs)."""
    if tower.fingerprint != probe.tower_fingerprint or probe.weight.numel() != tower.embed_dim + 1:
        raise LitError(f"the dark-scene probe '{probe.path}' was fitted on another image tower than "
                       f"'{getattr(tower, 'name', '?')}'.", input_name="dark_scene_check",
                       fix="use the embedded image tower for the check (the default), or turn dark_scene_check off.")


_TOWERS: dict[tuple[str, str], object] = {}  # the embedded tower, keyed by its weights file and views


def embedded_tower():
    """The embedded EfficientNet-Lite0 tower with the probe's views (loaded once per weights file)."""
    from ..towers.image_tower import default_image_weights, load_image_tower

    off = " Or turn the node's dark_scene_check off (every photo the exposure gate flags is then lifted)."
    try:
        key = (default_image_weights(), spec.DARK_SCENE_VIEWS)
        if key not in _TOWERS:
            _TOWERS[key] = load_image_tower(key[0], views=key[1], input_name="dark_scene_check")
    except LitError as err:  # the node has no image-encoder input: say what this check needs, and how to skip it
        raise LitError(f"the dark-scene check needs the embedded image tower: {err.message}",
                       input_name="dark_scene_check", fix=(err.fix or "reinstall ComfyUI-LiT.") + off) from None
    return _TOWERS[key]


def probe_view(src: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` -> the same photos with the longest side at most DARK_SCENE_SIDE (antialiased)."""
    h, w = src.shape[-2:]
    s = spec.DARK_SCENE_SIDE / max(h, w)
    if s >= 1:
        return src.float()
    size = (max(1, round(h * s)), max(1, round(w * s)))
    return torch.nn.functional.interpolate(src.float(), size=size, mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0.0, 1.0)


def grade_features(src: torch.Tensor, grades: EnhancementParams, g: torch.Tensor, tower) -> torch.Tensor:
    """The probe's features for photos ``[B,3,H,W]`` and their auto-grades: the grade applied to each photo's probe
    view, then :func:`lift_features`."""
    view = probe_view(src).movedim(1, -1)
    lifted = apply_enhancement(view, grades)
    return lift_features(tower, view, lifted, g)


def lifted_by_exposure_gate(grades: EnhancementParams, stats: list[dict]) -> list[int]:
    """The photos whose auto-grade lifts their midtones because the exposure gate found them too dark: the only
    ones the probe judges (and was fitted on)."""
    return [i for i, s in enumerate(stats) if s.get("exposure_evidence", -3.0) > spec.DARK_GATE[0]
            and float(grades.gamma[i]) > 0]


def check_dark_scenes(src: torch.Tensor, grades: EnhancementParams, stats: list[dict], *,
                      probe_path: str = PROBE_FILE) -> EnhancementParams:
    """Take back the midtone lift of every photo the probe reads as a dark scene. ``src`` ``[B,3,H,W]``, the auto-
    grades and their statistics (from :func:`.auto.auto_grade`; the statistics get ``dark_scene_margin`` and
    ``dark_scene_keep``) -> new grades, the lift of each scaled by how much of it stays (``grades`` is untouched)."""
    lifted = lifted_by_exposure_gate(grades, stats)
    if not lifted:
        return grades
    probe = load_probe(probe_path)
    tower = embedded_tower()
    check_tower(probe, tower)
    g = torch.tensor([stats[i]["exposure_evidence"] for i in lifted])
    margin = probe.margin(grade_features(src[lifted], grades.select(lifted), g, tower))
    keep = probe.keep(margin)
    for j, i in enumerate(lifted):
        stats[i]["dark_scene_margin"], stats[i]["dark_scene_keep"] = float(margin[j]), float(keep[j])
    factor = torch.ones_like(grades.gamma)
    factor[lifted] = keep.to(factor)
    return replace(grades, gamma=grades.gamma * factor)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, c: float) -> tuple[torch.Tensor, float]:
    """The probe's fitter (``bench/fit_dark_scene_probe.py``): L2 logistic regression on standardised ``x`` ``[N,D]``
    (float64), labels ``y`` in {0, 1}: sum of log-losses + |w|^2 / (2c) (sklearn's C), by LBFGS. Returns the weight
    and bias on the *raw* features (the standardisation folded in)."""
    with torch.inference_mode(False), torch.enable_grad():  # callers may be nodes, under inference mode
        x, y = x.clone().double(), y.clone().double()
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mu) / sd
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, reduction="sum")
            loss = loss + w.square().sum() / (2 * c)
            loss.backward()
            return loss

        opt.step(closure)
        w_raw = (w / sd).detach()
        return w_raw, float(b.detach() - (w_raw * mu).sum())
