"""Faithful photo enhancement: a no-reference auto-grade, optionally refined by a LiT (or any dual-encoder) model.

The auto-grade (:mod:`.auto`) is always the starting point and, without a model, the answer. A guide only
refines it: a few bounded global tone parameters (and, when allowed, white balance and saturation) plus a coarse,
luminance-only dodge/burn grid are fitted on a small proxy so the model prefers the positive prompt over the
negative one (an antonym softmax, as in CLIP-IQA), while Zero-DCE-style no-reference terms hold the result to the
auto-grade: spatial consistency (luminance structure kept), illumination smoothness (total variation of the grid),
colour constancy (the auto-grade's channel balance kept) and an anchor on every parameter.

A guide is noisy (a small LiT model tuned on a few photos knows little about what a good photo is), so its
refinement is accepted only when its score gain exceeds NOISE_SIGMAS times the spread of its own score over crops
and flips of the same auto-graded image; otherwise the auto-grade is kept. Whatever is chosen, the operator can
only re-grade tones and global colour, so no setting can paint a blotch.

The model is duck-typed: ``encode_image(images [B,H,W,C] 0..1) -> [B,D]`` differentiable,
``encode_text(list[str]) -> [N,D]``, ``logit_scale`` and ``device``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..common.errors import LitError
from ..common.text import split_prompts
from . import spec
from .auto import auto_grade
from .dark_scene import check_dark_scenes
from .ops import (
    EnhancementParams,
    apply_enhancement,
    apply_enhancement_bchw,
    blend_mask,
    luminance,
    prepare_mask,
    to_bchw,
)

DEFAULT_POSITIVE = spec.DEFAULT_POSITIVE
DEFAULT_NEGATIVE = spec.DEFAULT_NEGATIVE
# Anchor weights (per parameter, per squared unit) that hold a refinement near the auto-grade.
_ANCHOR = {"exposure": 0.5, "gamma": 0.5, "contrast": 1.0, "detail": 0.2, "white_balance": 2.0, "saturation": 1.0}
_SMOOTH = 20.0  # total variation of the dodge/burn grid (illumination smoothness)


@dataclass
class EnhancementResult:
    image: torch.Tensor           # [B,H,W,3] 0..1, on the input's device
    params: EnhancementParams     # batch B (or 1 when shared), on the CPU, strength already applied
    auto_params: EnhancementParams  # the auto-grade each started from
    score_before: torch.Tensor | None  # [B] P(positive) of the input, None without a model
    score_after: torch.Tensor | None   # [B]
    guide_gain: torch.Tensor | None    # [n_sets] log-score gain of the refinement over the auto-grade (proxy)
    guide_noise: torch.Tensor | None   # [n_sets] spread of the guide's score over crops/flips (proxy)
    accepted: torch.Tensor | None      # [n_sets] bool: the refinement replaced the auto-grade
    sample_objective: torch.Tensor | None  # [samples, n_sets] final objective of each restart (lower is better)
    chosen: torch.Tensor | None   # [n_sets] index of the restart kept
    flat: torch.Tensor | None = None   # [n_sets] bool: a flat image the guide was not allowed to touch
    stats: list[dict] = field(default_factory=list)
    strength: float = 1.0

    def summary(self) -> str:
        lines = []
        shared_batch = self.params.batch_size == 1 and self.image.shape[0] > 1
        for i in range(self.image.shape[0]):
            pi = min(i, self.params.batch_size - 1)
            head = f"image {i}:"
            if self.score_before is not None:
                head += f" score {self.score_before[i].item():.3f} -> {self.score_after[i].item():.3f};"
            if self.flat is not None and bool(self.flat[pi]):
                head += " flat image: nothing for the guide to judge, kept as the auto-grade left it;"
            elif self.accepted is not None:
                gain, noise = self.guide_gain[pi].item(), self.guide_noise[pi].item()
                head += (f" guide refinement {'kept' if bool(self.accepted[pi]) else 'rejected'} (gain {gain:+.3f} vs "
                         f"its noise {noise:.3f} x {spec.NOISE_SIGMAS:g});")
            else:
                head += " auto-grade (no LiT guide);"
            st = self.stats[i] if i < len(self.stats) else {}
            if st.get("dark_scene_keep", 1.0) < 1.0:
                kept = st["dark_scene_keep"]
                head += (" the image tower reads a dark scene, not a darkened photo (margin "
                         f"{st['dark_scene_margin']:+.2f}): " + ("its midtone lift was taken back" if kept == 0 else
                                                                 f"{kept:.0%} of its midtone lift kept"))
                # a shared grade is the batch's mean: another photo's lift can still reach this one
                head += " before the batch's grade was shared;" if shared_batch else ";"
            if self.strength != 1.0:
                head += f" strength {self.strength:.2f};"
            lines.append(f"{head} {self.params.describe(pi)}")
        return "\n".join(lines)


def text_directions(model, positive: str | list[str], negative: str | list[str]) -> torch.Tensor:
    """``[2,D]`` unit vectors: the mean embedding of the positive prompts, then of the negative ones."""
    pos = split_prompts(positive, input_name="positive", fix="describe the look you want.")
    neg = split_prompts(negative, input_name="negative", fix="describe the opposite of the look you want.")
    with torch.no_grad():
        emb = model.encode_text(pos + neg).float()
    emb = F.normalize(emb, dim=-1)
    out = F.normalize(torch.stack([emb[:len(pos)].mean(0), emb[len(pos):].mean(0)]), dim=-1)
    if (out[0] - out[1]).norm() < 1e-4:
        raise LitError("the positive and negative prompts mean the same thing to this model.",
                       input_name="negative", fix="use an opposite of the positive prompt.")
    return out


def _logit_scale(model) -> torch.Tensor:
    scale = getattr(model, "logit_scale", 100.0)
    return torch.as_tensor(scale, dtype=torch.float32).detach().reshape(())


def antonym_scores(image_emb: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(positive) from the softmax over [positive, negative] (CLIP-IQA). ``[B,D]`` -> ``[B]``."""
    logits = scale.to(image_emb.device) * F.normalize(image_emb.float(), dim=-1) @ text.to(image_emb.device).T
    return torch.log_softmax(logits, dim=-1)[:, 0]


