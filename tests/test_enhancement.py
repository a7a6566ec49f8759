"""Enhancement sampler (issue 4): the operator, the objective and the nodes, on real photos from skimage.data.

The guide is a fixed small stand-in for a LiT model whose image embedding responds to exposure, contrast and
colour cast the way a tuned model is meant to: its features are the deviations of an image's luminance mean,
luminance spread and colour balance from those of typical well-exposed photos, put through a fixed random
orthonormal projection; its text table maps "bright / well-exposed" prompts to the no-deviation direction and
"dark / dull" prompts to the all-deviations direction. What we hold the sampler to is what such a guide
permits: degraded photos move back toward their originals by a stated PSNR margin, correct ones barely move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.enhancement.ops import (
    EnhancementParams,
    apply_enhancement,
    curve_knots,
)
from comfyui_lit.models.enhancement.sampler import enhance

skdata = pytest.importorskip("skimage.data")

POS = "a bright, well-exposed photo"
NEG = "a dark, dull photo"


class StatLit:
    """A deterministic, differentiable stand-in with the LiT model's duck-typed interface."""

    # luminance mean, luminance std, mean(R)-mean(G), mean(B)-mean(G) of typical well-exposed photos
    TARGET = (0.44, 0.25, 0.12, -0.04)

    def __init__(self, dim: int = 32, sharpness: float = 15.0, size: int = 64) -> None:
        g = torch.Generator().manual_seed(1234)
        self.proj, _ = torch.linalg.qr(torch.randn(dim, 4, generator=g))  # fixed orthonormal [dim, 4]
        self.sharpness = sharpness
        self.size = size
        self.logit_scale = torch.tensor(10.0)
        self.device = torch.device("cpu")
        self.calls = 0

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images[..., :3].movedim(-1, 1).float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=min(x.shape[-2:]) > self.size)
        lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
        m = lum.mean((1, 2))
        s = (lum.var((1, 2), unbiased=False) + 1e-6).sqrt()
        ch = x.mean((2, 3))
        tm, ts, trg, tbg = self.TARGET
        cast = ((ch[:, 0] - ch[:, 1] - trg) ** 2 + (ch[:, 2] - ch[:, 1] - tbg) ** 2 + 1e-6).sqrt()

        def mag(t: torch.Tensor) -> torch.Tensor:
            return (t * t + 1e-4).sqrt()

        a = self.sharpness
        return torch.stack([torch.ones_like(m), a * mag(m - tm), a * mag(s - ts), a * cast], 1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.normalize(self.features(images) @ self.proj.T, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        good, bad = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
        rows = [good if ("bright" in t or "well" in t) else bad for t in texts]
        return F.normalize(torch.stack(rows) @ self.proj.T, dim=-1)


@pytest.fixture(scope="module")
def lit() -> StatLit:
    return StatLit()


def _photo(name: str, short: int = 96) -> torch.Tensor:
    arr = getattr(skdata, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    t = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).float().div(255.0)[None].movedim(-1, 1)
    h, w = t.shape[-2:]
    s = short / min(h, w)
    t = F.interpolate(t, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1).movedim(1, -1).contiguous()


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    return {"astronaut": _photo("astronaut"), "stereo_motorcycle": _photo("stereo_motorcycle")}


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "dark":  # -1.15 stops
        return x * 0.45
    if kind == "flat":  # contrast halved around mid-grey
        return (x - 0.5) * 0.5 + 0.5
    if kind == "cast":  # cool cast
        return (x * torch.tensor([0.8, 1.0, 1.3])).clamp(0, 1)
    raise ValueError(kind)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean().clamp_min(1e-12)))


# -- operator ------------------------------------------------------------------------------------------------

def test_identity_grade_leaves_image_unchanged():
    x = torch.rand(2, 19, 33, 3, generator=torch.Generator().manual_seed(0))
    out = apply_enhancement(x, EnhancementParams.identity(2))
    assert torch.allclose(out, x, atol=1e-5)


def _random_params(batch: int, seed: int = 0) -> EnhancementParams:
    g = torch.Generator().manual_seed(seed)
    p = EnhancementParams.identity(batch)
    for t, std in zip(p.tensors(), (0.3, 0.2, 0.05, 0.2, 0.3, 0.04, 0.3), strict=True):
        t.add_(torch.randn(t.shape, generator=g) * std)
    return p


def test_operator_is_monotone_bounded_and_seam_free(monkeypatch):
    p = _random_params(1)
    k = curve_knots(p.curves)
    assert (k.diff(dim=-1) > 0).all() and torch.allclose(k[..., 0], torch.zeros(1)) and torch.allclose(
        k[..., -1], torch.ones(1))
    x = torch.rand(1, 40, 50, 3, generator=torch.Generator().manual_seed(1))
    whole = apply_enhancement(x, p)
    assert whole.min() >= 0 and whole.max() <= 1
    from comfyui_lit.models.enhancement import ops as enhancement_ops
    monkeypatch.setattr(enhancement_ops, "SLICE_CHUNK_PIXELS", 7 * 50)  # slice in bands of 7 rows
    assert torch.allclose(apply_enhancement(x, p), whole, atol=1e-6)


