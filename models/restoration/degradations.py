"""Degradation operators ``A`` and their data-consistency (proximal) steps in closed form.

Every operator holds the observation ``y`` and answers ``prox(z, sigma_k, lam)``: the minimiser of
``||y - A x||^2 / var_n + (lam / sigma_k^2) ||x - z||^2`` (for JPEG, the projection onto the quantisation
constraint set). Images are ``[B, C, H, W]`` float tensors in 0..1, any device; everything is batched and pure torch
so the sampler can run on the GPU. ``apply`` is the forward model the prox assumes, so tests (and the Degrade node)
can make damage that the restorer models exactly.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..common.errors import LitError
from ..common.validate import check_finite
from . import noise_level
from .dct import dct_matrix

# Noise-free observations are still 8-bit quantised; a floor keeps the data weight finite.
SIGMA_FLOOR = 1.0 / 255.0

# Standard IJG (Annex K) quantisation tables.
_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
]


# ----------------------------------------------------------------------------------------------- validation


def check_image(x: Tensor, name: str = "image") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise LitError(f"expected an image batch [B,C,H,W] with 1 or 3 channels, got {shape}.", input_name=name)
    if x.shape[-1] < 8 or x.shape[-2] < 8:
        raise LitError(f"the image is too small ({x.shape[-2]}x{x.shape[-1]}); restoration needs at least 8x8.",
                       input_name=name, fix="use a larger image.")
    # one NaN pixel would crash block matching or spread through every FFT step to the whole output
    check_finite(x, input_name=name, what="pixel values",
                 fix="the image has NaN/infinite pixels: fix the node that made it (e.g. clamp its output to 0..1).")


def as_sigma(sigma: float | Tensor, batch: int, device: torch.device, name: str = "sigma") -> Tensor:
    """A per-image noise level ``[B]``; rejects sigma <= 0 (use the estimator instead)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).flatten()
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise LitError(f"got {s.numel()} noise levels for {batch} images.", input_name=name)
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise LitError("the noise level must be > 0.", input_name=name,
                       fix="give a positive sigma, or leave it at 0 / 'auto' to estimate it from the image.")
    return s.clone()


