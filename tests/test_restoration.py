"""Restoration sampler: proof on real photos, closed-form data steps, the Gaussian posterior, priors, nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data as skdata  # a test extra: missing it must fail, not skip
import torch

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.restoration import degradations as D
from comfyui_lit.models.restoration import denoisers as DN
from comfyui_lit.models.restoration.sampler import restore, sigma_schedule
from comfyui_lit.models.restoration.tiling import tiled

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB."""
    return 10 * torch.log10(1 / ((a - b) ** 2).flatten(1).mean(1))


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Two real 96x96 photo crops (astronaut face, coffee cup), [2,3,96,96] in 0..1."""
    a = skdata.astronaut()[80:176, 170:266]
    c = skdata.coffee()[120:216, 250:346]
    return torch.from_numpy(np.stack([a, c]).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- proof: real photos


def test_denoise_sigma25_gains_8db(photos):
    y = D.add_noise(photos, 25 / 255, generator=_gen())
    out = restore(D.Denoise(y, 25 / 255), DN.DCTDenoiser(block_matching=True))
    gain = psnr(out, photos) - psnr(y, photos)
    assert (gain > 8.0).all(), gain  # measured ~ +10.2 / +12.8 dB
    plain = restore(D.Denoise(y, 25 / 255), DN.DCTDenoiser())
    assert (psnr(out, photos) > psnr(plain, photos)).all()  # the grouped steps beat the sliding ones


def test_denoise_with_estimated_sigma(photos):
    y = D.add_noise(photos, 25 / 255, generator=_gen(1))
    op = D.Denoise(y)  # sigma estimated from the image
    assert torch.allclose(op.sigma_n, torch.full((2,), 25 / 255), rtol=0.2)
    out = restore(op, DN.DCTDenoiser())
    assert (psnr(out, photos) - psnr(y, photos) > 7.0).all()


def test_deblur_gaussian2_noise2_gains_2db(photos):
    k = D.gaussian_kernel(2.0)
    y = D.add_noise(D.Deblur(photos, k).apply(photos), 2 / 255, generator=_gen(2))
    out = restore(D.Deblur(y, k, 2 / 255), DN.DCTDenoiser())
    gain = psnr(out, photos) - psnr(y, photos)
    assert (gain > 2.0).all(), gain  # measured ~ +3.5 to +4 dB


@pytest.mark.parametrize("kind", ["random", "scratches"])
def test_inpaint_gains(photos, kind):
    if kind == "random":
        mask = D.random_mask((2, 96, 96), 0.5, _gen(3))
    else:
        mask = D.scratch_mask((2, 96, 96), 6, 3.0, _gen(4))
    y = photos * (1 - mask[:, None])
    op = D.Inpaint(y, mask)
    out = restore(op, DN.DCTDenoiser())
    assert (psnr(out, photos) - psnr(y, photos) > 15.0).all()  # black holes -> filled
    # and better than the plain push-pull fill it starts from
    assert (psnr(out, photos) - psnr(op.init(), photos) > 0.5).all(), (psnr(out, photos), psnr(op.init(), photos))
    # known pixels are kept
    known = mask[:, None].expand_as(y) < 0.5
    assert (out - photos)[known].abs().max() < 0.02


def test_upscale_x4_beats_bicubic(photos):
    y = D.downscale(photos, 4)
    op = D.Upscale(y, 4)
    bicubic = op.init()
    out = restore(op, DN.DCTDenoiser())
    assert out.shape == photos.shape
    gain = psnr(out, photos) - psnr(bicubic, photos)
    assert (gain > 0.2).all(), gain  # measured +0.37 / +0.64 dB here (+0.06..0.6 over 4 photos)


def test_jpeg_q10_gains(photos):
    y = D.jpeg_compress(photos, 10)
    op = D.JPEG(y)  # quality estimated
    assert op.quality == 10
    out = restore(op, DN.DCTDenoiser())
    gain = psnr(out, photos) - psnr(y, photos)
    assert (gain > 0.5).all(), gain  # measured ~ +0.9 dB


# ------------------------------------------------------------------------------------------- closed forms


def _rand(shape, seed=0):
    return torch.rand(shape, generator=_gen(seed))


def test_denoise_and_inpaint_prox_closed_form():
    y, z = _rand((1, 3, 16, 16), 1), _rand((1, 3, 16, 16), 2)
    op = D.Denoise(y, 0.1)
    rho = 0.1 ** 2 / 0.2 ** 2
    assert torch.allclose(op.prox(z, 0.2), (y + rho * z) / (1 + rho), atol=1e-6)
    mask = (_rand((1, 16, 16), 3) > 0.5).float()
    op = D.Inpaint(y * (1 - mask[:, None]), mask)
    x = op.prox(z, 1.0, lam=1e-6)
    m = mask[:, None].expand_as(z) > 0.5
    assert torch.allclose(x[m], z[m]) and torch.allclose(op.apply(x), op.y, atol=1e-5)


def test_deblur_prox_closed_form():
    x0 = _rand((2, 3, 24, 20), 4)
    for k in (D.gaussian_kernel(1.5), D.motion_kernel(7, 30)):
        y = D.Deblur(x0, k, boundary="circular").apply(x0)
        op = D.Deblur(y, k, sigma=0.01, boundary="circular")
        z = _rand(x0.shape, 5)
        x = op.prox(z, 0.05, lam=1.0)
        rho = 0.01 ** 2 / 0.05 ** 2
        # normal equations A^T (A x - y) + rho (x - z) = 0, with A^T = correlation with the kernel
        r = torch.fft.ifft2(torch.fft.fft2(op.apply(x) - y) * op.otf.conj()).real
        assert (r + rho * (x - z)).abs().max() < 1e-5
        # noise-free limit: the data are matched exactly
        assert (op.apply(op.prox(z, 1.0, lam=1e-8)) - y).abs().max() < 1e-3


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("kind", ["bicubic", "area"])
def test_upscale_prox_closed_form(scale, kind):
    x0 = _rand((1, 3, 12 * scale, 10 * scale), 6)
    y = D.downscale(x0, scale, kind, circular=True)
    op = D.Upscale(y, scale, kind, sigma=0.01, boundary="circular")
    z = _rand(x0.shape, 7)
    x = op.prox(z, 0.05)
    rho = 0.01 ** 2 / 0.05 ** 2
    up = torch.zeros_like(x)
    up[..., ::scale, ::scale] = op.apply(x) - y
    at = torch.fft.ifft2(torch.fft.fft2(up) * op.otf.conj()).real
    assert (at + rho * (x - z)).abs().max() < 1e-5
    assert (op.apply(op.prox(z, 1.0, lam=1e-6)) - y).abs().max() < 1e-3


def test_bounded_data_steps_keep_an_image_that_explains_the_data(photos):
    """Non-circular blur/downscale: the true image is a fixed point of the data step at any weight. With reflected
    observations on the padded canvas it was not for a motion kernel (mirror-asymmetric): the mismatch rang through
    the whole image and motion deblur ended below the blurry input (-7 dB on 96 px crops)."""
    x = photos[:1]
    for k in (D.motion_kernel(9, 30), D.gaussian_kernel(1.6)):
        op = D.Deblur(D.Deblur(x, k).apply(x), k, sigma=0.01)
        for sigma in (0.2, 0.01):
            assert (op.prox(x, sigma, lam=0.23) - x).abs().max() < 1e-4
    for scale in (2, 4):
        op = D.Upscale(D.downscale(x, scale), scale, sigma=0.01)
        assert (op.prox(x, 0.2, lam=0.23) - x).abs().max() < 1e-4


def test_motion_deblur_beats_the_blurry_input(photos):
    k = D.motion_kernel(9, 30)
    x = photos[:1]
    y = D.add_noise(D.Deblur(x, k).apply(x), 0.01, generator=_gen(3))
    out = restore(D.Deblur(y, k, 0.01), DN.DCTDenoiser(stride=2), steps=4)
    assert float(psnr(out, x)) > float(psnr(y.clamp(0, 1), x)) + 2.0, (float(psnr(out, x)), float(psnr(y, x)))


def test_downscale_matches_reference_resizers():
    x = _rand((1, 3, 64, 64), 8)
    ref = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    assert (D.downscale(x, 4, "bicubic") - ref)[..., 3:-3, 3:-3].abs().max() < 1e-4
    assert torch.allclose(D.downscale(x, 2, "area"), torch.nn.functional.avg_pool2d(x, 2), atol=1e-5)


def test_jpeg_projection(photos):
    y = D.jpeg_compress(photos, 20)
    op = D.JPEG(y, 20)
    assert (op.prox(y) - y).abs().max() < 1e-4  # the decoded image satisfies its own constraints
    z = _rand(photos.shape, 9)
    p = op.prox(z)
    assert (op.prox(p) - p).abs().max() < 1e-4  # a projection
    for c, coef in enumerate(op._coefs(p)):
        assert ((coef >= op._lo[c] - 1e-3) & (coef <= op._hi[c] + 1e-3)).all()
    # the clean image lies (up to 8-bit rounding/clipping) inside the set
    assert (op.prox(photos) - photos).abs().mean() < 2 / 255


@pytest.mark.parametrize("quality", [10, 20, 30, 50])
def test_jpeg_quality_estimate(photos, quality):
    assert abs(D.estimate_jpeg_quality(D.jpeg_compress(photos, quality)) - quality) <= 2


def test_estimate_sigma():
    x = torch.full((3, 3, 64, 64), 0.5)
    s = torch.tensor([0.02, 0.05, 0.1])
    y = x + torch.randn(x.shape, generator=_gen(10)) * s.view(-1, 1, 1, 1)
    assert torch.allclose(D.estimate_sigma(y), s, rtol=0.1)


# ------------------------------------------------------------------------------------------- Gaussian posterior


class GaussianPriorDenoiser(DN.Denoiser):
    """The exact MMSE denoiser of an i.i.d. Gaussian prior ``N(mean, tau^2)``: a reference the sampler must match."""

    def __init__(self, mean: float, tau: float) -> None:
        self.mean, self.tau = mean, float(tau)

    def __call__(self, x, sigma, generator=None):
        s2 = DN.sigma_vec(sigma, x.shape[0], x.device).view(-1, 1, 1, 1) ** 2
        return (self.tau ** 2 * x + s2 * self.mean) / (self.tau ** 2 + s2)


def _toy(seed=0):
    mu, tau, sn = 0.5, 0.1, 0.05
    g = _gen(seed)
    x = mu + tau * torch.randn(1, 3, 8, 8, generator=g)
    return mu, tau, sn, x, g


def test_gaussian_prior_posterior_mean_denoise():
    mu, tau, sn, x, g = _toy()
    y = x + sn * torch.randn(x.shape, generator=g)
    post = (tau ** 2 * y + sn ** 2 * mu) / (tau ** 2 + sn ** 2)
    prior = GaussianPriorDenoiser(mu, tau)
    one = restore(D.Denoise(y, sn), prior)  # DPIR's denoising step: the MMSE denoiser at sigma_n
    assert (one - post).abs().max() < 1e-5
    long = restore(D.Denoise(y, sn), prior, steps=200, sigma_max=0.5, sigma_min=1e-3, lam=1.0)
    assert (long - post).abs().max() < 0.01  # HQS converges to the MAP = posterior mean
    many = restore(D.Denoise(y.expand(64, -1, -1, -1).clone(), sn), prior, steps=200, sigma_max=0.5,
                   sigma_min=1e-3, lam=1.0, stochastic=0.5, seed=3)
    assert many.std(0).mean() > 0.005  # the samples really differ
    err = many.mean(0, keepdim=True) - post
    assert err.abs().mean() < 0.012 and err.abs().max() < 0.05


def test_gaussian_prior_posterior_mean_inpaint_and_deblur():
    mu, tau, sn, x, g = _toy(1)
    prior = GaussianPriorDenoiser(mu, tau)
    mask = (torch.rand(1, 8, 8, generator=g) < 0.4).float()
    y = x + sn * torch.randn(x.shape, generator=g)
    post = (tau ** 2 * y + sn ** 2 * mu) / (tau ** 2 + sn ** 2) * (1 - mask[:, None]) + mu * mask[:, None]
    out = restore(D.Inpaint(y * (1 - mask[:, None]), mask, sigma=sn), prior, steps=200, sigma_max=0.5,
                  sigma_min=1e-3, lam=1.0)
    assert (out - post).abs().max() < 0.01
    k = D.gaussian_kernel(1.0)
    yb = D.Deblur(x, k, boundary="circular").apply(x) + sn * torch.randn(x.shape, generator=g)
    op = D.Deblur(yb, k, sigma=sn, boundary="circular")
    otf = op.otf
    post = torch.fft.ifft2((otf.conj() * torch.fft.fft2(yb) / sn ** 2 + torch.fft.fft2(torch.full_like(x, mu))
                            / tau ** 2) / (otf.abs() ** 2 / sn ** 2 + 1 / tau ** 2)).real
    out = restore(op, prior, steps=200, sigma_max=0.5, sigma_min=1e-3, lam=1.0)
    assert (out - post).abs().max() < 0.01


# ------------------------------------------------------------------------------------------- priors


class _EpsSampling:
    sigma_min, sigma_max = 0.03, 14.6

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image + noise * sigma.view(-1, 1, 1, 1)


class _FlowSampling:
    sigma_min, sigma_max = 0.0, 1.0

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        s = sigma.view(-1, 1, 1, 1)
        return s * noise + (1 - s) * latent_image


class _StandInModel:
    """Members of ComfyUI's BaseModel the adapter uses; apply_model is the exact MMSE of a Gaussian latent prior."""

    def __init__(self, mu, tau, sampling=None):
        self.model_sampling = sampling or _EpsSampling()
        self.mu, self.tau, self.calls = mu, tau, []

    def process_latent_in(self, latent):
        return latent * 2

    def process_latent_out(self, latent):
        return latent / 2

    def apply_model(self, x, t, c_crossattn=None, **kwargs):
        self.calls.append((t.clone(), c_crossattn))
        s2 = t.view(-1, 1, 1, 1) ** 2
        return (self.tau ** 2 * x + s2 * self.mu) / (self.tau ** 2 + s2)