def test_grade_fitted_small_transfers_to_full_resolution(photos):
    # Parameters live in normalised coordinates: grading at full size then shrinking ~= grading the small copy.
    big = photos["astronaut"]
    small = F.interpolate(big.movedim(-1, 1), scale_factor=0.5, mode="bilinear", antialias=True).movedim(1, -1)
    p = _random_params(1, seed=3)
    full = apply_enhancement(big, p)
    full_small = F.interpolate(full.movedim(-1, 1), scale_factor=0.5, mode="bilinear", antialias=True).movedim(1, -1)
    assert psnr(full_small, apply_enhancement(small, p)) > 30


def test_params_serialise_and_reapply_identically():
    p = _random_params(2, seed=5)
    q = EnhancementParams.from_dict(p.to_dict())
    x = torch.rand(2, 21, 17, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(apply_enhancement(x, p), apply_enhancement(x, q))
    with pytest.raises(LitError, match="enhancement"):
        EnhancementParams.from_dict({k: v for k, v in p.to_dict().items() if "grid" not in k})
    with pytest.raises(LitError, match="parameter sets"):
        apply_enhancement(torch.rand(3, 8, 8, 3), p)


# -- the proof: degraded photos come back, correct ones stay ----------------------------------------------------

# Minimum PSNR gain (dB) to the original that the stand-in guide must buy, per degradation.
MARGINS = {"dark": 6.0, "flat": 3.0, "cast": 2.0}


@pytest.mark.parametrize("name", ["astronaut", "stereo_motorcycle"])
def test_degraded_photos_move_back_toward_the_original(lit, photos, name):
    clean = photos[name]
    for kind, margin in MARGINS.items():
        bad = degrade(clean, kind)
        r = enhance(bad, lit, POS, NEG, steps=60, samples=2, seed=0)
        gain = psnr(r.image, clean) - psnr(bad, clean)
        assert gain >= margin, f"{name}/{kind}: PSNR gain {gain:.2f} dB < {margin} dB"
        assert r.score_after.item() > r.score_before.item() + 0.3


def test_correct_photo_is_not_moved_far_and_fidelity_holds_it(lit, photos):
    clean = photos["astronaut"]
    r = enhance(clean, lit, POS, NEG, steps=60, samples=2, seed=0)
    assert psnr(r.image, clean) > 30
    clean2 = photos["stereo_motorcycle"]
    loose = enhance(clean2, lit, POS, NEG, steps=40, samples=1, seed=0, fidelity=0.1)
    tight = enhance(clean2, lit, POS, NEG, steps=40, samples=1, seed=0, fidelity=8.0)
    assert psnr(tight.image, clean2) > psnr(loose.image, clean2) + 1.0
    none = enhance(degrade(clean2, "dark"), lit, POS, NEG, steps=30, samples=1, seed=0, guidance=0.0)
    assert psnr(none.image, degrade(clean2, "dark")) > 40  # no guidance: nothing to gain by moving


def test_mask_confines_the_change(lit, photos):
    bad = degrade(photos["astronaut"], "dark")
    mask = torch.zeros(bad.shape[1], bad.shape[2])
    mask[:, : bad.shape[2] // 2] = 1.0
    r = enhance(bad, lit, POS, NEG, steps=30, samples=1, seed=0, mask=mask)
    right = slice(bad.shape[2] // 2 + 1, None)  # beyond the bilinear edge of the mask
    assert torch.equal(r.image[:, :, right], bad[:, :, right])
    assert (r.image[:, :, : bad.shape[2] // 2 - 1] - bad[:, :, : bad.shape[2] // 2 - 1]).abs().mean() > 0.05
    # and the grade re-applied (with the same mask) gives the same image
    assert torch.allclose(apply_enhancement(bad, r.params, mask), r.image, atol=1e-6)


def test_deterministic_per_seed_and_reapplied_params_match(lit, photos):
    bad = degrade(photos["stereo_motorcycle"], "flat")
    a = enhance(bad, lit, POS, NEG, steps=20, samples=3, seed=7)
    b = enhance(bad, lit, POS, NEG, steps=20, samples=3, seed=7)
    c = enhance(bad, lit, POS, NEG, steps=20, samples=3, seed=8)
    assert torch.equal(a.image, b.image)
    assert all(torch.equal(s, t) for s, t in zip(a.params.tensors(), b.params.tensors(), strict=True))
    assert not all(torch.equal(s, t) for s, t in zip(a.params.tensors(), c.params.tensors(), strict=True))
    assert torch.allclose(apply_enhancement(bad, a.params), a.image, atol=1e-6)
    assert a.sample_objective.shape == (3, 1) and a.sample_objective[a.chosen[0], 0] == a.sample_objective[:, 0].min()


@pytest.mark.parametrize("image", [torch.zeros(1, 8, 8, 3), torch.ones(1, 8, 8, 3), torch.full((1, 1, 1, 3), 0.3),
                                   torch.zeros(1, 1, 1, 3), torch.rand(1, 1, 7, 3)], ids=["black", "white", "1x1",
                                                                                          "1x1black", "1x7"])
def test_no_nan_on_degenerate_images(lit, image):
    r = enhance(image, lit, POS, NEG, steps=5, samples=2, seed=0)
    assert r.image.shape == (*image.shape[:3], 3)
    assert torch.isfinite(r.image).all() and r.image.min() >= 0 and r.image.max() <= 1
    assert all(torch.isfinite(t).all() for t in r.params.tensors())
    assert torch.isfinite(r.score_before).all() and torch.isfinite(r.score_after).all()


def test_batch_and_odd_sizes_get_independent_grades(lit, photos):
    clean = photos["astronaut"][:, :37, :53]
    batch = torch.cat([degrade(clean, "dark"), degrade(clean, "cast")])
    r = enhance(batch, lit, POS, NEG, steps=25, samples=2, seed=1)
    assert r.image.shape == (2, 37, 53, 3) and r.params.batch_size == 2
    alone = enhance(batch[1:], lit, POS, NEG, steps=25, samples=2, seed=1)
    assert torch.allclose(r.image[1:], alone.image, atol=2e-3)
    assert r.params.exposure[0] > r.params.exposure[1] + 0.2  # the dark one got brightened more
    shared = enhance(batch, lit, POS, NEG, steps=10, samples=2, seed=1, shared=True)
    assert shared.params.batch_size == 1 and shared.image.shape == (2, 37, 53, 3)
    rgba = torch.cat([degrade(clean, "dark")[:1], torch.ones(1, 37, 53, 1)], dim=-1)
    assert enhance(rgba, lit, POS, NEG, steps=3, samples=1).image.shape == (1, 37, 53, 3)


def test_callback_reports_steps_and_can_cancel(lit):
    seen = []
    enhance(torch.rand(1, 16, 16, 3), lit, POS, NEG, steps=7, samples=1, callback=seen.append)
    assert seen == list(range(1, 8))

    def cancel(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enhance(torch.rand(1, 16, 16, 3), lit, POS, NEG, steps=7, samples=1, callback=cancel)


def test_user_errors_are_lit_errors(lit):
    x = torch.rand(1, 16, 16, 3)
    with pytest.raises(LitError, match="positive"):
        enhance(x, lit, "  \n ", NEG, steps=1)
    with pytest.raises(LitError, match="mask"):
        enhance(x, lit, POS, NEG, steps=1, mask=torch.ones(3, 16, 16))
    with pytest.raises(LitError, match="image"):
        enhance(torch.rand(16, 16), lit, POS, NEG, steps=1)


# -- nodes ----------------------------------------------------------------------------------------------------

def test_nodes_under_inference_mode(lit, photos):
    from comfyui_lit.nodes.enhancement import (
        NODE_CLASS_MAPPINGS,
        NODE_DISPLAY_NAME_MAPPINGS,
        LiTApplyEnhancement,
        LiTEnhancementSampler,
    )

    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS) == {"LiTEnhancementSampler",
                                                                          "LiTApplyEnhancement"}
    for cls in NODE_CLASS_MAPPINGS.values():
        spec = cls.INPUT_TYPES()
        for group in spec.values():
            for name, (_, opts) in group.items():
                assert opts.get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert LiTEnhancementSampler.RETURN_TYPES == ("IMAGE", "LIT_ENHANCEMENT", "STRING")

    clean = photos["stereo_motorcycle"][:, :48, :64]
    frames = torch.cat([degrade(clean, "dark"), degrade(clean, "dark")])
    with torch.inference_mode():
        frames = frames.clone()
        out = LiTEnhancementSampler().run(frames[:1], lit, POS, NEG, steps=30, guidance=1.0, fidelity=1.0,
                                          seed=0, samples=1)
        image, params, text = out["result"]
        assert image.shape == (1, 48, 64, 3) and "->" in text
        assert psnr(image, clean) > psnr(frames[:1], clean) + 3
        (applied,) = LiTApplyEnhancement().run(frames, params, which="first")
        assert applied.shape == (2, 48, 64, 3)
        assert torch.allclose(applied[0], image[0], atol=1e-6) and torch.allclose(applied[1], image[0], atol=1e-6)
        (half,) = LiTApplyEnhancement().run(frames[:1], params, strength=0.5)
        assert torch.allclose(half, (frames[:1] + image) / 2, atol=1e-5)
        (from_dict,) = LiTApplyEnhancement().run(frames[:1], params.to_dict())
        assert torch.allclose(from_dict, image, atol=1e-6)
        with pytest.raises(LitError, match=r"\[LiT Apply Enhancement\].*index"):
            LiTApplyEnhancement().run(frames, params, which="index", index=3)
        with pytest.raises(LitError, match=r"\[LiT Enhancement Sampler\].*lit_model"):
            LiTEnhancementSampler().run(frames, object(), POS, NEG, 1, 1.0, 1.0, 0, 1)
