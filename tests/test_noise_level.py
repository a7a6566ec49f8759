"""The noise-level estimator: white noise read as accurately as scikit-image's MAD (more so on texture), camera-like
correlated noise read at the level a denoiser needs, clipping ignored, clean photos read low; and the node says
what it read."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
from PIL import Image
from shared_data import shared_path

from comfyui_lit.models.restoration import degradations as D
from comfyui_lit.models.restoration import noise_level as NL

skdata = pytest.importorskip("skimage.data")
skrestoration = pytest.importorskip("skimage.restoration")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo() -> torch.Tensor:
    """scikit-image's astronaut, 256 px: a real photo with texture (its own grain is ~1/255)."""
    a = skdata.astronaut()[::2, ::2]
    return torch.from_numpy(a.copy()).float().permute(2, 0, 1)[None] / 255


def _noise(shape, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mad(y: torch.Tensor) -> float:
    """scikit-image's estimator (the reference for white noise)."""
    return float(skrestoration.estimate_sigma(y[0].permute(1, 2, 0).numpy(), channel_axis=-1, average_sigmas=True))


@pytest.mark.parametrize("sigma", [10, 25, 50])
def test_white_noise_on_a_photo_is_read_within_five_percent(sigma):
    x = _photo()
    y = x + _noise(x.shape, sigma) * sigma / 255
    ours = float(D.estimate_sigma(y)[0]) * 255
    # the photo's own grain (~2/255 in the fine band) adds in quadrature: that is noise too
    total = (sigma ** 2 + (float(NL.band_sigmas(x)[0, 0]) * 255) ** 2) ** 0.5
    assert abs(ours - total) < 0.05 * total, (ours, total)
    assert not bool(NL.is_correlated(y)[0])
    # scikit-image's MAD reads texture as noise: ours is at least as close at every level
    assert abs(ours - total) <= abs(_mad(y) * 255 - total) + 0.1


def test_white_noise_on_flat_grey_agrees_with_scikit_image():
    x = torch.full((1, 3, 96, 96), 0.5)
    for sigma in (0.01, 0.02, 0.05, 0.1):
        y = x + _noise(x.shape, 3) * sigma
        assert abs(float(D.estimate_sigma(y)[0]) - _mad(y)) < 0.05 * sigma


def test_correlated_noise_is_read_at_its_coarse_level_not_the_finest():
    x = _photo()
    y = D.camera_noise(x, 12 / 255, _gen(1)).clamp(0, 1)
    fine, coarse = (NL.band_sigmas(y)[0] * 255).tolist()
    ours = float(D.estimate_sigma(y)[0]) * 255
    assert coarse > 3 * fine and bool(NL.is_correlated(y)[0])
    # the per-pixel std of this noise is ~9; MAD reads ~3, a level that leaves most of the grain in
    assert ours > 2.5 * _mad(y) * 255 and 11 < ours < 22, ours


def test_clipped_highlights_and_shadows_do_not_lower_the_estimate():
    x = _photo()
    x[..., :96, :] = 1.0  # a blown sky and a crushed shadow: a third of the photo carries no noise
    x[..., -40:, :] = 0.0
    y = (x + _noise(x.shape, 4) * 10 / 255).clamp(0, 1)
    assert abs(float(D.estimate_sigma(y)[0]) * 255 - 10) < 0.7


def test_a_clean_photo_reads_low_and_the_default_denoise_leaves_it_alone():
    from comfyui_lit.models.restoration.denoisers import DCTDenoiser
    from comfyui_lit.models.restoration.sampler import restore

    x = _photo()  # its film grain reads ~3.8/255 (MAD 3.1)
    assert float(D.estimate_sigma(x)[0]) * 255 < 5
    with torch.inference_mode():
        out = restore(D.Denoise(x), DCTDenoiser(block_matching=True))
    assert float(10 * torch.log10(1 / ((out - x) ** 2).mean())) > 40  # measured 43.5 dB: a barely visible change


def test_batch_each_image_its_own_level_and_large_photos_are_sampled():
    x = _photo().expand(2, -1, -1, -1)
    y = x + _noise(x.shape, 5) * torch.tensor([5.0, 30.0]).view(-1, 1, 1, 1) / 255
    s = D.estimate_sigma(y) * 255
    assert abs(float(s[0]) - 5) < 0.4 and abs(float(s[1]) - 30) < 1.5
    st = NL._stride(4000, 3000)  # a 12-megapixel photo: a coarser grid of blocks, bounded work
    assert ((4000 - 8) // st + 1) * ((3000 - 8) // st + 1) <= NL.MAX_BLOCKS


def _cbsd68_photos(n: int = 3, size: int | None = None) -> list[torch.Tensor]:
    files = sorted(glob.glob(os.path.join(shared_path("data", "restoration", "CBSD68"), "*.png")))[5::23][:n]
    out = []
    for f in files:
        a = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).float().permute(2, 0, 1)[None] / 255
        if size is not None:
            t, left = (a.shape[-2] - size) // 2, (a.shape[-1] - size) // 2
            a = a[..., t:t + size, left:left + size].contiguous()
        out.append(a)
    return out


def test_ffdnet_at_the_estimate_is_near_its_best_on_camera_like_noise(tmp_path):
    """The point of the estimator: with FFDNet as prior, the default (estimated) denoise is within a few tenths of
    a dB of FFDNet's best level on Bayer-demosaiced noise, where the MAD estimate loses ~2.5 dB (measured: gaps
    0.01 / 0.27 / 0.12 dB on whole CBSD68 photos). Whole photos, because a small crop with texture everywhere has no
    flat block to read (a documented limit: a 192 px crop of 167083 reads 36 for grain FFDNet handles best at 12)."""
    from comfyui_lit.models.restoration import ffdnet as FF
    from comfyui_lit.models.restoration import priors as P
    from comfyui_lit.models.restoration.sampler import restore

    prior = P.load_prior(FF.convert_mat(shared_path("weights", "FFDNet_color.mat"), str(tmp_path / "f.safetensors")))

    def psnr(a, b):
        return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b) ** 2).mean()))

    gaps, mad_gaps = [], []
    with torch.inference_mode():
        for i, x in enumerate(_cbsd68_photos()):
            y = D.camera_noise(x, 12 / 255, _gen(10 + i))
            best = max(psnr(restore(D.Denoise(y, s / 255), prior), x) for s in (8, 11, 14, 17, 20))
            gaps.append(best - psnr(restore(D.Denoise(y), prior), x))
            mad_gaps.append(best - psnr(restore(D.Denoise(y, _mad(y)), prior), x))
    assert np.mean(gaps) < 0.3 and np.mean(mad_gaps) > 1.5, (gaps, mad_gaps)