class _StandInPatcher:
    def __init__(self, model):
        self.model = model


class _StandInVAE:
    def encode(self, pixels):
        return pixels.permute(0, 3, 1, 2) * 2 - 1

    def decode(self, latent):
        return ((latent + 1) / 2).permute(0, 2, 3, 1)


def test_diffusion_denoiser_stand_in():
    mu, tau = 0.5, 0.1
    # pixel prior N(mu, tau) is latent N(4 mu - 2, 4 tau) through encode (*2-1) and process_latent_in (*2)
    model = _StandInModel(4 * mu - 2, 4 * tau)
    cond = [[torch.ones(1, 4, 8), {}]]
    den = DN.DiffusionDenoiser(_StandInPatcher(model), _StandInVAE(), conditioning=cond)
    assert den.wants_clean_input and not den.flow
    x = torch.full((2, 3, 16, 16), 0.7)
    a = den(x, 0.05, generator=_gen(1))
    b = den(x, 0.05, generator=_gen(1))
    assert torch.equal(a, b) and a.shape == x.shape
    t, c = model.calls[-1]
    assert torch.allclose(t, torch.full((2,), 0.2)) and c.shape == (2, 4, 8)  # pixel sigma * 4, batch-expanded
    # on average it is the pixel-space MMSE of the noised input: 0.7 - sigma^2 / (tau^2 + sigma^2) * (0.7 - mu)
    expected = 0.7 - 0.05 ** 2 / (tau ** 2 + 0.05 ** 2) * (0.7 - mu)
    assert abs(float(a.mean()) - expected) < 0.01
    odd = den(torch.full((1, 3, 18, 21), 0.7), 0.05, generator=_gen(2))  # padded to the VAE's multiple of 8
    assert odd.shape == (1, 3, 18, 21)
    flow = DN.DiffusionDenoiser(_StandInModel(0.0, 1.0, _FlowSampling()), _StandInVAE())
    assert flow.flow and torch.allclose(flow.model_sigma(torch.tensor([0.25])), torch.tensor([0.5]))


