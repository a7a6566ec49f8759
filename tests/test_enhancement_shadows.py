"""Enhancement (issue 16): the noise-aware shadow limit and shadow chroma of a midtone lift, and old grade files.
Real photos: CBSD68 from ../shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import shared_path

from comfyui_lit.models.enhancement import ops as enhancement_ops
from comfyui_lit.models.enhancement import spec
from comfyui_lit.models.enhancement.auto import auto_grade, auto_grade_one
from comfyui_lit.models.enhancement.ops import EnhancementParams, apply_enhancement, luminance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    path = shared_path("data", "restoration", "CBSD68", "145086.png")
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


def _q8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round() / 255


def _shadow_chroma_speckle(out: torch.Tensor, ref: torch.Tensor, shadows: torch.Tensor) -> float:
    """RMS of the output's chroma (colour minus luminance) minus the reference's, over the given shadow pixels."""
    o, r = out.movedim(-1, 1), ref.movedim(-1, 1)
    d = (o - luminance(o)) - (r - luminance(r))
    return float(d.square().sum(1)[shadows].mean().sqrt())


def test_noisy_shadows_get_a_lower_cap_and_less_colour_speckle(photo):
    # a darkened photo, once as an 8-bit file and once with strong per-channel sensor noise (sigma 8/255) added
    clean = photo[:, ::2, ::2]
    dark = _q8(clean ** 2.2)
    noise = torch.randn(dark.shape, generator=torch.Generator().manual_seed(0)) * (8 / 255)
    noisy = _q8(dark + noise)
    p_dark, st_dark = auto_grade_one(dark[0].movedim(-1, 0))
    p_noisy, st_noisy = auto_grade_one(noisy[0].movedim(-1, 0))
    assert float(p_dark.gamma[0]) > 0.5 and float(p_noisy.gamma[0]) > 0.5  # both lifted
    assert st_noisy["shadow_noise"] > 2 * st_dark["shadow_noise"]
    assert float(p_dark.shadow_gain[0]) == pytest.approx(np.log2(spec.SHADOW_GAIN_RANGE[1]))
    assert float(p_noisy.shadow_gain[0]) < float(p_dark.shadow_gain[0]) - 0.5
    # the colour speckle the lift leaves in the shadows (vs the same grade on the noise-free file), against the
    # naive lift (no cap, no shadow chroma): it must be clearly lower (measured: 0.081 vs 0.128 RMS chroma), and
    # the photo still clearly brightened
    naive = p_noisy.detach()
    naive.shadow_gain.fill_(spec.GRADE_PARAMS["shadow_gain"].identity)
    ours = apply_enhancement(noisy, p_noisy)
    ref = apply_enhancement(dark, p_noisy)
    shadows = luminance(clean.movedim(-1, 1))[:, 0] < 0.25
    old_gain = enhancement_ops.CHROMA_GAIN
    try:
        enhancement_ops.CHROMA_GAIN = (1e9, 2e9)  # shadow chroma off
        plain = apply_enhancement(noisy, naive)
    finally:
        enhancement_ops.CHROMA_GAIN = old_gain
    s_ours, s_plain = (_shadow_chroma_speckle(y, ref, shadows) for y in (ours, plain))
    assert s_ours < 0.7 * s_plain, (s_ours, s_plain)
    assert float(luminance(ours.movedim(-1, 1)).mean()) > float(luminance(noisy.movedim(-1, 1)).mean()) + 0.1


def test_shadow_chroma_keeps_luminance_and_leaves_unlifted_pixels_alone(photo):
    x = photo[:, ::3, ::3].movedim(-1, 1)
    y = (x * 3.0).clamp(0, 1)  # a strong lift everywhere
    z = enhancement_ops.shadow_chroma(x, y)
    assert torch.allclose(luminance(z), luminance(y), atol=1e-5)  # luminance exactly kept
    assert not torch.allclose(z, y, atol=1e-3)
    assert torch.equal(enhancement_ops.shadow_chroma(x, x * 1.5), x * 1.5)  # gain below CHROMA_GAIN[0]: identity
    # a flat deep-shadow colour lifted x12: luminance x12, chroma only x CHROMA_MAX_GAIN (same hue)
    dark = torch.tensor([0.02, 0.01, 0.015]).view(1, 3, 1, 1).expand(1, 3, 9, 9).contiguous()
    lifted = dark * 12
    z = enhancement_ops.shadow_chroma(dark, lifted)
    assert torch.allclose(luminance(z), luminance(lifted), atol=1e-6)
    c_in, c_out = dark - luminance(dark), z - luminance(z)
    assert torch.allclose(c_out, c_in * spec.CHROMA_MAX_GAIN, atol=1e-6)


def test_a_grade_saved_before_the_shadow_limit_still_loads():
    p, _ = auto_grade(_q8(torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) ** 3))
    old = {k: v for k, v in p.to_dict().items() if k != "enhance.shadow_gain"}
    old["enhance.version"] = torch.tensor([2])
    q = EnhancementParams.from_dict(old)
    assert float(q.shadow_gain[0]) == spec.GRADE_PARAMS["shadow_gain"].identity
    assert torch.equal(q.gamma, p.gamma)