def test_node_report_says_the_level_it_read():
    from comfyui_lit.nodes.restoration import LiTRestorationSampler

    img = (_photo() + _noise((1, 3, 256, 256), 7) * 20 / 255).clamp(0, 1)[..., :96, :96].permute(0, 2, 3, 1)
    with torch.inference_mode():
        auto = LiTRestorationSampler().run(img.contiguous(), "denoise", 0.0, steps=1, seed=0, strength=1.0)
        given = LiTRestorationSampler().run(img.contiguous(), "denoise", 20.0, steps=1, seed=0, strength=1.0)
    text = auto["ui"]["text"][0]
    assert "estimated from the photo" in text and "set noise_sigma to override" in text
    level = float(text.split("noise level ")[1].split(" ")[0])
    assert 17 < level < 23, text
    assert "estimated" not in given["ui"]["text"][0]


def test_camera_noise_is_demosaiced_sensor_noise():
    """Checked against the mosaic it was made from: bilinear interpolation, worked out by hand per photosite."""
    x = _photo()
    assert torch.equal(D.camera_noise(x, 0.0), x)
    noise = (D.camera_noise(x, 0.05, _gen(2)) - x)[0]
    mosaic = torch.randn((1, 1, 256, 256), generator=_gen(2))[0, 0] * 0.05  # the same draw: photosite noise
    assert torch.allclose(noise[0, 10, 10], mosaic[10, 10], atol=1e-6)  # a red photosite keeps its own red
    # green at a red photosite: its 4 neighbours; red at a blue one: its 4 diagonals; red at a green one: 2
    assert torch.allclose(noise[1, 10, 10], mosaic[[9, 11, 10, 10], [10, 10, 9, 11]].mean(), atol=1e-6)
    assert torch.allclose(noise[0, 11, 11], mosaic[[10, 10, 12, 12], [10, 12, 10, 12]].mean(), atol=1e-6)
    assert torch.allclose(noise[0, 10, 11], mosaic[10, [10, 12]].mean(), atol=1e-6)
    # per-pixel std: red sqrt(1/4 + 1/2 * 1/2 + 1/4 * 1/4) = 0.75 sigma, green sqrt(1/2 + 1/2 * 1/4) = 0.79 sigma
    assert abs(float(noise[0].std()) / 0.05 - 0.75) < 0.03 and abs(float(noise[1].std()) / 0.05 - 0.79) < 0.03
    corr = float(torch.corrcoef(torch.stack([noise[1, :, :-1].flatten(), noise[1, :, 1:].flatten()]))[0, 1])
    assert corr > 0.2  # neighbours share samples: white noise would give ~0
    from comfyui_lit.nodes.restoration import LiTDegrade

    with torch.inference_mode():
        img, _ = LiTDegrade().run(x.permute(0, 2, 3, 1).contiguous(), "camera noise", 12.0, seed=3)
    expected = (D.camera_noise(x, 12 / 255, _gen(3)).clamp(0, 1) * 255).round() / 255  # saved as a PNG would be
    assert torch.allclose(img, expected.permute(0, 2, 3, 1), atol=1e-6)


