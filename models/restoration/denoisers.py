"""Denoiser priors for the restoration sampler: ``D(x [B,3,H,W] in 0..1, sigma) -> estimate of the clean x``.

``sigma`` is the Gaussian noise std of ``x`` in 0..1 units, a float or one value per image. Three kinds:

* :class:`DCTDenoiser`: built in, no weights. Sliding-window 8x8 DCT shrinkage in an orthonormal opponent colour
  space, hard thresholding then an empirical Wiener pass guided by the first estimate (the two stages of BM3D,
  without the block matching), vectorised with ``unfold``/``fold`` on the image's device; with ``block_matching``,
  BM3D's two grouped steps instead (one-shot denoising).
* :class:`DiffusionDenoiser`: a ComfyUI diffusion ``MODEL`` (+ ``VAE``) used as an x0 predictor, by duck typing.
* :class:`~.priors.NetworkPrior`: a trained denoiser (FFDNet, or a spandrel network such as DRUNet), in priors.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common.errors import LitError
from .dct import dct_matrix
from .spec import BLOCK_MATCHING, BlockMatching, GroupedPass
from .tiling import tiled


def sigma_vec(sigma: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """One noise level per image ``[B]`` from a float or a tensor."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).flatten()
    if s.numel() == 1:
        s = s.expand(batch)
    if s.numel() != batch:
        raise LitError(f"{s.numel()} noise levels for {batch} images.", input_name="sigma")
    return s


def is_grey(x: Tensor, tol: float = 1e-5) -> bool:
    """Whether every image of ``x [B,3,H,W]`` has three equal channels (a black-and-white photo as ComfyUI loads
    it). The sampler's data steps treat the channels alike, so a grey photo stays grey to rounding."""
    return x.shape[1] == 3 and bool(((x[:, 1:] - x[:, :1]).abs() <= tol).all())