def test_sampler_with_diffusion_prior_inpaints_and_is_seeded():
    mu, tau = 0.5, 0.1
    g = _gen(11)
    x = (mu + tau * torch.randn(1, 3, 16, 16, generator=g)).clamp(0, 1)
    mask = (torch.rand(1, 16, 16, generator=g) < 0.5).float()
    y = x * (1 - mask[:, None])
    den = DN.DiffusionDenoiser(_StandInModel(4 * mu - 2, 4 * tau), _StandInVAE())
    op = D.Inpaint(y, mask)
    a = restore(op, den, steps=6, seed=5)
    b = restore(op, den, steps=6, seed=5)
    c = restore(op, den, steps=6, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (psnr(a, x) - psnr(y, x) > 10).all()


def test_diffusion_denoiser_rejects_non_models():
    with pytest.raises(LitError, match="model"):
        DN.DiffusionDenoiser(object(), _StandInVAE())
    with pytest.raises(LitError, match="VAE"):
        DN.DiffusionDenoiser(_StandInPatcher(_StandInModel(0, 1)), object())


def test_tiling_matches_whole_image(photos):
    x = photos[:1]
    assert torch.allclose(tiled(lambda t: t * 2 + 1, x, tile=40, overlap=8), x * 2 + 1, atol=1e-6)
    den = DN.DCTDenoiser()
    y = D.add_noise(x, 15 / 255, generator=_gen(13))
    whole = den(y, 15 / 255)
    den_tiled = DN.DCTDenoiser(tile=48)
    assert psnr(den_tiled(y, 15 / 255), whole) > 38


@pytest.mark.parametrize("size", [200, 256, 257, 321, 481, 1000, 4000])
def test_tiles_cover_the_image_with_the_overlap_and_little_repeated_work(size):
    from comfyui_lit.models.restoration.tiling import _spans

    starts, length = _spans(size, 256, 16)
    assert starts[0] == 0 and starts[-1] + length == size and length <= 256
    assert all(a + length - b >= 16 for a, b in zip(starts, starts[1:], strict=False))  # neighbours share
    # the fewest tiles that can do it, so the pixels processed stay close to the image's own
    assert len(starts) == (1 if size <= 256 else math.ceil((size - 16) / 240))
    assert len(starts) * length < size + (len(starts) - 1) * 16 + len(starts)  # only the overlaps repeat


def test_dct_denoiser_beats_input_on_every_sigma(photos):
    for s in (5, 15, 50):
        y = D.add_noise(photos, s / 255, generator=_gen(s))
        assert (psnr(DN.DCTDenoiser()(y, s / 255), photos) > psnr(y, photos) + 2).all()


@pytest.mark.filterwarnings("ignore:Level value:UserWarning")  # pywt warns about full depth on 8 samples
def test_block_matching_transforms():
    h = DN.haar_matrix(32)
    assert torch.allclose(h @ h.T, torch.eye(32), atol=1e-5)
    a = DN.bior15_matrix(8)
    assert torch.allclose(a.norm(dim=1), torch.ones(8), atol=1e-5)  # thresholds in units of sigma
    assert torch.linalg.matrix_rank(a) == 8
    import pywt  # the reference (a test extra): missing it must fail, not skip

    ref = np.stack([np.concatenate(pywt.wavedec(np.eye(8)[i], "bior1.5", mode="periodization", level=3))
                    for i in range(8)], 1)
    ref = torch.from_numpy(ref / np.linalg.norm(ref, axis=1, keepdims=True)).float()
    assert torch.allclose(a, ref, atol=1e-5)


def test_block_matching_wiener_profile_follows_sigma(photos, monkeypatch):
    from comfyui_lit.models.restoration.spec import BLOCK_MATCHING

    seen = []
    grouped = DN.DCTDenoiser._grouped

    def spy(self, v, lum, sigma, pilot, g, **kw):
        seen.append((pilot is None, g))
        return grouped(self, v, lum, sigma, pilot, g, **kw)

    monkeypatch.setattr(DN.DCTDenoiser, "_grouped", spy)
    den = DN.DCTDenoiser(block_matching=True)
    y = photos[:1, :, :24, :24]
    cut = BLOCK_MATCHING.high_sigma
    for sigma, wiener in ((cut * 0.6, BLOCK_MATCHING.wiener), (cut * 1.25, BLOCK_MATCHING.wiener_high)):
        seen.clear()
        den(y, sigma)
        assert seen == [(True, BLOCK_MATCHING.hard), (False, wiener)], sigma
    assert BLOCK_MATCHING.wiener != BLOCK_MATCHING.wiener_high


def test_block_matching_on_small_grey_and_tiled_images(photos):
    den = DN.DCTDenoiser(block_matching=True)
    for size in (1, 3, 5, 9, 21):  # below one patch the sliding stages take over; above, fewer candidates
        y = D.add_noise(photos[:1, :, :size, :size], 25 / 255, generator=_gen(size))
        out = den(y, 25 / 255)
        assert out.shape == y.shape and bool(torch.isfinite(out).all()), size
    grey = photos[:1].mean(1, keepdim=True)
    y = D.add_noise(grey, 25 / 255, generator=_gen(3))
    assert psnr(den(y, 25 / 255), grey) > psnr(y, grey) + 6
    y = D.add_noise(photos[:1], 15 / 255, generator=_gen(4))
    whole = den(y, 15 / 255)
    assert psnr(DN.DCTDenoiser(block_matching=True, tile=48)(y, 15 / 255), whole) > 38


def test_schedule_is_geometric_and_strength_lowers_start():
    full = sigma_schedule(0.2, 0.01, 5)
    assert math.isclose(full[0], 0.2) and math.isclose(full[-1], 0.01)
    assert all(math.isclose(full[i + 1] / full[i], full[1] / full[0], rel_tol=1e-6) for i in range(4))
    assert sigma_schedule(0.2, 0.01, 5, strength=0.5)[0] < 0.2


# ------------------------------------------------------------------------------------------- guidance


class _StandInLit:
    """encode_image = normalised mean colour (differentiable); text -> fixed colour directions."""

    device = torch.device("cpu")
    logit_scale = torch.tensor(10.0)
    table = {"red": [1.0, 0.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def encode_image(self, images):
        f = images.mean(dim=(1, 2)) - 0.3
        return f / f.norm(dim=-1, keepdim=True)

    def encode_text(self, texts):
        t = torch.tensor([self.table[s] for s in texts])
        return t / t.norm(dim=-1, keepdim=True)


def test_lit_guidance_moves_toward_positive(photos):
    y = D.add_noise(photos, 15 / 255, generator=_gen(14))
    op = D.Denoise(y, 15 / 255)
    lit = _StandInLit()
    plain = restore(op, DN.DCTDenoiser(), steps=3)
    guided = restore(op, DN.DCTDenoiser(), steps=3, lit_model=lit, positive="red", negative="blue",
                     guidance=1.0)
    red = lambda im: (im[:, 0] - im[:, 2]).mean()  # noqa: E731
    assert red(guided) > red(plain) + 0.01


def test_guidance_needs_model_and_prompt(photos):
    op = D.Denoise(photos, 0.05)
    with pytest.raises(LitError, match="LIT_MODEL"):
        restore(op, DN.DCTDenoiser(), guidance=1.0)
    with pytest.raises(LitError, match="prompt"):
        restore(op, DN.DCTDenoiser(), guidance=1.0, lit_model=_StandInLit(), positive=" ")


# ------------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_lit_errors():
    y = _rand((1, 3, 32, 32), 15)
    with pytest.raises(LitError, match="same height and width"):
        D.Inpaint(y, torch.zeros(1, 16, 16))
    with pytest.raises(LitError, match="masks for"):
        D.Inpaint(y.expand(2, -1, -1, -1), torch.zeros(3, 32, 32))
    with pytest.raises(LitError, match="whole image"):
        D.Inpaint(y, torch.ones(32, 32))
    with pytest.raises(LitError, match="> 0"):
        D.Denoise(y, 0.0)
    with pytest.raises(LitError, match="> 0"):
        D.Denoise(y, -0.1)
    with pytest.raises(LitError, match="larger than the image"):
        D.Deblur(y, D.gaussian_kernel(8.0))
    with pytest.raises(LitError, match="blur sigma"):
        D.gaussian_kernel(0.0)
    with pytest.raises(LitError, match="not supported"):
        D.Upscale(y, 5)
    with pytest.raises(LitError, match="quality"):
        D.JPEG(y, 101)
    with pytest.raises(LitError, match="too small"):
        D.Denoise(_rand((1, 3, 4, 4)), 0.1)
    with pytest.raises(LitError, match="steps"):
        restore(D.Denoise(y, 0.1), DN.DCTDenoiser(), steps=0)
    with pytest.raises(LitError, match="strength"):
        restore(D.Denoise(y, 0.1), DN.DCTDenoiser(), strength=0.0)


def test_poisson_gaussian_denoise(photos):
    gain, s = 0.02, 5 / 255
    y = D.add_noise(photos, s, gain, generator=_gen(16))
    op = D.Denoise(y, s, gain=gain)
    z = _rand(photos.shape, 17)
    rho = (s ** 2 + gain * z) / 0.1 ** 2  # per-pixel variance of the data at the current estimate
    assert torch.allclose(op.prox(z, 0.1), (y + rho * z) / (1 + rho), atol=1e-5)
    out = restore(op, DN.DCTDenoiser())
    assert (psnr(out, photos) - psnr(y, photos) > 5).all()


def test_batch_images_keep_their_own_noise_level(photos):
    sig = torch.tensor([8 / 255, 40 / 255]).view(-1, 1, 1, 1)
    y = photos + torch.randn(photos.shape, generator=_gen(18)) * sig
    batch = restore(D.Denoise(y), DN.DCTDenoiser())  # sigma estimated per image
    singles = torch.cat([restore(D.Denoise(y[i:i + 1]), DN.DCTDenoiser()) for i in range(2)])
    assert torch.allclose(batch, singles, atol=1e-5)


_PEAK_SCRIPT = """
import os, sys, threading, time, types
pkg = types.ModuleType("comfyui_lit"); pkg.__path__ = [sys.argv[1]]; sys.modules["comfyui_lit"] = pkg
import torch
from comfyui_lit.models.restoration.ffdnet import FFDNet
from comfyui_lit.models.restoration.priors import from_ffdnet
from comfyui_lit.models.restoration.sampler import restore
from comfyui_lit.models.restoration.tasks import build_operator
torch.set_num_threads(1)
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
peak = [0]
def watch():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)
net = from_ffdnet(FFDNet(3, 8, 3))
base = rss()
threading.Thread(target=watch, daemon=True).start()
for side in map(int, sys.argv[2:]):  # growing sizes: freed memory is reused, so each peak is that size's own
    y = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    out = restore(build_operator("deblur (gaussian)", y, noise_sigma=2.55, blur_sigma=1.6), net, steps=2)
    assert out.shape == y.shape and bool(torch.isfinite(out).all())
    time.sleep(0.02)
    print(side, peak[0] - base)
"""


def test_peak_memory_grows_linearly_and_a_12mp_photo_fits():
    """Peak memory of a trained-prior deblur (FFT data steps on the whole image, the network in 512 px tiles),
    sampled from the RSS of a fresh process: it must grow no faster than the pixel count, and the 12-megapixel
    projection must fit far inside 24 GiB. (A direct 12 MP run, bench/README.md: 2.1 GiB peak RSS.)"""
    import os
    import subprocess
    import sys

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("RSS sampling reads /proc (Linux)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, root, "384", "768"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = {int(a): int(b) for a, b in (line.split() for line in done.stdout.split("\n") if line.strip())}
    assert peak[384] > 2 ** 20  # the sampling sees the work (a few MiB at least)
    assert peak[768] < 4.5 * peak[384], peak  # 4x the pixels: about 4x the memory, not more
    per_pixel = peak[768] / 768 ** 2
    assert per_pixel * 12e6 < 8 * 2 ** 30, f"{per_pixel * 12e6 / 2 ** 30:.1f} GiB projected for 12 MP"