def test_deblur_at_noise_zero_reads_the_noise_instead_of_assuming_none():
    """A blurred photo always carries some noise; taking it as clean let the data step amplify 3% noise into
    ringing (measured on CBSD68 crops: -7 dB at noise 2.55/255, -17 dB at 8; here 22.91 dB at the estimate 8.3,
    10.53 assumed clean, 22.92 told the true 8). Through the node, as a user runs it."""
    from comfyui_lit.models.restoration.tasks import kernel_for
    from comfyui_lit.nodes.restoration import LiTRestorationSampler

    x = _photo()[..., 64:192, 64:192].contiguous()
    blurred = D.Deblur(x, kernel_for("deblur (gaussian)", 1.6, 9.0, 0.0), 0.01).apply(x)
    y = (blurred + _noise(x.shape, 8) * 8 / 255).clamp(0, 1)
    image = y.permute(0, 2, 3, 1).contiguous()

    def run(level: float) -> tuple[float, str]:
        with torch.inference_mode():
            res = LiTRestorationSampler().run(image, "deblur (gaussian)", level, steps=0, seed=0, strength=1.0,
                                              blur_sigma=1.6)
        out = res["result"][0].permute(0, 3, 1, 2)
        return float(10 * torch.log10(1 / ((out - x) ** 2).mean())), res["ui"]["text"][0]

    auto, text = run(0.0)
    assumed_clean, _ = run(1.0)  # what noise_sigma 0 meant before: the 1/255 floor
    given, given_text = run(8.0)
    level = float(text.split("noise level ")[1].split(" ")[0])
    assert 6 < level < 12, text
    assert auto > assumed_clean + 5 and auto > given - 0.5, (auto, assumed_clean, given)
    assert "estimated" not in given_text


def test_noise_so_strong_that_every_block_clips_is_still_read():
    """At 60-80/255 nearly every 8x8 block touches 0 or 1; the least clipped blocks still carry the noise (taking
    every block instead read 60 as 38 and 80 as 42 here, and RNI15's Flowers as 46, leaving its grain in)."""
    x = _photo()
    for sigma, seed in ((60, 11), (80, 12)):
        y = (x + _noise(x.shape, seed) * sigma / 255).clamp(0, 1)
        ours = float(D.estimate_sigma(y)[0]) * 255
        assert 0.8 * sigma < ours < 1.05 * sigma, (sigma, ours)


@pytest.mark.parametrize("gain", [0.01, 0.02])
def test_noise_that_grows_with_brightness_is_read_at_the_photos_mean_level(gain):
    """Shot noise (variance gain * x + read noise): the flattest blocks are mostly dark, where the noise is low, so
    they alone read it ~27% low (12.6 / 17.8 here for a mean level of 17.2 / 24.3) and FFDNet left 3 dB of grain
    in (CBSD68 crops). Read per brightness bin, it is the level at the photo's mean (FFDNet within ~0.5 dB)."""
    x = _photo()
    y = D.add_noise(x, 2 / 255, gain, _gen(13)).clamp(0, 1)
    level = float((4 / 255 ** 2 + gain * x).mean().sqrt()) * 255
    ours = float(D.estimate_sigma(y)[0]) * 255
    assert abs(ours - level) < 0.08 * level, (ours, level)