def proxy_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _grad_field(lum: torch.Tensor) -> torch.Tensor:
    gx = F.pad(lum[..., :, 1:] - lum[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(lum[..., 1:, :] - lum[..., :-1, :], (0, 0, 0, 1))
    return torch.cat([gx, gy], 1).flatten(1)


def structure_loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Spatial consistency (Zero-DCE's L_spa, made scale-free): 1 - correlation of luminance gradient fields, per
    image. Blind to global tone changes but not to edges appearing, vanishing or moving."""
    a, b = _grad_field(luminance(out)), _grad_field(luminance(ref))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    num = (a * b).sum(1)
    den = (a.square().sum(1) * b.square().sum(1) + 1e-12).sqrt()
    flat = b.square().sum(1) < 1e-8  # a flat reference has no structure to keep
    return torch.where(flat, torch.zeros_like(num), 1.0 - num / (den + 1e-6))


def _anchor(p: EnhancementParams, ref: EnhancementParams, names: tuple[str, ...]) -> torch.Tensor:
    cost = torch.zeros(p.batch_size, device=p.exposure.device)
    for n in names:
        if n == "local":
            g = p.local
            cost = cost + g.square().mean((1, 2, 3, 4)) + _SMOOTH * sum(
                g.diff(dim=d).square().mean((1, 2, 3, 4)) for d in (2, 3, 4))
            continue
        d = (getattr(p, n) - getattr(ref, n)).square()
        cost = cost + _ANCHOR[n] * (d.sum(1) if d.dim() > 1 else d)
    return cost


def _null_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Views of the same image a guide should score alike: a flip and four 90% crops (its noise floor)."""
    h, w = x.shape[-2:]
    ch, cw = max(int(h * 0.9), 1), max(int(w * 0.9), 1)
    views = [x, x.flip(-1)]
    for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
        views.append(F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                                   align_corners=False))
    return views


def _mean_params(p: EnhancementParams) -> EnhancementParams:
    return p._map(lambda t: t.mean(0, keepdim=True))


def enhance(images: torch.Tensor, model=None, positive: str | list[str] = DEFAULT_POSITIVE,
            negative: str | list[str] = DEFAULT_NEGATIVE, *, steps: int = 40, guidance: float = 1.0,
            fidelity: float = 1.0, seed: int = 0, samples: int = 2, mask: torch.Tensor | None = None,
            shared: bool = False, proxy_max_side: int = 256, strength: float = 1.0, auto: bool = True,
            allow_colour: bool = False, restart_noise: float = 1.0, dark_scene_check: bool = True,
            callback: Callable[[int], None] | None = None) -> EnhancementResult:
    """Enhance ``images`` ``[B,H,W,C]``: the auto-grade, refined toward ``positive`` by ``model`` when given.

    ``guidance`` scales the push of the prompts, ``fidelity`` the pull back toward the auto-grade. ``samples``
    restarts run with seed-derived noise; each image keeps its best, and then only if the gain beats the guide's
    noise. ``shared`` fits one grade for the whole batch. ``mask`` (1 = may change, same size as the image)
    confines the change. ``strength`` scales the final grade toward none. ``auto=False`` starts from no change.
    ``dark_scene_check`` lets the embedded image tower take back the auto-grade's midtone lift of a photo it reads
    as a dark scene rather than a darkened photo (:mod:`.dark_scene`).
    ``callback(step)`` is called after every step (it may raise to cancel). Deterministic per seed.
    """
    if steps < 0 or samples < 1:
        raise LitError("steps must be >= 0 and samples >= 1.", input_name="steps" if steps < 0 else "samples",
                       fix="use at least one sample.")
    if not (guidance >= 0 and fidelity >= 0):
        raise LitError("guidance and fidelity must be >= 0.", input_name="guidance" if not guidance >= 0 else
                       "fidelity", fix="use a non-negative value.")
    if not 0.0 <= strength <= 1.0:
        raise LitError(f"strength must be in 0..1, got {strength}.", input_name="strength",
                       fix="use 0 (no change) to 1 (the full grade).")
    src = to_bchw(images.detach().clone())
    b, _, h, w = src.shape
    full_mask = prepare_mask(None if mask is None else mask.detach().clone(), b, h, w, torch.device("cpu"))
    if auto:
        start, stats = auto_grade(src)
        if dark_scene_check:
            start = check_dark_scenes(src, start, stats)
    else:
        start, stats = EnhancementParams.identity(b), [{} for _ in range(b)]
    if shared:
        start = _mean_params(start)
    final = start
    gain = noise = accepted = sample_obj = chosen = flat = None
    before = after = None
    guided = model is not None and guidance > 0 and steps > 0
    if model is not None:
        device = torch.device(getattr(model, "device", "cpu"))
        text = text_directions(model, positive, negative).to(device)
        scale = _logit_scale(model).to(device)
    if guided:
        if torch.is_inference_mode_enabled():
            raise LitError("the guided refinement optimises the grade, which needs autograd, but it was called "
                           "under torch.inference_mode().", input_name="lit_model",
                           fix="call it outside inference mode (a node's FUNCTION uses @trainable_node from "
                               "nodes/host.py), or disconnect the LiT model for the auto-grade alone.")
        with torch.enable_grad():
            final, gain, noise, accepted, sample_obj, chosen, flat = _refine(
                src.clone(), None if full_mask is None else full_mask.clone(), start.detach(), model, text, scale,
                device, steps=steps, guidance=guidance, fidelity=fidelity, seed=seed, samples=samples,
                shared=shared, proxy_max_side=proxy_max_side, allow_colour=allow_colour,
                restart_noise=restart_noise, callback=callback)
    elif callback is not None:
        callback(max(steps, 1))
    params = final.scaled(strength).to("cpu")
    out_img = apply_enhancement(src.movedim(1, -1), params, None if full_mask is None else full_mask[:, 0])
    if model is not None:
        with torch.no_grad():
            before = antonym_scores(encode_full(model, src, device), text, scale).exp().cpu()
            after = antonym_scores(encode_full(model, out_img.movedim(-1, 1), device), text, scale).exp().cpu()
    return EnhancementResult(image=out_img.to(images.device), params=params, auto_params=start.to("cpu"),
                             score_before=before, score_after=after, guide_gain=gain, guide_noise=noise,
                             accepted=accepted, sample_objective=sample_obj, chosen=chosen, flat=flat, stats=stats,
                             strength=float(strength))


def _refine(src, full_mask, start, model, text, scale, device, *, steps, guidance, fidelity, seed, samples, shared,
            proxy_max_side, allow_colour, restart_noise, callback):
    b, _, h, w = src.shape
    n_sets = start.batch_size
    ph, pw = proxy_size(h, w, proxy_max_side)
    x = _downsample(src.to(device), (ph, pw))
    m = None if full_mask is None else F.interpolate(full_mask.to(device), size=(ph, pw), mode="bilinear",
                                                      align_corners=False, antialias=True).clamp(0, 1)
    names = spec.TONE_PARAMS + (spec.COLOUR_PARAMS if allow_colour else ())

    def encode(img_bchw: torch.Tensor) -> torch.Tensor:
        return model.encode_image(img_bchw.movedim(1, -1))

    start = start.to(device)
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    sets = []
    for k in range(samples):
        p = start.detach()
        if k > 0 and restart_noise > 0:
            # One draw per restart, shared by the batch: an image's result must not depend on its batch position.
            for n in names:
                t = getattr(p, n)
                t.add_(torch.randn(t.shape[1:], generator=gen).to(device) * spec.REFINE_NOISE[n] * restart_noise)
        sets.append(p)
    params = EnhancementParams.cat(sets)
    for n in names:
        getattr(params, n).requires_grad_(True)
    opt = torch.optim.Adam([{"params": [getattr(params, n)], "lr": spec.REFINE_LR[n]} for n in names],
                           betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.8 * i / max(steps, 1))
    ref_set = EnhancementParams.cat([start] * samples)

    # every (restart, image) pair -> its parameter set
    idx = torch.arange(samples * b, device=device)
    set_index = idx // b * n_sets + (idx % b if not shared else 0)
    xs = x.repeat(samples, 1, 1, 1)
    ms = None if m is None else m.repeat(samples, 1, 1, 1)
    with torch.no_grad():
        auto_out = blend_mask(apply_enhancement_bchw(x, start.select(set_index[:b] % n_sets)), x, m)
    auto_out_s = auto_out.repeat(samples, 1, 1, 1)
    auto_means = auto_out_s.mean((2, 3))

    def objective(p: EnhancementParams) -> tuple[torch.Tensor, torch.Tensor]:
        out = blend_mask(apply_enhancement_bchw(xs, p.select(set_index)), xs, ms)
        log_p = antonym_scores(encode(out).float(), text, scale)
        keep = structure_loss(out, xs)
        if allow_colour:  # colour constancy: keep the auto-grade's channel balance (global casts only)
            d = out.mean((2, 3)) - auto_means
            keep = keep + 20.0 * (d - d.mean(1, keepdim=True)).square().sum(1)
        per_image = -guidance * log_p + fidelity * keep
        per_set = torch.zeros(samples * n_sets, device=device).index_add(0, set_index, per_image)
        return per_set + fidelity * _anchor(p, ref_set, names), log_p

    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        per_set, _ = objective(params)
        per_set.sum().backward()  # sets are independent, so the sum gives each its own gradient
        for n in names:
            g = getattr(params, n).grad
            if g is not None:
                torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        opt.step()
        with torch.no_grad():  # stay inside the ranges (the operator clamps too; this keeps Adam's state honest)
            for n in names:
                getattr(params, n).copy_(getattr(params.clamped(), n))
        sched.step()
        if callback is not None:
            callback(step + 1)

    with torch.no_grad():
        per_set, log_p = objective(params)
        obj = per_set.view(samples, n_sets)
        best = obj.argmin(0)
        refined = params.detach().select(best * n_sets + torch.arange(n_sets, device=device))
        # the guide's score of the refined grade, of the auto-grade, and its noise floor (crops/flips of the latter)
        img_set = set_index[:b] % n_sets
        ref_out = blend_mask(apply_enhancement_bchw(x, refined.select(img_set)), x, m)
        s_ref = antonym_scores(encode(ref_out).float(), text, scale)
        views = torch.stack([antonym_scores(encode(v).float(), text, scale) for v in _null_views(auto_out)])
        s_auto = views[0]
        noise_img = views.std(0, unbiased=True)
        gain_img = s_ref - s_auto
        gain = torch.zeros(n_sets, device=device).index_add(0, img_set, gain_img) / torch.bincount(
            img_set, minlength=n_sets).clamp_min(1)
        noise = torch.zeros(n_sets, device=device).index_add(0, img_set, noise_img) / torch.bincount(
            img_set, minlength=n_sets).clamp_min(1)
        accepted = gain > spec.NOISE_SIGMAS * noise + 1e-4
        # a flat image (all white, all black, one colour) has nothing a guide can judge: it stays as it is
        flat = luminance(x).flatten(1).std(1, unbiased=False) < spec.FLAT_STD
        flat_set = torch.zeros(n_sets, dtype=torch.bool, device=device).index_put_((img_set,), flat)
        accepted = accepted & ~flat_set
        final = EnhancementParams(**{
            f: torch.where(accepted.view(-1, *([1] * (getattr(refined, f).dim() - 1))), getattr(refined, f),
                           getattr(start, f)) for f in refined.__dataclass_fields__})
    return (final.detach().to("cpu"), gain.cpu(), noise.cpu(), accepted.cpu(), obj.cpu(), best.cpu(), flat_set.cpu())


def encode_full(model, x_bchw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embed full-resolution images one at a time (the model resizes them itself)."""
    return torch.cat([model.encode_image(x_bchw[i:i + 1].to(device).movedim(1, -1)).float()
                      for i in range(x_bchw.shape[0])])