def _bc(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------------------- noise level


def estimate_sigma(y: Tensor) -> Tensor:
    """The noise std ``[B]`` of each image (0..1 units), white or camera-correlated: see :mod:`.noise_level`."""
    check_image(y, "image")
    return noise_level.estimate_sigma(y)


# ----------------------------------------------------------------------------------------------- kernels


def gaussian_kernel(sigma: float, size: int | None = None) -> Tensor:
    """Normalised isotropic Gaussian blur kernel ``[k, k]`` (odd size, 3 sigma each side by default)."""
    if not sigma > 0:
        raise LitError("the blur sigma must be > 0.", input_name="blur_sigma")
    size = size or 2 * math.ceil(3 * sigma) + 1
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def motion_kernel(length: float, angle: float) -> Tensor:
    """Linear motion blur of ``length`` pixels at ``angle`` degrees, anti-aliased by supersampling the segment."""
    if not length >= 1:
        raise LitError("the motion length must be >= 1 pixel.", input_name="motion_length")
    size = 2 * math.ceil(length / 2) + 1
    c = (size - 1) / 2
    t = torch.linspace(-length / 2, length / 2, int(length * 16) + 1, dtype=torch.float64)
    a = math.radians(angle)
    xs, ys = c + t * math.cos(a), c - t * math.sin(a)
    k = torch.zeros(size, size, dtype=torch.float64)
    # bilinear splat of every sample point keeps sub-pixel angles smooth
    x0, y0 = xs.floor(), ys.floor()
    for dx in (0, 1):
        for dy in (0, 1):
            wx = 1 - (xs - x0 - dx).abs()
            wy = 1 - (ys - y0 - dy).abs()
            xi, yi = (x0 + dx).long().clamp(0, size - 1), (y0 + dy).long().clamp(0, size - 1)
            k.index_put_((yi, xi), wx * wy, accumulate=True)
    return (k / k.sum()).float()


def psf2otf(kernel: Tensor, shape: tuple[int, int]) -> Tensor:
    """FFT of a convolution kernel centred at the origin of an ``shape`` grid (circular convolution model)."""
    kh, kw = kernel.shape[-2:]
    pad = torch.zeros(*kernel.shape[:-2], *shape, dtype=kernel.dtype, device=kernel.device)
    pad[..., :kh, :kw] = kernel
    pad = torch.roll(pad, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.fft2(pad)


def _pad(x: Tensor, ph: int, pw: int) -> Tensor:
    if ph == 0 and pw == 0:
        return x
    # reflection needs pad < size; replicate is the next best smooth extension for tiny images
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (pw, pw, ph, ph), mode=mode)


def _fill_border(estimate: Tensor, y: Tensor, ph: int, pw: int) -> Tensor:
    """``estimate`` (the current image through the forward model, on the padded canvas) with ``y`` in its centre.

    The pixels of the canvas border were never observed; filling them with what the current estimate predicts
    makes the circular FFT model hold exactly for the known pixels, at the fixed point of the iterations. Reflected
    observations instead disagree with any image for a kernel that is not mirror-symmetric (motion blur): that
    mismatch rings through the whole image (-7 dB on 96 px crops, measured).
    """
    out = estimate.clone()
    out[..., ph:out.shape[-2] - ph, pw:out.shape[-1] - pw] = y
    return out


# ----------------------------------------------------------------------------------------------- operators


class Degradation:
    """Base class: an observation ``y`` and the operator that produced it."""

    y: Tensor
    var_n: Tensor  # [B] data noise variance (0..1 scale), floored
    task: str  # the spec's task name (its schedules); build_operator sets the exact one
    sigma_estimated: bool = False  # the noise level was read from y (the report says so, the user can override it)
    noise_level: Tensor | None = None  # [B] that reading (0..1 scale), where it was made

    @property
    def sigma_n(self) -> Tensor:
        return self.var_n.sqrt()

    @property
    def out_shape(self) -> tuple[int, int]:
        return tuple(self.y.shape[-2:])

    def apply(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def init(self) -> Tensor:
        """A cheap first estimate of the clean image (the sampler's starting point)."""
        return self.y.clone()

    def prox(self, z: Tensor, sigma_k: Tensor | float, lam: float = 1.0) -> Tensor:
        raise NotImplementedError

    def _rho(self, sigma_k: Tensor | float, lam: float) -> Tensor:
        s = torch.as_tensor(sigma_k, dtype=torch.float32, device=self.y.device).flatten()
        return _bc(lam * self.var_n / s.clamp_min(1e-6) ** 2)


class Denoise(Degradation):
    """``y = x + n``, Gaussian (``gain=0``) or Poisson-Gaussian (variance ``gain * x + sigma^2``)."""

    task = "denoise"

    def __init__(self, y: Tensor, sigma: float | Tensor | None = None, gain: float = 0.0) -> None:
        check_image(y)
        if gain < 0:
            raise LitError("the Poisson gain must be >= 0.", input_name="poisson_gain")
        self.y = y.float()
        s = estimate_sigma(self.y) if sigma is None else as_sigma(sigma, y.shape[0], y.device)
        self.sigma_estimated = sigma is None  # the node's report says so: the user can override a wrong read
        self.noise_level = s
        self.gain = float(gain)
        if sigma is None and self.gain > 0:  # the level read holds the shot noise (at the photo's mean) already
            s = (s ** 2 - self.gain * self.y.mean(dim=(1, 2, 3))).clamp_min(SIGMA_FLOOR ** 2).sqrt()
        # the schedule needs one number per image: the noise std at mid-grey
        self.var_n = (s ** 2 + self.gain * self.y.mean(dim=(1, 2, 3))).clamp_min(SIGMA_FLOOR ** 2)
        self.sigma_g = s
        self._read_shot: Tensor | None = None  # the brightness dependence read from y, where it is needed

    def apply(self, x: Tensor) -> Tensor:
        return x

    def pixel_var(self, z: Tensor) -> Tensor:
        if self.gain == 0:
            return _bc(self.var_n).expand_as(z)
        return _bc(self.sigma_g ** 2) + self.gain * z.clamp(0, 1)

    @property
    def shot_noise_read(self) -> Tensor | None:
        """``[B, 3]`` (see :func:`.noise_level.signal_dependence`) where the level was read from the photo and no
        gain given: whether, and how, the noise read grows with brightness. Read once, on first use."""
        if not self.sigma_estimated or self.gain > 0:
            return None
        if self._read_shot is None:
            self._read_shot = noise_level.signal_dependence(self.y)
        return self._read_shot

    def shot_model(self) -> tuple[Tensor, Tensor] | None:
        """``(sigma^2, gain)``, each ``[B]``: the per-channel noise variance as ``sigma^2 + gain * x`` where it grows
        with brightness (a gain given, or read from the photo), else None. A read keeps the level the estimate gave
        at the photo's mean and takes the fitted slope as far as the read is sure (0 gain when it is not)."""
        mean = self.y.mean(dim=(1, 2, 3))
        if self.gain > 0:
            return self.sigma_g ** 2, torch.full_like(mean, self.gain)
        read = self.shot_noise_read
        if read is None or not bool((read[:, 2] > 0).any()):
            return None
        a, g, sure = read.unbind(1)
        gain = sure * self.var_n * g / (a + g * mean).clamp_min(1e-12)
        return (self.var_n - gain * mean).clamp_min(0), gain

    def prox(self, z: Tensor, sigma_k: Tensor | float, lam: float = 1.0) -> Tensor:
        s = torch.as_tensor(sigma_k, dtype=torch.float32, device=z.device).flatten()
        rho = lam * self.pixel_var(z) / _bc(s.clamp_min(1e-6)) ** 2
        return (self.y + rho * z) / (1 + rho)


class Deblur(Degradation):
    """``y = k * x + n`` with a known kernel; FFT solve on a padded canvas whose unobserved border is filled with
    the blur of the current estimate (``boundary='circular'``: no canvas, the wrap-around model)."""

    task = "deblur (motion)"  # any kernel: DPIR's general schedule; build_operator names the Gaussian case

    def __init__(self, y: Tensor, kernel: Tensor, sigma: float | Tensor | None = None,
                 boundary: str = "reflect") -> None:
        check_image(y)
        kernel = torch.as_tensor(kernel, dtype=torch.float32)
        if kernel.ndim != 2 or kernel.sum() <= 0:
            raise LitError("the blur kernel must be a 2-D array with a positive sum.", input_name="kernel")
        if kernel.shape[0] > y.shape[-2] or kernel.shape[1] > y.shape[-1]:
            raise LitError(f"the blur kernel ({kernel.shape[0]}x{kernel.shape[1]}) is larger than the image "
                           f"({y.shape[-2]}x{y.shape[-1]}).", input_name="kernel",
                           fix="use a smaller blur sigma / motion length, or a larger image.")
        if boundary not in ("reflect", "circular"):
            raise LitError(f"unknown boundary '{boundary}'.", input_name="boundary")
        self.y = y.float()
        self.kernel = (kernel / kernel.sum()).to(y.device)
        self.boundary = boundary
        self.pad = (0, 0) if boundary == "circular" else (kernel.shape[0], kernel.shape[1])
        # A blurred photo is smooth, so its noise reads cleanly; assuming none instead (the floor) lets the data step
        # amplify even 1% noise into ringing: -7 dB at noise 2.55/255, -17 at 8 (bench/README.md, eleventh stop)
        s = estimate_sigma(self.y) if sigma is None else as_sigma(sigma, y.shape[0], y.device)
        self.sigma_estimated, self.noise_level = sigma is None, s
        self.var_n = (s ** 2).clamp_min(SIGMA_FLOOR ** 2)
        ph, pw = self.pad
        self._shape = (y.shape[-2] + 2 * ph, y.shape[-1] + 2 * pw)
        self.otf = psf2otf(self.kernel, self._shape)

    def _crop(self, x: Tensor) -> Tensor:
        ph, pw = self.pad
        return x[..., ph:x.shape[-2] - ph, pw:x.shape[-1] - pw]

    def apply(self, x: Tensor) -> Tensor:
        ph, pw = self.pad
        xp = _pad(x.float(), ph, pw)
        return self._crop(torch.fft.ifft2(torch.fft.fft2(xp) * self.otf).real)

    def prox(self, z: Tensor, sigma_k: Tensor | float, lam: float = 1.0) -> Tensor:
        rho = self._rho(sigma_k, lam)
        ph, pw = self.pad
        fz = torch.fft.fft2(_pad(z.float(), ph, pw))
        yc = _fill_border(torch.fft.ifft2(fz * self.otf).real, self.y, ph, pw) if (ph or pw) else self.y
        num = self.otf.conj() * torch.fft.fft2(yc) + rho * fz
        return self._crop(torch.fft.ifft2(num / (self.otf.abs() ** 2 + rho)).real)


class Inpaint(Degradation):
    """``y = (1 - m) * x``: ``mask`` is 1 where pixels are missing (ComfyUI's convention)."""

    task = "inpaint"

    def __init__(self, y: Tensor, mask: Tensor, sigma: float | Tensor | None = None) -> None:
        check_image(y)
        self.y = y.float()
        self.mask = normalise_mask(mask, y)
        if bool((self.mask >= 0.5).all()):
            raise LitError("the mask covers the whole image: nothing is known to restore from.", input_name="mask",
                           fix="paint only the damaged area (white = missing).")
        s = SIGMA_FLOOR if sigma is None else sigma
        self.var_n = (as_sigma(s, y.shape[0], y.device) ** 2).clamp_min(SIGMA_FLOOR ** 2)

    def apply(self, x: Tensor) -> Tensor:
        return x * (1 - self.mask)

    def init(self) -> Tensor:
        return fill_holes(self.y, self.mask)

    def prox(self, z: Tensor, sigma_k: Tensor | float, lam: float = 1.0) -> Tensor:
        rho = self._rho(sigma_k, lam)
        known = (self.y + rho * z) / (1 + rho)
        return known * (1 - self.mask) + z * self.mask


def normalise_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A ComfyUI MASK (``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]``) as ``[B,1,H,W]`` in 0..1 matching ``like``."""
    if not isinstance(mask, Tensor):
        raise LitError("the mask must be a tensor.", input_name="mask")
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3 or tuple(m.shape[-2:]) != tuple(like.shape[-2:]):
        raise LitError(f"the mask is {tuple(mask.shape)} but the image is {like.shape[-2]}x{like.shape[-1]}; "
                       "they must have the same height and width.", input_name="mask",
                       fix="make the mask from this image (or resize it to the image's size).")
    if m.shape[0] not in (1, like.shape[0]):
        raise LitError(f"{m.shape[0]} masks for {like.shape[0]} images.", input_name="mask",
                       fix="give one mask, or one per image.")
    m = m.expand(like.shape[0], -1, -1).to(like.device).clamp(0, 1)
    return m[:, None].contiguous()


def fill_holes(y: Tensor, mask: Tensor) -> Tensor:
    """Push-pull fill of the masked pixels: averages of the known pixels at coarser and coarser scales."""
    w = 1 - mask
    levels = [(y * w, w)]
    while min(levels[-1][1].shape[-2:]) > 1 and bool((levels[-1][1] <= 1e-6).any()):
        yw, ww = levels[-1]
        levels.append((F.avg_pool2d(yw, 2, ceil_mode=True), F.avg_pool2d(ww, 2, ceil_mode=True)))
    yw, ww = levels[-1]
    est = yw / ww.clamp_min(1e-6)
    if bool((ww <= 1e-6).any()):
        est = torch.where(ww > 1e-6, est, (yw.sum((-2, -1), keepdim=True) / ww.sum((-2, -1), keepdim=True)
                                           .clamp_min(1e-6)).expand_as(est))
    for yw, ww in reversed(levels[:-1]):
        up = F.interpolate(est, size=yw.shape[-2:], mode="bilinear", align_corners=False)
        local = yw / ww.clamp_min(1e-6)
        a = ww.clamp(0, 1)
        est = a * local + (1 - a) * up
    return y * (1 - mask) + est * mask


def _resize_weights(scale: int, kind: str) -> tuple[np.ndarray, int]:
    """Correlation taps ``w[t], t = t0 ..`` of one output sample over input ``s*i + t`` (centre-aligned)."""
    if kind == "area":
        return np.full(scale, 1.0 / scale), 0
    if kind != "bicubic":
        raise LitError(f"unknown downsampling model '{kind}'.", input_name="kernel", fix="use 'bicubic' or 'area'.")

    def cubic(v: np.ndarray, a: float = -0.5) -> np.ndarray:
        v = np.abs(v)
        return np.where(v <= 1, (a + 2) * v ** 3 - (a + 3) * v ** 2 + 1,
                        np.where(v < 2, a * v ** 3 - 5 * a * v ** 2 + 8 * a * v - 4 * a, 0.0))

    # antialiased bicubic (PIL / torch antialias=True): the cubic stretched by the scale factor
    t = np.arange(-2 * scale + 1, 3 * scale - 1)
    w = cubic((t + 0.5 - scale / 2) / scale)
    keep = np.abs(w) > 0
    return w[keep] / w[keep].sum(), int(t[keep][0])


def _resize_otf(n: int, scale: int, kind: str, device: torch.device) -> Tensor:
    w, t0 = _resize_weights(scale, kind)
    arr = np.zeros(n)
    for i, wi in enumerate(w):
        arr[(t0 + i) % n] += wi
    return torch.fft.fft(torch.as_tensor(arr, device=device)).conj().to(torch.complex64)


class Upscale(Degradation):
    """``y = (k * x)↓s``: bicubic (antialiased) or area downsampling by 2, 3 or 4; USRNet-style FFT closed form."""

    def __init__(self, y: Tensor, scale: int, kind: str = "bicubic", sigma: float | Tensor | None = None,
                 boundary: str = "reflect") -> None:
        check_image(y)
        if scale not in (2, 3, 4):
            raise LitError(f"upscale factor {scale} is not supported.", input_name="scale", fix="use 2, 3 or 4.")
        if boundary not in ("reflect", "circular"):
            raise LitError(f"unknown boundary '{boundary}'.", input_name="boundary")
        self.y = y.float()
        self.scale, self.kind = scale, kind
        self.task = f"upscale x{scale}"
        self.plr = 0 if boundary == "circular" else 4
        s = SIGMA_FLOOR if sigma is None else sigma
        self.var_n = (as_sigma(s, y.shape[0], y.device) ** 2).clamp_min(SIGMA_FLOOR ** 2)
        h, w = y.shape[-2] + 2 * self.plr, y.shape[-1] + 2 * self.plr
        self.otf = _resize_otf(h * scale, scale, kind, y.device)[:, None] * _resize_otf(w * scale, scale, kind,
                                                                                         y.device)[None, :]
        self._fy = torch.fft.fft2(self.y) if self.plr == 0 else None
        self._f2b = _fold(self.otf.abs() ** 2, scale)

    @property
    def out_shape(self) -> tuple[int, int]:
        return (self.y.shape[-2] * self.scale, self.y.shape[-1] * self.scale)

    def apply(self, x: Tensor) -> Tensor:
        return downscale(x, self.scale, self.kind, circular=self.plr == 0)

    def init(self) -> Tensor:
        return F.interpolate(self.y, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)

    def prox(self, z: Tensor, sigma_k: Tensor | float, lam: float = 1.0) -> Tensor:
        # USRNet's closed form, rearranged as z plus a correction so nothing is divided by a small rho:
        # x = z + F^-1[ conj(K) * upsample((Y - fold(K Z)) / (fold(|K|^2) + rho)) ]
        rho = self._rho(sigma_k, lam)
        p, s = self.plr * self.scale, self.scale
        zp = _pad(z.float(), p, p)
        kz = _fold(self.otf * torch.fft.fft2(zp), s)
        if self.plr:  # the unobserved border of the low-res canvas: what the estimate predicts (no residual)
            q = self.plr
            lr = torch.fft.ifft2(kz).real
            resid = torch.fft.fft2(F.pad(self.y - lr[..., q:lr.shape[-2] - q, q:lr.shape[-1] - q], (q, q, q, q)))
        else:
            resid = self._fy - kz
        x = zp + torch.fft.ifft2(self.otf.conj() * (resid / (self._f2b + rho)).repeat(1, 1, s, s)).real
        return x[..., p:x.shape[-2] - p, p:x.shape[-1] - p]


def _fold(a: Tensor, s: int) -> Tensor:
    """Average of the ``s x s`` spectral aliases: the spectrum of a signal decimated by ``s``."""
    h, w = a.shape[-2] // s, a.shape[-1] // s
    return a.reshape(*a.shape[:-2], s, h, s, w).mean(dim=(-4, -2))


def downscale(x: Tensor, scale: int, kind: str = "bicubic", circular: bool = False) -> Tensor:
    """The downsampling model of :class:`Upscale`: ``(k * x)`` sampled every ``scale`` pixels.

    Sizes not divisible by ``scale`` are cropped (bottom/right) first.
    """
    check_image(x)
    h, w = x.shape[-2] // scale * scale, x.shape[-1] // scale * scale
    x = x[..., :h, :w].float()
    p = 0 if circular else 4 * scale
    xp = _pad(x, p, p)
    otf = _resize_otf(xp.shape[-2], scale, kind, x.device)[:, None] * _resize_otf(xp.shape[-1], scale, kind,
                                                                                 x.device)[None, :]
    out = torch.fft.ifft2(torch.fft.fft2(xp) * otf).real[..., ::scale, ::scale]
    q = p // scale
    return out[..., q:out.shape[-2] - q, q:out.shape[-1] - q]


# ----------------------------------------------------------------------------------------------- JPEG


def jpeg_tables(quality: int) -> tuple[Tensor, Tensor]:
    """IJG luma/chroma quantisation tables ``[8,8]`` at ``quality`` (libjpeg's scaling, baseline-clipped)."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise LitError(f"JPEG quality {q} is outside 1..100.", input_name="jpeg_quality")
    scale = 5000 // q if q < 50 else 200 - 2 * q
    out = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        t = (np.asarray(base) * scale + 50) // 100
        out.append(torch.as_tensor(np.clip(t, 1, 255).reshape(8, 8), dtype=torch.float32))
    return out[0], out[1]


_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _to_ycc(x: Tensor) -> Tensor:
    ycc = torch.einsum("ij,bjhw->bihw", _RGB2YCC.to(x.device), x * 255)
    return ycc + torch.tensor([0.0, 128.0, 128.0], device=x.device).view(1, 3, 1, 1)


def _from_ycc(ycc: Tensor) -> Tensor:
    v = ycc - torch.tensor([0.0, 128.0, 128.0], device=ycc.device).view(1, 3, 1, 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YCC).to(ycc.device), v) / 255


def _blocks(p: Tensor) -> Tensor:
    """``[N, H, W]`` (multiples of 8) -> block DCT coefficients ``[N, H/8, W/8, 8, 8]``."""
    d = dct_matrix(8).to(p.device)
    n, h, w = p.shape
    b = (p - 128).reshape(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    return d @ b @ d.T


def _unblocks(c: Tensor) -> Tensor:
    d = dct_matrix(8).to(c.device)
    n, bh, bw = c.shape[:3]
    return (d.T @ c @ d).permute(0, 1, 3, 2, 4).reshape(n, bh * 8, bw * 8) + 128


class JPEG(Degradation):
    """Quantisation-constraint projection: each 8x8 DCT coefficient stays inside the cell it was quantised to.

    Models baseline JPEG with 4:2:0 chroma subsampling (PIL's default) or 4:4:4, and the IJG tables scaled by
    ``quality``; ``quality=None`` estimates it from the luma DCT statistics.
    """

    task = "jpeg artifacts"

    def __init__(self, y: Tensor, quality: int | None = None, subsampling: str = "4:2:0") -> None:
        check_image(y)
        if y.shape[1] != 3:
            raise LitError("JPEG restoration expects an RGB image.", input_name="image")
        if subsampling not in ("4:2:0", "4:4:4"):
            raise LitError(f"unknown chroma subsampling '{subsampling}'.", input_name="subsampling")
        self.y = y.float()
        self.sub = 2 if subsampling == "4:2:0" else 1
        self.quality = int(quality) if quality else estimate_jpeg_quality(self.y)
        ql, qc = jpeg_tables(self.quality)
        self.tables = (ql.to(y.device), qc.to(y.device))
        # the quantisation error of a coefficient is uniform over its cell: variance q^2/12, in 0..1 pixel units
        self.var_n = torch.full((y.shape[0],), float(ql.mean() ** 2 / 12 / 255 ** 2), device=y.device)
        self._lo, self._hi = [], []
        for c, coef in enumerate(self._coefs(self.y)):
            q = self.tables[0 if c == 0 else 1]
            idx = torch.round(coef / q)
            self._lo.append((idx - 0.5) * q)
            self._hi.append((idx + 0.5) * q)

    def _planes(self, x: Tensor) -> list[Tensor]:
        m = 8 * self.sub
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % m, 0, -h % m), mode="replicate")
        ycc = _to_ycc(xp)
        planes = [ycc[:, 0]]
        for c in (1, 2):
            p = ycc[:, c]
            planes.append(F.avg_pool2d(p[:, None], self.sub)[:, 0] if self.sub > 1 else p)
        return planes

    def _coefs(self, x: Tensor) -> list[Tensor]:
        return [_blocks(p) for p in self._planes(x)]

    def apply(self, x: Tensor) -> Tensor:
        return jpeg_compress(x, self.quality, subsampling=0 if self.sub == 1 else 2)

    def prox(self, z: Tensor, sigma_k: Tensor | float = 0.0, lam: float = 1.0) -> Tensor:
        h, w = z.shape[-2:]
        m = 8 * self.sub
        zp = F.pad(z.float(), (0, -w % m, 0, -h % m), mode="replicate")
        ycc = _to_ycc(zp)
        out = []
        for c, coef in enumerate(self._coefs(z)):
            delta = _unblocks(torch.minimum(torch.maximum(coef, self._lo[c]), self._hi[c]) - coef) - 128
            if c > 0 and self.sub > 1:
                # replicate is the pseudo-inverse of 2x2 averaging: an exact projection for the subsampled planes
                delta = delta.repeat_interleave(self.sub, -2).repeat_interleave(self.sub, -1)
            out.append(ycc[:, c] + delta)
        return _from_ycc(torch.stack(out, 1))[..., :h, :w]