def test_a_given_poisson_gain_is_not_counted_twice():
    """With poisson_gain set and the level estimated, the level read already holds the shot noise: only the rest is
    the Gaussian part, so the total at mid-grey stays what the photo shows."""
    x = _photo()
    gain = 0.01
    y = D.add_noise(x, 5 / 255, gain, _gen(14)).clamp(0, 1)
    op = D.Denoise(y, None, gain=gain)
    total = float(op.var_n[0].sqrt()) * 255  # the schedule's level: Gaussian part + gain * the photo's mean
    truth = float((25 / 255 ** 2 + gain * x.mean()).sqrt()) * 255
    assert abs(total - truth) < 0.08 * truth, (total, truth)
    assert float(op.sigma_g[0]) * 255 < 10  # the read noise (5), not the whole level (~17)


def test_large_photos_are_read_on_a_coarser_grid_just_as_well(monkeypatch):
    """Above MAX_BLOCKS the blocks are taken every 5+ px (gaps between them): the reading must not change."""
    x = _photo()
    y = x + _noise(x.shape, 15) * 20 / 255
    fine = float(D.estimate_sigma(y)[0]) * 255
    monkeypatch.setattr(NL, "MAX_BLOCKS", 600)
    assert NL._stride(256, 256) >= 9
    coarse = float(D.estimate_sigma(y)[0]) * 255
    assert abs(coarse - 20) < 1.5 and abs(coarse - fine) < 1.5, (fine, coarse)


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_white_and_camera_noise_never_read_as_growing_with_brightness(sigma):
    """The brightness fit must not invent shot noise: white noise, camera grain and clean photos read 'one level'
    (sure 0), so their denoise is unchanged. All 68 CBSD68 photos: white 15 / 25 / 50 flagged on 1 / 0 / 1 (sure
    0.01 and 0.19), camera grain and the clean photos on none. The documented exception is texture everywhere:
    167083's foliage fills the brighter bins, and white noise over it reads 'growing' at some seeds."""
    for i, x in enumerate(_cbsd68_photos()):
        ys = [D.camera_noise(x, sigma / 2 / 255, _gen(50 + i)).clamp(0, 1), x]
        if i != 1:  # 167083
            ys.append(D.add_noise(x, sigma / 255, 0, _gen(40 + i)).clamp(0, 1))
        for y in ys:
            assert float(NL.signal_dependence(y)[0, 2]) == 0.0, (sigma, i)
    assert D.Denoise(D.add_noise(x, sigma / 255, 0, _gen(1)).clamp(0, 1)).shot_model() is None


@pytest.mark.parametrize("gain", [0.005, 0.02])
def test_shot_noise_is_read_with_its_gain_and_followed_pixel_by_pixel(gain):
    """Shot noise with the gain unknown: the fit of the per-brightness readings finds the gain (the channel mean
    holds a third of it; at gain .02 it reads ~2/3 of it, the bright sky's noisiest blocks clip and are left out)
    and the noise model the sampler uses follows it."""
    f = os.path.join(shared_path("data", "restoration", "CBSD68"), "216081.png")  # dark rocks, bright sky
    x = torch.from_numpy(np.array(Image.open(f).convert("RGB"))).float().permute(2, 0, 1)[None] / 255
    y = D.add_noise(x, 2 / 255, gain, _gen(60)).clamp(0, 1)
    a, g, sure = NL.signal_dependence(y)[0].tolist()
    assert sure > 0.5 and 0.6 * gain / 3 < g < 1.2 * gain / 3, (g, gain / 3, sure)
    op = D.Denoise(y)
    s2, g_model = (float(v[0]) for v in op.shot_model())
    # the model keeps the level read at the photo's mean and follows the fitted slope
    assert abs(s2 + g_model * float(y.mean()) - float(op.var_n[0])) < 1e-6 and g_model > 0.5 * gain
    assert D.Denoise(y, 2 / 255).shot_model() is None  # a level given, no gain: taken as Gaussian