class Denoiser:
    """The prior interface. ``wants_clean_input``: the denoiser adds its own noise at ``sigma`` (diffusion models
    re-noise in latent space), so the sampler hands it the current clean estimate instead of a noisy image."""

    wants_clean_input: bool = False
    trained: bool = False  # a trained network: the sampler uses DPIR's schedules instead of the classical ones
    note: str = "prior: built-in DCT denoiser (no network)"

    def __call__(self, x: Tensor, sigma: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------------- built-in


_OPPONENT = torch.tensor([[1 / math.sqrt(3)] * 3,
                          [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                          [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]])


def _dct2_basis(p: int) -> Tensor:
    d = dct_matrix(p)
    return torch.kron(d, d)  # acts on row-major flattened p x p patches


# bior1.5 analysis filters (low, high), as PyWavelets lists them: BM3D's transform for its hard-threshold step
_BIOR15_LO = (0.016572815184059706, -0.016572815184059706, -0.12153397801643785, 0.12153397801643785,
              0.7071067811865476, 0.7071067811865476, 0.12153397801643785, -0.12153397801643785,
              -0.016572815184059706, 0.016572815184059706)
_BIOR15_HI = (0.0, 0.0, 0.0, 0.0, -0.7071067811865476, 0.7071067811865476, 0.0, 0.0, 0.0, 0.0)


def bior15_matrix(n: int = 8) -> Tensor:
    """``A [n, n]``: the full-depth periodised bior1.5 wavelet decomposition of ``n`` (a power of two) samples,
    coefficients in PyWavelets' ``wavedec`` order, each row scaled to unit norm so a threshold in units of sigma
    means the same for every coefficient (the transform is not orthogonal: invert with ``A^-1``)."""
    a = torch.eye(n, dtype=torch.float64)
    m = n
    while m > 1:
        level = torch.eye(n, dtype=torch.float64)
        level[:m, :m] = 0
        for k in range(m // 2):
            for j, (lo, hi) in enumerate(zip(_BIOR15_LO, _BIOR15_HI, strict=True)):
                i = (2 * k + 5 - j) % m  # the phase of PyWavelets' periodization mode
                level[k, i] += lo
                level[m // 2 + k, i] += hi
        a = level @ a
        m //= 2
    return (a / a.norm(dim=1, keepdim=True)).float()


@lru_cache(maxsize=8)
def haar_matrix(n: int) -> Tensor:
    """The orthonormal Haar transform of ``n`` (a power of two) samples, BM3D's transform along a group."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        m = h.shape[0]
        h = torch.cat([torch.kron(h, torch.tensor([[1.0, 1.0]], dtype=torch.float64)),
                       torch.kron(torch.eye(m, dtype=torch.float64), torch.tensor([[1.0, -1.0]],
                                                                                  dtype=torch.float64))])
    return (h / h.norm(dim=1, keepdim=True)).float()


@lru_cache(maxsize=8)
def _transforms(p: int, transform: str, kaiser: float) -> tuple[Tensor, Tensor, Tensor]:
    """A grouped step's 2-D analysis matrix, its synthesis matrix and the flattened Kaiser window, built once
    (rebuilding them, the inverse above all, was a tenth of a call on an 80 px image)."""
    if transform == "bior1.5" and p & (p - 1) == 0:
        a = torch.kron(bior15_matrix(p), bior15_matrix(p))
        syn = torch.linalg.inv(a)
    else:  # the DCT (also BM3D's stand-in where bior1.5 has no full depth)
        a = _dct2_basis(p)
        syn = a.T.contiguous()
    win = torch.kaiser_window(p, periodic=False, beta=kaiser)
    return a, syn, torch.outer(win, win).flatten()


def _grid(n: int, step: int, device: torch.device) -> Tensor:
    g = torch.arange(0, n, step, device=device)
    return g if g[-1] == n - 1 else torch.cat([g, g.new_tensor([n - 1])])  # the last patch is a reference too


class DCTDenoiser(Denoiser):
    """Two-stage sliding-DCT denoiser (hard threshold, then Wiener with the first pass as pilot).

    ``threshold`` is in units of sigma (2.7 as in BM3D); ``stride`` 1 is the best quality, larger strides trade
    quality for speed on big images; ``tile`` bounds memory (pixels per side of each processed tile).
    ``block_matching`` replaces the two sliding stages by BM3D's two grouped steps (``profile``, the spec's
    ``BLOCK_MATCHING``): about CBM3D's quality for a fraction of its time, but still slower than the sliding stages,
    so the sampler turns it on for one-shot denoising only.
    """

    def __init__(self, patch: int = 8, stride: int = 1, threshold: float = 2.7, wiener: bool = True,
                 tile: int = 256, block_matching: bool = False, profile: BlockMatching = BLOCK_MATCHING) -> None:
        self.patch, self.stride, self.threshold, self.wiener, self.tile = patch, stride, threshold, wiener, tile
        self.block_matching, self.profile = block_matching, profile
        self._basis: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _k(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._basis:
            self._basis[key] = _dct2_basis(self.patch).to(device=device, dtype=dtype)
        return self._basis[key]

    def __call__(self, x: Tensor, sigma: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        s = sigma_vec(sigma, x.shape[0], x.device)
        out = torch.empty_like(x, dtype=torch.float32)
        for i in range(x.shape[0]):  # one image at a time keeps the patch stacks small
            xi = x[i:i + 1].float()
            si = float(s[i])
            if si <= 0:
                out[i:i + 1] = xi
                continue
            out[i:i + 1] = tiled(lambda t, si=si: self._denoise(t, si), xi, self.tile, 2 * self.patch)
        return out

    def _denoise(self, x: Tensor, sigma: float) -> Tensor:
        if is_grey(x):  # chroma is zero: denoise the luma alone (a third of the grouping work), same result
            return self._denoise(x.mean(dim=1, keepdim=True), sigma).expand(x.shape).contiguous()
        c = x.shape[1]
        opp = _OPPONENT.to(x.device) if c == 3 else torch.eye(c, device=x.device)
        v = torch.einsum("ij,bjhw->bihw", opp, x)
        prof = self.profile
        wiener = prof.wiener_high if sigma > prof.high_sigma else prof.wiener
        size = max(prof.hard.patch, wiener.patch)
        if self.block_matching and self.wiener and min(x.shape[-2:]) + 2 * prof.pad >= size:
            pad = prof.pad
            mode = "reflect" if pad < min(v.shape[-2:]) else "replicate"
            vp = F.pad(v, (pad, pad, pad, pad), mode=mode)
            basic = self._grouped(vp, vp[:, :1], sigma, None, prof.hard)
            est = self._grouped(vp, basic[:, :1], sigma, basic, wiener)
        else:
            p = self.patch
            # reflect padding so border pixels get as many patch estimates as interior ones
            pad = p - 1
            mode = "reflect" if pad < min(v.shape[-2:]) else "replicate"
            vp = F.pad(v.reshape(-1, 1, *x.shape[-2:]), (pad, pad, pad, pad), mode=mode)
            h, w = vp.shape[-2:]
            eh, ew = (-(h - p)) % self.stride, (-(w - p)) % self.stride
            vp = F.pad(vp, (0, ew, 0, eh), mode="replicate")
            est = self._stage(vp, sigma, None)
            if self.wiener:
                est = self._stage(vp, sigma, est)
            est = est.reshape(x.shape[0], c, *vp.shape[-2:])
        est = est[..., pad:pad + x.shape[-2], pad:pad + x.shape[-1]]
        return torch.einsum("ji,bjhw->bihw", opp, est)  # the opponent matrix is orthonormal: inverse = transpose

    def _stage(self, v: Tensor, sigma: float, pilot: Tensor | None) -> Tensor:
        p, size = self.patch, v.shape[-2:]
        k = self._k(v.device, v.dtype)
        coef = k @ F.unfold(v, p, stride=self.stride)  # [N, p*p, L]
        if pilot is None:
            keep = coef.abs() > self.threshold * sigma
            keep[:, 0] = True  # the patch mean is never thresholded
            coef = coef * keep
            weight = 1.0 / keep.sum(1, keepdim=True).float()
        else:
            ref = k @ F.unfold(pilot, p, stride=self.stride)
            shrink = ref ** 2 / (ref ** 2 + sigma ** 2)
            coef = coef * shrink
            weight = 1.0 / (shrink ** 2).sum(1, keepdim=True).clamp_min(1e-3)
        patches = (k.T @ coef) * weight
        num = F.fold(patches, size, p, stride=self.stride)
        den = F.fold(weight.expand(-1, p * p, -1).contiguous(), size, p, stride=self.stride)
        return num / den.clamp_min(1e-12)

    @staticmethod
    def _match(lum: Tensor, gy: Tensor, gx: Tensor, p: int, r: int, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` patches of ``lum [B,1,H,W]`` nearest (squared distance) to each reference patch on the grid
        ``gy x gx`` within +-``r`` px: their origins ``(y, x)``, each ``[B, L, k]``, the reference itself first."""
        b, _, h, w = lum.shape
        hp, wp, n = h - p + 1, w - p + 1, 2 * r + 1
        shift = torch.arange(-r, r + 1, device=lum.device)
        ok_x = ((gx[:, None] + shift) >= 0) & ((gx[:, None] + shift) < wp)  # [Lx, n]
        lp = F.pad(lum, (r, r, r, r), mode="replicate")  # the padded values are never used
        # box sums by cumulative sums taken only at the reference rows and columns (3-4x less CPU than a box filter
        # over every pixel), written into reused buffers: fresh large tensors per row shift cost page faults
        diff = lum.new_empty(b, h, n, w)
        cs = lum.new_zeros(b, h + 1, n, w)
        x1, x0 = gx + p - 1, (gx - 1).clamp_min(0)
        first = (gx > 0).to(lum.dtype)[:, None]  # the column before the image sums to 0
        dist = lum.new_empty(b, len(gy), len(gx), n, n)  # written in place: a list and a cat held it twice
        for j, dy in enumerate(range(-r, r + 1)):
            rows = lp[:, 0, r + dy:r + dy + h].unfold(-1, w, 1)  # [B, h, n, w]: all column shifts of this row shift
            torch.sub(lum[:, 0, :, None, :], rows, out=diff).square_()
            torch.cumsum(diff, 1, out=cs[:, 1:])
            cw = (cs[:, gy + p] - cs[:, gy]).cumsum_(-1)  # [B, Ly, n, w]
            d = (cw[..., x1] - cw[..., x0] * first.T).transpose(2, 3)  # [B, Ly, Lx, n]
            ok = ((gy + dy >= 0) & (gy + dy < hp))[:, None, None] & ok_x[None]
            dist[:, :, :, j] = d.masked_fill_(~ok[None], float("inf"))
        dist = dist.view(b, -1, n * n)  # [B, L, n*n]
        dist[..., r * n + r] = -1.0  # the reference leads its group even where a flat patch ties with others
        best = dist.topk(k, dim=-1, largest=False, sorted=True).indices
        ry, rx = torch.meshgrid(gy, gx, indexing="ij")
        return ry.flatten()[None, :, None] + best // n - r, rx.flatten()[None, :, None] + best % n - r

    def _grouped(self, v: Tensor, lum: Tensor, sigma: float, pilot: Tensor | None, g: GroupedPass,
                 chunk: int = 256) -> Tensor:
        """One BM3D step on ``v [B,C,H,W]`` (opponent channels) with groups matched on ``lum``: hard thresholding
        without a ``pilot``, else Wiener shrinkage by the pilot's spectrum, in ``g``'s 2-D transform x Haar.

        Aggregation runs in the 2-D transform domain (the inverse 2-D transform and the Kaiser window are linear
        and per position, so they are applied once per patch position, not once per group member): 3x less CPU.
        """
        b, c, h, w = v.shape
        p, dev = g.patch, v.device
        hp, wp = h - p + 1, w - p + 1
        reach = min(hp, g.search + 1) * min(wp, g.search + 1)  # the fewest candidates any reference has
        kk = 2 ** int(math.log2(min(g.group, reach)))
        gy, gx = _grid(hp, g.stride, dev), _grid(wp, g.stride, dev)
        my, mx = self._match(lum, gy, gx, p, g.search, kk)
        flat = my * wp + mx  # [B, L, K] patch index in the unfold order
        a, syn, win = (t.to(dev) for t in _transforms(p, g.transform, g.kaiser))
        kg = haar_matrix(kk).to(dev)
        thr, noise = self.profile.threshold * sigma, self.profile.mu2 * sigma ** 2
        out = torch.empty_like(v)
        for i in range(b):
            coef = (a @ F.unfold(v[i][:, None], p)).transpose(1, 2)  # [C, N, p*p], N = hp*wp
            ref = None if pilot is None else (a @ F.unfold(pilot[i][:, None], p)).transpose(1, 2)
            acc = torch.zeros_like(coef)
            wsum = torch.zeros(c, hp * wp, device=dev)
            for lo in range(0, flat.shape[1], chunk):  # small blocks stay in cache: 1.3x faster than 1024 at once
                fl = flat[i, lo:lo + chunk]
                t = kg @ coef[:, fl]  # [C, L, K, p*p]; in place from here: fresh large buffers cost page faults
                if ref is None:
                    keep = t.abs() > thr
                    keep[..., 0, 0] = True  # the group mean is never thresholded
                    t.mul_(keep)
                    wgt = keep.sum(dim=(2, 3), dtype=t.dtype).reciprocal_()  # [C, L]: per channel, as CBM3D
                else:
                    shrink = (kg @ ref[:, fl]).square_()
                    shrink.div_(shrink + noise)
                    t.mul_(shrink)
                    wgt = shrink.square_().sum(dim=(2, 3)).clamp_min_(1e-3).reciprocal_()
                idx = fl.flatten()
                t.mul_(wgt[:, :, None, None])
                acc.index_add_(1, idx, (kg.T @ t).reshape(c, -1, p * p))
                wsum.index_add_(1, idx, wgt[:, :, None].expand(-1, -1, kk).reshape(c, -1))
            num = F.fold(((acc @ syn.T) * win).transpose(1, 2), (h, w), p)
            den = F.fold(wsum[:, None, :] * win[None, :, None], (h, w), p)
            out[i] = (num / den.clamp_min(1e-12))[:, 0]  # every pixel lies in a reference patch of the grid
        return out


# ----------------------------------------------------------------------------------------------- diffusion


class DiffusionDenoiser(Denoiser):
    """A ComfyUI diffusion model as an x0 predictor at a pixel noise level, by duck typing only.

    ``model``: a ComfyUI ``ModelPatcher`` (its ``.model`` is the ``BaseModel``) or the ``BaseModel`` itself: it
    needs ``model_sampling`` (``noise_scaling``, ``sigma_min``, ``sigma_max``), ``apply_model(x, sigma, **conds)``
    (which returns the denoised latent), ``process_latent_in/out`` and optionally ``extra_conds``.
    ``vae``: ``encode(pixels [B,H,W,C]) -> latent`` and ``decode(latent) -> [B,H,W,C]``.
    ``conditioning``: a ComfyUI ``CONDITIONING`` (``[[tensor, dict], ...]``; first entry used) or None.
    ``sigma_scale`` maps pixel-space noise std (0..1 units) to the model's latent sigma: pixels span 2 units in
    the VAE's [-1, 1] range and SD-family latents have about unit variance, so pixel sigma * 4 is a close match.
    ``predict_x0(noisy_latent, model_sigma) -> x0 latent``: the host's own sampling path (inside ComfyUI, the
    guider's model call, so the MODEL's patches, wrappers, LoRAs and ControlNets apply). Without it the model's
    ``apply_model`` is called directly with conditioning built here (the host-free path the unit tests use).
    """

    wants_clean_input = True
    note = "prior: diffusion MODEL"

    def __init__(self, model: Any, vae: Any, conditioning: Any = None, sigma_scale: float = 4.0,
                 predict_x0: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        inner = getattr(model, "model", model)
        for member in ("model_sampling", "apply_model", "process_latent_in", "process_latent_out"):
            if not hasattr(inner, member):
                raise LitError(f"this MODEL has no '{member}'; it is not a ComfyUI diffusion model.",
                               input_name="model", fix="connect the MODEL output of a checkpoint loader.")
        for member in ("encode", "decode"):
            if not hasattr(vae, member):
                raise LitError(f"this VAE has no '{member}'.", input_name="vae", fix="connect a VAE.")
        self.model, self.inner, self.vae = model, inner, vae
        self.conditioning, self.sigma_scale = conditioning, float(sigma_scale)
        self.predict_x0 = predict_x0
        ms = inner.model_sampling
        zero = torch.zeros(1, 1, 1, 1)
        # flow (CONST) models interpolate: noise_scaling(s, 0, 1) = 1 - s; EPS/V models add: = 1
        self.flow = abs(float(ms.noise_scaling(torch.tensor([0.5]), zero, torch.ones(1, 1, 1, 1)).flatten()[0])
                        - 0.5) < 1e-3

    def model_sigma(self, sigma: Tensor) -> Tensor:
        s = sigma * self.sigma_scale
        if self.flow:
            s = s / (1 + s)  # the flow time with the same signal-to-noise ratio
        ms = self.inner.model_sampling
        lo, hi = float(getattr(ms, "sigma_min", 0.0)), float(getattr(ms, "sigma_max", 1e4))
        return s.clamp(lo, hi)

    def _conds(self, noisy: Tensor, latent: Tensor) -> dict[str, Any]:
        if self.conditioning is None:
            return {}
        try:
            cond, opts = self.conditioning[0][0], dict(self.conditioning[0][1])
        except (TypeError, IndexError, KeyError) as err:
            raise LitError("the conditioning is not a ComfyUI CONDITIONING.", input_name="conditioning") from err
        b, dev = noisy.shape[0], noisy.device
        cond = cond.to(dev)
        if not hasattr(self.inner, "extra_conds"):
            return {"c_crossattn": cond.expand(b, *cond.shape[1:])}
        extra = self.inner.extra_conds(cross_attn=cond, device=dev, noise=noisy, latent_image=latent,
                                       width=latent.shape[-1] * 8, height=latent.shape[-2] * 8, **opts)
        out = {}
        for key, value in extra.items():
            if hasattr(value, "process_cond"):
                value = value.process_cond(batch_size=b, device=dev, area=None)
            out[key] = getattr(value, "cond", value)
        return out

    def encode(self, x: Tensor) -> Tensor:
        """``x`` [B,C,H,W] in 0..1 -> the VAE's latent (not yet ``process_latent_in``)."""
        h, w = x.shape[-2], x.shape[-1]
        # VAEs downsample by 8: pad (edge-replicated) to a multiple, crop after decoding
        pixels = F.pad(x.clamp(0, 1), (0, -w % 8, 0, -h % 8), mode="replicate").permute(0, 2, 3, 1)
        return self.vae.encode(pixels[..., :3])

    def __call__(self, x: Tensor, sigma: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        s = sigma_vec(sigma, b, x.device)
        latent = self.inner.process_latent_in(self.encode(x))
        # ComfyUI's VAE hands latents back on its output device; the model runs on its load device
        dev = getattr(self.model, "load_device", None) or latent.device
        latent = latent.to(dev)
        ms_sigma = self.model_sigma(s.to(dev))
        noise = torch.randn(latent.shape, generator=generator, device="cpu").to(dev, latent.dtype)
        noisy = self.inner.model_sampling.noise_scaling(ms_sigma, noise, latent)
        if self.predict_x0 is not None:
            den = self.predict_x0(noisy, ms_sigma)
        else:
            den = self.inner.apply_model(noisy, ms_sigma, **self._conds(noisy, latent))
        img = self.vae.decode(self.inner.process_latent_out(den))
        if img.ndim == 5:  # video VAEs return [B,T,H,W,C]
            img = img[:, 0]
        img = img.permute(0, 3, 1, 2).to(x.device, torch.float32)[..., :h, :w]
        if img.shape[-2:] != x.shape[-2:]:
            img = F.interpolate(img, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return img