def estimate_jpeg_quality(y: Tensor) -> int:
    """The IJG quality whose luma steps the low-frequency DCT coefficients of ``y`` sit on.

    Each candidate table is scored by the share of its informative coefficients (``|c| > step/2``) lying within
    8-bit rounding/clipping noise of a multiple of the step. A table twice as coarse as the true one fits only about
    half of them and a finer one fits them all, so the answer is the lowest quality scoring near the best score.
    """
    h, w = y.shape[-2] // 8 * 8, y.shape[-1] // 8 * 8
    if h < 8 or w < 8:
        return 90
    luma = _to_ycc(y[..., :h, :w].float())[:, 0]
    coef = _blocks(luma)
    pos = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0)]
    c = torch.stack([coef[..., i, j].flatten() for i, j in pos])
    scores = []
    for q in range(1, 101):
        ql, _ = jpeg_tables(q)
        steps = torch.tensor([float(ql[i, j]) for i, j in pos], device=y.device)[:, None]
        informative = c.abs() > steps / 2
        fits = (c - steps * torch.round(c / steps)).abs() < torch.clamp(0.05 * steps, min=2.0)
        n = informative.sum()
        scores.append(float((fits & informative).sum() / n) if n >= 16 else 0.0)
    best = max(scores)
    if best < 0.3:
        return 95  # not a JPEG we can read: a fine table makes the projection nearly the identity
    return next(q for q, sc in zip(range(1, 101), scores, strict=True) if sc >= 0.8 * best)


