"""Enhancement (issue 16): an operator that cannot invent colour, a no-reference auto-grade that leaves correct
photos alone, a guide that only refines (and only beyond its own noise), strength, reports, nodes. Real photos:
skimage.data and CBSD68 from ../shared.

The guide in the guided tests is a fixed, differentiable stand-in with the LiT model's duck-typed interface: its
image embedding is the deviation of luminance mean/spread and colour balance from typical photos through a fixed
orthonormal projection, and its "bright / well-exposed" text points at no deviation.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from shared_data import shared_path

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.enhancement import ops as enhancement_ops
from comfyui_lit.models.enhancement.auto import auto_grade
from comfyui_lit.models.enhancement.ops import EnhancementParams, apply_enhancement
from comfyui_lit.models.enhancement.sampler import enhance

skdata = pytest.importorskip("skimage.data")
skcolor = pytest.importorskip("skimage.color")

POS = "a bright, well-exposed photo"
NEG = "a dark, dull photo"
CBSD = ["101087.png", "145086.png", "300091.png"]


class StatLit:
    TARGET = (0.44, 0.25, 0.12, -0.04)

    def __init__(self, noise: float = 0.0) -> None:
        g = torch.Generator().manual_seed(1234)
        self.proj, _ = torch.linalg.qr(torch.randn(32, 4, generator=g))
        self.logit_scale = torch.tensor(10.0)
        self.device = torch.device("cpu")
        self.noise = noise  # > 0: a guide whose score depends on the crop more than on the grade

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = images[..., :3].movedim(-1, 1).float()
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
        m, s = lum.mean((1, 2)), (lum.var((1, 2), unbiased=False) + 1e-6).sqrt()
        ch = x.mean((2, 3))
        tm, ts, trg, tbg = self.TARGET
        cast = ((ch[:, 0] - ch[:, 1] - trg) ** 2 + (ch[:, 2] - ch[:, 1] - tbg) ** 2 + 1e-6).sqrt()
        f = torch.stack([torch.ones_like(m), 15 * ((m - tm) ** 2 + 1e-4).sqrt(), 15 * ((s - ts) ** 2 + 1e-4).sqrt(),
                         15 * cast], 1)
        if self.noise:  # depends on the exact pixels in one corner: differs between crops and flips
            f = f + self.noise * torch.sin(lum[:, :8, :8].sum((1, 2)) * 997.0)[:, None] * torch.tensor([0, 1, 1, 1])
        return F.normalize(f @ self.proj.T, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        good, bad = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
        rows = [bad if ("dark" in t or "dull" in t) else good for t in texts]
        return F.normalize(torch.stack(rows) @ self.proj.T, dim=-1)


def _load(path: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cbsd() -> dict[str, torch.Tensor]:
    return {n: _load(shared_path("data", "restoration", "CBSD68", n)) for n in CBSD}


@pytest.fixture(scope="module")
def cat() -> torch.Tensor:
    return torch.from_numpy(skdata.chelsea().astype(np.float32) / 255.0)[None]


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    y = {"gamma": lambda: x ** 2.2, "exposure": lambda: x * 0.4, "contrast": lambda: (x - 0.5) * 0.6 + 0.5,
         "cast": lambda: x * torch.tensor([1.0, 0.85, 0.6])}[kind]()
    return (y * 255).round() / 255  # what a saved 8-bit photo holds


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean().clamp_min(1e-12)))


def ciede(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(skcolor.deltaE_ciede2000(skcolor.rgb2lab(a[0].numpy()), skcolor.rgb2lab(b[0].numpy())).mean())


def local_colour_artefact(out: torch.Tensor, inp: torch.Tensor) -> float:
    """How far the output's colour departs, region by region, from what one *global* colour mapping would give.

    Any global grade (white balance, levels, curves, saturation) sends equal input colours to equal output
    colours. So we bin the input colours (32 levels per channel), take the mean output chromaticity of each bin,
    and measure what is left per pixel: smoothed at blotch scale (3% of the short side), its 99th percentile over
    smooth, unclipped regions (where a blotch shows most). A local tint that is not in the photo shows up here;
    a brightness-only dodge/burn does not (chromaticity is invariant to a gain)."""
    x, y = inp[0].movedim(-1, 0).double(), out[0].movedim(-1, 0).double()

    def chroma(t: torch.Tensor) -> torch.Tensor:
        return t[:2] / (t.sum(0, keepdim=True) + 1e-3)

    q = (x * 31).round().long().clamp(0, 31)
    key = (q[0] * 32 + q[1]) * 32 + q[2]
    k = key.reshape(-1)
    count = torch.zeros(32 ** 3, dtype=x.dtype).index_add_(0, k, torch.ones_like(k, dtype=x.dtype)).clamp_min(1)

    def residual(t: torch.Tensor) -> torch.Tensor:  # chromaticity minus its mean over the pixel's colour bin
        c = chroma(t).reshape(2, -1)
        mean = torch.stack([torch.zeros(32 ** 3, dtype=c.dtype).index_add_(0, k, ci) for ci in c]) / count
        return c - mean[:, k]

    # the input's own within-bin spread is subtracted, so only what the grade added remains
    d = (residual(y) - residual(x)).reshape(2, *x.shape[1:])
    # clipped or near-black pixels carry no colour: they neither count nor leak into their neighbours' average
    valid = ((y.amax(0) < 0.98) & (y.amin(0) > 0.02) & (x.amin(0) > 0.02)).to(d.dtype)
    w = max(int(0.03 * min(d.shape[-2:])), 1) * 2 + 1
    pool = lambda t: F.avg_pool2d(t[None], w, stride=1, padding=w // 2, count_include_pad=False)[0]  # noqa: E731
    d = pool(d * valid) / pool(valid[None]).clamp_min(1e-6)
    lum = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)).sum(0)
    gy, gx = torch.gradient(lum)
    ok = ((gx.abs() + gy.abs()) < 0.03) & (valid > 0)
    return float(torch.quantile(d.abs().amax(0)[ok].float(), 0.99))


# -- operator ----------------------------------------------------------------------------------------------------

def _random_params(batch: int, seed: int = 0) -> EnhancementParams:
    g = torch.Generator().manual_seed(seed)
    p = EnhancementParams.identity(batch)
    for t, std in zip(p.tensors(), (0.1, 0.05, 0.05, 0.4, 0.3, 2.0, 0.2, 0.2, 0.3, 0.3), strict=True):
        t.add_(torch.randn(t.shape, generator=g).abs() * std * (-1 if t is p.white or t is p.shadow_gain else 1))
    return p


def test_identity_bounds_and_seam_free_slicing(monkeypatch):
    x = torch.rand(2, 19, 33, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(apply_enhancement(x, EnhancementParams.identity(2)), x, atol=1e-5)
    p = _random_params(1)
    p.exposure += 100.0  # out of range: clamped, not applied as is
    big = torch.rand(1, 40, 50, 3, generator=torch.Generator().manual_seed(1))
    whole = apply_enhancement(big, p)
    assert whole.min() >= 0 and whole.max() <= 1 and torch.isfinite(whole).all()
    assert torch.equal(whole, apply_enhancement(big, p.clamped()))
    monkeypatch.setattr(enhancement_ops, "SLICE_CHUNK_PIXELS", 7 * 50)  # slice in bands of 7 rows
    assert torch.allclose(apply_enhancement(big, p), whole, atol=1e-6)


def test_tabulated_tone_curve_matches_the_exact_operator(cat):
    # applying a grade looks the per-channel curve up in a table; fitting evaluates it exactly (with autograd):
    # the two must agree to well under one 8-bit step, including steep midtone lifts near black
    x = cat.movedim(-1, 1)[:, :, ::3, ::3].contiguous()
    for seed in range(3):
        p = _random_params(1, seed=seed)
        p.gamma.fill_(1.4 if seed == 0 else -0.8)
        p.local.zero_()
        with torch.no_grad():
            fast = enhancement_ops.apply_enhancement_bchw(x, p)
        exact = enhancement_ops.apply_enhancement_bchw(x, p.detach().requires_grad_(True)).detach()
        assert (fast - exact).abs().max() < 2e-4, seed
        assert not torch.equal(fast, x)


def test_the_local_term_cannot_change_chromaticity(cat):
    # a wild dodge/burn grid: brightness may move, colour (r:g:b ratios) may not, wherever nothing clips
    p = EnhancementParams.identity(1)
    p.local.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    x = cat[:, ::4, ::4] * 0.5
    y = apply_enhancement(x, p)
    ok = (y.amax(-1) < 0.99) & (x.amin(-1) > 0.02)
    rx = x / x.sum(-1, keepdim=True)
    ry = y / y.sum(-1, keepdim=True)
    assert (rx - ry).abs()[ok].max() < 1e-4


def test_params_serialise_reapply_and_refuse_bad_files():
    p = _random_params(2, seed=5)
    q = EnhancementParams.from_dict(p.to_dict())
    x = torch.rand(2, 21, 17, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(apply_enhancement(x, p), apply_enhancement(x, q))
    with pytest.raises(LitError, match="incomplete"):
        EnhancementParams.from_dict({k: v for k, v in p.to_dict().items() if "local" not in k})
    with pytest.raises(LitError, match="another version"):
        EnhancementParams.from_dict({**p.to_dict(), "enhance.version": torch.tensor([1])})
    bad = p.to_dict()
    bad["enhance.exposure"] = torch.tensor([float("nan"), 0.0])
    with pytest.raises(LitError, match="NaN"):
        EnhancementParams.from_dict(bad)
    with pytest.raises(LitError, match="parameter sets"):
        apply_enhancement(torch.rand(3, 8, 8, 3), p)


def test_strength_scales_every_adjustment_toward_none(cbsd):
    x = degrade(cbsd["300091.png"], "exposure")
    p, _ = auto_grade(x.movedim(-1, 1))
    half = p.scaled(0.5)
    assert torch.allclose(half.white, 1 + (p.white - 1) / 2) and torch.allclose(half.gamma, p.gamma / 2)
    assert torch.allclose(apply_enhancement(x, p, strength=0.0), x, atol=1e-6)
    assert torch.allclose(apply_enhancement(x, p, strength=0.5), apply_enhancement(x, half), atol=1e-6)
    with pytest.raises(LitError, match="strength"):
        p.scaled(1.5)


# -- auto-grade on real photos -------------------------------------------------------------------------------------

def test_clean_photos_come_back_nearly_unchanged(cbsd, cat):
    for name, x in [*cbsd.items(), ("chelsea", cat)]:
        r = enhance(x)
        assert ciede(r.image, x) < 2.0 and psnr(r.image, x) > 35, (name, r.summary())


def test_every_cbsd68_original_is_left_alone_by_levels_and_cast(cbsd):
    # all 68 clean originals: the levels and colour-cast gates (calibrated on other photos) never fire, so only the
    # exposure control can move one, and only a scene darker than 90% of ordinary photos; those few (dark scenes
    # the statistics cannot tell from darkened ones, bench/README.md) are the only ones allowed below 35 dB
    from comfyui_lit.models.enhancement import spec
    from comfyui_lit.models.enhancement.auto import auto_grade_one

    folder = shared_path("data", "restoration", "CBSD68")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    assert len(names) == 68
    moved, scores = [], []
    for n in names:
        x = _load(os.path.join(folder, n))
        p, st = auto_grade_one(x[0].movedim(-1, 0))
        assert torch.equal(p.white, torch.ones(1, 3)) and torch.equal(p.black, torch.zeros(1, 3)), (n, st)
        assert float(p.exposure[0]) == 0.0 and st["cast"] == 0.0, (n, st)
        y = apply_enhancement(x, p)
        scores.append(psnr(y, x) if not torch.equal(y, x) else 60.0)
        if scores[-1] < 35:
            assert st["exposure_evidence"] > spec.DARK_GATE[0], (n, st)
            moved.append(n)
    assert len(moved) <= 4, moved
    assert np.mean(scores) > 50, np.mean(scores)


def test_all_white_and_flat_images_stay_put():
    for v in (1.0, 0.0, 0.5):
        x = torch.full((1, 24, 32, 3), v)
        assert torch.equal(enhance(x).image, x), v
        # a guide cannot darken white either: it must beat its own noise, and white has nothing to gain
        guided = enhance(x, StatLit(), POS, NEG, steps=10)
        assert torch.equal(guided.image, x) and "flat image" in guided.summary(), v
    tiny = torch.rand(1, 1, 7, 3)
    assert torch.isfinite(enhance(tiny, StatLit(), POS, NEG, steps=3).image).all()


@pytest.mark.parametrize("kind,margin", [("gamma", 4.0), ("exposure", 15.0), ("contrast", 10.0), ("cast", 8.0)])
def test_degraded_photos_come_back(cbsd, kind, margin):
    gains = []
    for name, clean in cbsd.items():
        bad = degrade(clean, kind)
        r = enhance(bad)
        gains.append(psnr(r.image, clean) - psnr(bad, clean))
        # a photo the auto-grade cannot tell from a correct one is left alone, never made worse
        assert gains[-1] >= -0.1, f"{name}/{kind}: PSNR gain {gains[-1]:.2f} dB; {r.summary()}"
    assert np.mean(gains) >= margin, f"{kind}: mean PSNR gain {np.mean(gains):.2f} dB < {margin} dB"


def test_no_local_colour_artefact_even_when_a_guide_pushes_hard(cat, cbsd):
    # the old operator (a 12-channel colour grid) painted magenta blotches into exactly this photo
    for x in (cat[:, ::2, ::2],):
        r = enhance(x, StatLit(), POS, NEG, steps=25, guidance=20.0, fidelity=0.05, samples=2, allow_colour=True,
                    auto=False)
        assert (r.image - x).abs().mean() > 0.01  # it did move
        # everything but sharpening: no local colour at all (the dodge/burn grid is a gain; colour terms global)
        no_detail = r.params.detach()
        no_detail.detail.zero_()
        assert local_colour_artefact(apply_enhancement(x, no_detail), x) < 0.002, r.summary()
        # strong sharpening (a luminance gain per pixel) leaves fine-texture halos, not blotches: measured ~0.015
        # on the cat at detail ~0.8, under a 15% magenta blob's 0.026
        assert local_colour_artefact(r.image, x) < 0.02, r.summary()
    # the auto-grade on a darkened and a cast photo (steep global curves: the measure's bins see some spread)
    for kind in ("gamma", "cast"):
        x = degrade(cbsd["101087.png"], kind)[:, ::2, ::2]
        assert local_colour_artefact(enhance(x).image, x) < 0.01, kind
    # and the measure does catch a blotch: a soft magenta patch of the kind issue 16 reported (+-15% gains: ~0.026;
    # +-5%, barely visible, ~0.009)
    y = cat[:, ::2, ::2].clone()
    h, w = y.shape[1:3]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    blob = torch.exp(-(((yy - h * 0.3) / (h * 0.1)) ** 2 + ((xx - w * 0.2) / (w * 0.1)) ** 2))[None, ..., None]
    y = (y * (1 + 0.15 * blob * torch.tensor([1.0, -1.0, 1.0]))).clamp(0, 1)
    assert local_colour_artefact(y, cat[:, ::2, ::2]) > 0.02


# -- guide: refines, and only beyond its noise -------------------------------------------------------------------------

def test_guide_refines_from_identity_and_noise_gate_rejects_a_noisy_guide(cbsd):
    clean = cbsd["145086.png"][:, ::3, ::3]
    bad = degrade(clean, "exposure")
    r = enhance(bad, StatLit(), POS, NEG, steps=40, samples=2, auto=False)
    assert bool(r.accepted[0]) and r.guide_gain[0] > 2 * r.guide_noise[0]
    assert psnr(r.image, clean) > psnr(bad, clean) + 3 and r.score_after[0] > r.score_before[0]
    noisy = enhance(bad, StatLit(noise=5.0), POS, NEG, steps=10, samples=1)
    assert not bool(noisy.accepted[0]) and "rejected" in noisy.summary()
    assert torch.allclose(noisy.image, enhance(bad).image, atol=1e-6)  # the auto-grade is kept


def test_mask_confines_the_change_and_a_wrong_size_mask_is_refused(cbsd):
    bad = degrade(cbsd["300091.png"], "exposure")[:, ::3, ::3].contiguous()
    h, w = bad.shape[1:3]
    mask = torch.zeros(h, w)
    mask[:, : w // 2] = 1.0
    r = enhance(bad, mask=mask)
    assert torch.equal(r.image[:, :, w // 2:], bad[:, :, w // 2:])
    assert (r.image[:, :, : w // 2] - bad[:, :, : w // 2]).abs().mean() > 0.05
    assert torch.allclose(apply_enhancement(bad, r.params, mask), r.image, atol=1e-6)
    for wrong in (torch.ones(h + 1, w), torch.ones(1, h, w - 3)):
        with pytest.raises(LitError, match=r"mask.*same height and width"):
            enhance(bad, mask=wrong)
        with pytest.raises(LitError, match=r"mask.*same height and width"):
            apply_enhancement(bad, r.params, wrong)


def test_deterministic_batch_shared_and_report(cbsd):
    x = cbsd["101087.png"][:, ::4, ::4]
    batch = torch.cat([degrade(x, "gamma"), degrade(x, "cast")])
    a = enhance(batch, StatLit(), POS, NEG, steps=8, samples=2, seed=7)
    b = enhance(batch, StatLit(), POS, NEG, steps=8, samples=2, seed=7)
    assert torch.equal(a.image, b.image) and a.params.batch_size == 2
    assert torch.allclose(enhance(batch[1:]).image, enhance(batch).image[1:], atol=1e-6)
    shared = enhance(batch, shared=True)
    assert shared.params.batch_size == 1 and shared.image.shape == batch.shape
    text = enhance(batch).summary()
    assert "stretch" in text and "auto-grade (no LiT guide)" in text


# -- nodes -----------------------------------------------------------------------------------------------------------

def test_nodes_without_an_adapter_under_inference_mode(cbsd):
    from comfyui_lit.nodes.enhancement import NODE_CLASS_MAPPINGS, LiTApplyEnhancement, LiTEnhancementSampler

    for cls in NODE_CLASS_MAPPINGS.values():
        for group in cls.INPUT_TYPES().values():
            for name, (_, opts) in group.items():
                assert opts.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert "lit_model" in LiTEnhancementSampler.INPUT_TYPES()["optional"]
    clean = cbsd["300091.png"][:, ::3, ::3]
    frames = torch.cat([degrade(clean, "exposure")] * 2)
    guide = StatLit()  # loaders build models outside inference mode (nodes/loaders.py)
    with torch.inference_mode():
        frames = frames.clone()
        out = LiTEnhancementSampler().run(frames[:1], POS, NEG, 40, 1.0, 1.0, 0, 2)
        image, params, text = out["result"]
        assert psnr(image, clean) > psnr(frames[:1], clean) + 15 and "levels" in text
        (applied,) = LiTApplyEnhancement().run(frames, params, which="first")
        assert torch.allclose(applied[1], image[0], atol=1e-6)
        (half,) = LiTApplyEnhancement().run(frames[:1], params, strength=0.5)
        half_node = LiTEnhancementSampler().run(frames[:1], POS, NEG, 40, 1.0, 1.0, 0, 2, strength=0.5)["result"][0]
        assert torch.allclose(half, half_node, atol=1e-6)
        guided = LiTEnhancementSampler().run(frames[:1], POS, NEG, 5, 1.0, 1.0, 0, 1, lit_model=guide)
        assert "->" in guided["result"][2]
        with pytest.raises(LitError, match=r"\[LiT Enhancement Sampler\].*mask"):
            LiTEnhancementSampler().run(frames[:1], POS, NEG, 5, 1.0, 1.0, 0, 1, mask=torch.ones(1, 5, 5))
        with pytest.raises(LitError, match=r"\[LiT Enhancement Sampler\].*lit_model"):
            LiTEnhancementSampler().run(frames, POS, NEG, 1, 1.0, 1.0, 0, 1, lit_model=object())
        with pytest.raises(LitError, match=r"\[LiT Apply Enhancement\].*index"):
            LiTApplyEnhancement().run(frames, params, which="index", index=3)
        # the engine itself never lifts inference mode: called directly under it, a guided fit says what to do
        with pytest.raises(LitError, match="inference_mode"):
            enhance(frames[:1], guide, POS, NEG, steps=2)