def jpeg_compress(x: Tensor, quality: int, subsampling: int = 2) -> Tensor:
    """Real JPEG round trip through PIL (baseline, IJG tables): the Degrade node's compression."""
    from PIL import Image

    jpeg_tables(quality)  # validates
    out = []
    for img in x.detach().float().clamp(0, 1).cpu():
        arr = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        mode = "RGB" if arr.shape[-1] == 3 else "L"
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(buf, "JPEG", quality=int(quality),
                                                                        subsampling=subsampling)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(mode), dtype=np.float32) / 255
        out.append(torch.from_numpy(dec.reshape(arr.shape)).permute(2, 0, 1))
    return torch.stack(out).to(x.device)


# ----------------------------------------------------------------------------------------------- test damage


def add_noise(x: Tensor, sigma: float, gain: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian (``gain=0``) or Poisson-Gaussian noise; ``sigma`` in 0..1 units."""
    if sigma < 0 or gain < 0:
        raise LitError("noise levels must be >= 0.", input_name="noise_sigma")
    n = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
    var = sigma ** 2 + gain * x.clamp(0, 1)
    return x + n * torch.as_tensor(var).sqrt()


def camera_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``x`` [B,3,H,W] plus noise as a camera makes it: Gaussian sensor noise of std ``sigma`` (0..1 units) on an
    RGGB Bayer mosaic, interpolated to every pixel by bilinear demosaicing. The grain is spatially and colour
    correlated (the finest detail band sees a third of it, which is what a white-noise estimator misses on real
    photos); the image itself is not re-mosaiced, since a camera's own demosaicing leaves far fewer artefacts than
    bilinear would."""
    if sigma < 0:
        raise LitError("noise levels must be >= 0.", input_name="noise_sigma")
    if x.shape[1] != 3:
        raise LitError(f"camera noise needs a 3-channel image, got {x.shape[1]}.", input_name="image")
    b, _, h, w = x.shape
    cfa = torch.zeros(1, 3, h, w, device=x.device, dtype=x.dtype)  # which colour each photosite records
    cfa[:, 0, 0::2, 0::2] = 1
    cfa[:, 1, 0::2, 1::2] = 1
    cfa[:, 1, 1::2, 0::2] = 1
    cfa[:, 2, 1::2, 1::2] = 1
    n = torch.randn((b, 1, h, w), generator=generator, device="cpu").to(x.device, x.dtype) * sigma
    k_rb = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4
    k_g = torch.tensor([[0.0, 1, 0], [1, 4, 1], [0, 1, 0]]) / 4
    k = torch.stack([k_rb, k_g, k_rb])[:, None].to(x.device, x.dtype)
    # each channel's samples, interpolated where the mosaic has none (reflect keeps the RGGB phase at the border)
    return x + F.conv2d(F.pad(n * cfa, (1, 1, 1, 1), mode="reflect"), k, groups=3)


def random_mask(shape: tuple[int, int, int], fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """``[B,H,W]`` mask with ``fraction`` of the pixels missing (1)."""
    if not 0 <= fraction < 1:
        raise LitError("the missing fraction must be in [0, 1).", input_name="mask_fraction")
    return (torch.rand(shape, generator=generator) < fraction).float()


def scratch_mask(shape: tuple[int, int, int], count: int = 6, width: float = 2.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """``[B,H,W]`` mask of ``count`` random line scratches of ``width`` pixels (1 = missing)."""
    b, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    out = torch.zeros(shape)
    for i in range(b):
        for _ in range(count):
            p = torch.rand(4, generator=generator) * torch.tensor([w, h, w, h])
            d = p[2:] - p[:2]
            length = d.norm().clamp_min(1.0)
            t = (((xx - p[0]) * d[0] + (yy - p[1]) * d[1]) / length ** 2).clamp(0, 1)
            dist = ((xx - p[0] - t * d[0]) ** 2 + (yy - p[1] - t * d[1]) ** 2).sqrt()
            out[i] = torch.maximum(out[i], (dist <= width / 2).float())
    return out
