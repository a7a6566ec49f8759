"""The noise level of a photo, read from its flattest 8x8 blocks (what the Restoration Sampler uses at noise 0).

White noise spreads evenly over every DCT coefficient, so the finest band (u+v = 8..14) measures it with almost no
texture in the way. Camera noise is not white: demosaicing, the camera's own noise reduction and JPEG leave it
spatially correlated, most of it in the coarse AC band (u+v = 2..3), and the finest band then reads it 2-5x low
(scikit-image's MAD estimator reads the finest wavelet band, and has the same blind spot). A denoiser conditioned
on one number wants about the coarse band's level for such noise (measured with FFDNet, ``bench/README.md``).

For each band the blocks whose *other* AC coefficients are the smallest are taken as flat (Ponomarenko et al.'s
idea: noise in different coefficients is independent, so selecting on the others does not bias the band, while
texture rarely sits in one band alone); the band's median energy in them, corrected for the median of a chi-square,
is its noise variance. Blocks touching clipped pixels are left out: clipping removes noise (where nearly every
block clips, under very strong noise, the least clipped ones are read). When the coarse band
reads clearly above the fine one the noise is taken as correlated and the level moves to the coarse band's; a
textured photo with white noise reads up to ~1.25x higher there, so below that ratio the fine band stands.

The limit: a photo (or a small crop) with texture everywhere has no flat block, both bands read the texture, and the
level comes out high (a 192 px crop of CBSD68's 167083, foliage edge to edge, reads 36/255 for grain a denoiser
handles best at 12; the whole photo reads 15). The Restoration Sampler's report states the level it read for that
reason, and ``noise_sigma`` overrides it.

Noise that grows with brightness (shot noise, as in RNI15's Pattern2: ~8/255 in the shadows, ~44 in the
highlights) would be read at the flattest areas' level, often the dark ones, and a one-number denoiser would leave
the bright areas grainy. So the fine band is also read per brightness bin and averaged over the photo; that reading
is taken once it is clearly above the flattest blocks'. The coarse band is not: read per bin, it took texture for
noise on clean photos. :func:`signal_dependence` fits a line to those per-bin readings, so that a one-step denoise
can make such noise even (the Anscombe transform) instead of treating it as one level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .dct import dct_matrix

FINE_BAND = (8, 14)  # u + v of the 8x8 DCT coefficients
COARSE_BAND = (2, 3)
FLAT_FRACTION = 0.02  # of the blocks, the flattest in the other coefficients
MIN_BLOCKS = 16
MAX_BLOCKS = 1 << 17  # per channel; large photos are sampled on a coarser grid (the estimate needs no more)
CLIP_MARGIN = 1.5 / 255  # pixels this close to 0 or 1 count as clipped
LEAST_CLIPPED = 4 * MIN_BLOCKS  # blocks kept where (nearly) all clip
BRIGHTNESS_BINS = 6  # the fine band is also read per brightness bin (noise that grows with brightness)
# per-bin / flattest-blocks reading (std): white noise reads 0.95-1.07, shot noise 1.2-1.5 (CBSD68 crops)
BRIGHTER_FROM, BRIGHTER_AT = 1.1, 1.25
# coarse / fine ratio: white noise on textured photos reads up to ~1.25 (CBSD68), correlated noise 1.5-13
CORRELATED_FROM, CORRELATED_AT = 1.25, 1.6
# Noise that grows with brightness, as a map: the fitted std at the photo's bright end (90% of its blocks darker)
# over its dark end (10%). White noise reads up to ~1.3 (texture, clipping), shot noise 1.9-4 at gain .02 (6 CBSD68
# photos); a network prior follows the brightness fully from 2.0
SHOT_FROM, SHOT_AT = 1.5, 2.0
SHOT_MAX_CLIPPED = 0.25  # bins with more clipped blocks are left out: clipping hides noise and would read a slope
# bins whose coarse band reads this far above the fine one hold texture, not noise (shot noise bins read 0.9-1.5,
# foliage 1.7-2.1 on CBSD68's 167083); and correlated noise as a whole (camera grain) is left to one level
SHOT_TEXTURE = 1.6
# and the part that grows must be noise worth following: its std at the photo's mean brightness (channel mean)
# above 3/255 (clean CBSD68 photos' own grain fits a line too, at ~1/255; shot noise at gain .005 reads ~6)
SHOT_MIN = 3 / 255

_UV = (torch.arange(8)[:, None] + torch.arange(8)[None, :]).flatten()


def _band_mask(band: tuple[int, int]) -> Tensor:
    return (_UV >= band[0]) & (_UV <= band[1])


def _chi2_median_over_mean(k: int) -> float:
    """median / mean of a chi-square with ``k`` degrees of freedom (Wilson-Hilferty)."""
    return (1 - 2 / (9 * k)) ** 3


def _stride(h: int, w: int) -> int:
    s = 4
    while ((h - 8) // s + 1) * ((w - 8) // s + 1) > MAX_BLOCKS:
        s += 1
    return s


def band_sigmas(y: Tensor) -> Tensor:
    """``[B, 2]``: the noise std (0..1 units) each image shows in the fine and the coarse DCT band, mean over
    channels. ``y`` is ``[B, C, H, W]`` in 0..1, at least 8x8."""
    b, c, h, w = y.shape
    k2 = torch.kron(dct_matrix(8), dct_matrix(8)).to(y.device)  # row u*8+v: the 2-D basis function (u, v)
    ac = (_UV > 0).to(y.device)
    bands = [_band_mask(FINE_BAND).to(y.device), _band_mask(COARSE_BAND).to(y.device)]
    stride = _stride(h, w)
    out = torch.zeros(b, c, len(bands), device=y.device, dtype=torch.float32)
    for i in range(b):
        for ch in range(c):
            p = F.unfold(y[i:i + 1, ch:ch + 1].float(), 8, stride=stride)[0]  # [64, blocks]
            brightness = p.mean(0)  # of every block, clipped ones too: how much of the photo each level covers
            # Only data that stays in 0..1 can have been clipped; leaving out blocks of unclipped data that merely
            # reach a bound would select blocks whose noise happened to be small, and read it low.
            if p.min() >= 0 and p.max() <= 1:
                clipped = ((p <= CLIP_MARGIN) | (p >= 1 - CLIP_MARGIN)).sum(0)
                # noise so strong that nearly every block clips: the least clipped blocks (keeping every block
                # read 80/255 noise as 45)
                keep = max(LEAST_CLIPPED, int(FLAT_FRACTION * clipped.numel()))
                if int((clipped == 0).sum()) >= keep:
                    p = p[:, clipped == 0]
                elif clipped.numel() > keep:
                    p = p[:, clipped.topk(keep, largest=False).indices]
            energy = (k2 @ p) ** 2
            for j, band in enumerate(bands):
                others, inband, k = energy[ac & ~band].sum(0), energy[band].sum(0), int(band.sum())
                var = _flat_variance(inband, others, k)
                if j == 0:  # taken once clearly above the flattest blocks' (the max of two reads would bias up)
                    binned = _variance_by_brightness(inband, others, k, p.mean(0), brightness)
                    ratio = (binned / var.clamp_min(1e-12)).sqrt()
                    var = _blend_up(var, binned, ratio, BRIGHTER_FROM, BRIGHTER_AT)
                out[i, ch, j] = var.sqrt()
    return out.mean(dim=1)


def _flat_variance(inband: Tensor, others: Tensor, k: int) -> Tensor:
    """The band's noise variance per coefficient in the blocks flattest in the other coefficients."""
    n = min(others.numel(), max(MIN_BLOCKS, int(FLAT_FRACTION * others.numel())))
    flat = others.topk(n, largest=False).indices
    return inband[flat].median() / k / _chi2_median_over_mean(k)


def _variance_by_brightness(inband: Tensor, others: Tensor, k: int, level: Tensor, photo_level: Tensor) -> Tensor:
    """The flat-block variance read in each of ``BRIGHTNESS_BINS`` brightness bins (quantiles of the kept blocks'
    mean ``level``), averaged with each bin's share of the photo (``photo_level``: every block's mean). Noise that
    grows with brightness (shot noise) is then read at the photo's mean level, not at its flattest (often darkest)
    areas'; only for the fine band, where little texture gets in (read per bin, the coarse band read texture as
    noise on clean photos)."""
    bins = min(BRIGHTNESS_BINS, level.numel() // (4 * MIN_BLOCKS))
    if bins < 2:
        return _flat_variance(inband, others, k)
    edges = torch.quantile(level, torch.linspace(0, 1, bins + 1, device=level.device, dtype=level.dtype)[1:-1])
    which = torch.bucketize(level, edges)
    share = torch.bincount(torch.bucketize(photo_level, edges), minlength=bins).float()
    var, total = inband.new_zeros(()), share.new_zeros(())
    for q in range(bins):
        sel = which == q
        if int(sel.sum()) >= MIN_BLOCKS:  # tied levels (a flat synthetic image) leave bins empty
            var, total = var + share[q] * _flat_variance(inband[sel], others[sel], k), total + share[q]
    return var / total if total > 0 else _flat_variance(inband, others, k)


def _blend_up(base: Tensor, higher: Tensor, ratio: Tensor, start: float, full: float) -> Tensor:
    """``base`` moved toward a ``higher`` reading as ``ratio`` goes from ``start`` to ``full`` (never down, never
    a jump)."""
    return base + ((ratio - start) / (full - start)).clamp(0, 1) * (higher - base).clamp_min(0)


def combine(fine: Tensor, coarse: Tensor) -> Tensor:
    """The level a one-number denoiser should get: the fine band's for white noise, the coarse band's once the
    noise is clearly correlated, a blend in between (so the estimate never jumps)."""
    return _blend_up(fine, coarse, coarse / fine.clamp_min(1e-6), CORRELATED_FROM, CORRELATED_AT)


def estimate_sigma(y: Tensor) -> Tensor:
    """The noise std ``[B]`` (0..1 units) of each image in ``[B, C, H, W]`` (0..1), white or camera-correlated."""
    s = band_sigmas(y)
    return combine(s[:, 0], s[:, 1]).clamp_min(1e-4)


def signal_dependence(y: Tensor) -> Tensor:
    """``[B, 3]``: the noise variance of each image's channel mean as ``a + g * brightness`` (``a``, ``g`` in 0..1
    units) and how sure the read is (0: one level fits, 1: it clearly grows with brightness, ramped between).

    The fine band is read in brightness bins of the flat blocks (as :func:`band_sigmas` does) and a line is fitted
    to the bins' variances. A photo of one brightness, or too few unclipped bins, reads (0, 0, 0)."""
    b, _, h, w = y.shape
    k2 = torch.kron(dct_matrix(8), dct_matrix(8)).to(y.device)
    band, coarse = _band_mask(FINE_BAND).to(y.device), _band_mask(COARSE_BAND).to(y.device)
    ac = (_UV > 0).to(y.device)
    k, kc = int(band.sum()), int(coarse.sum())
    correlated = is_correlated(y)
    out = torch.zeros(b, 3, device=y.device)
    for i in range(b):
        if bool(correlated[i]):
            continue
        p = F.unfold(y[i:i + 1].float().mean(dim=1, keepdim=True), 8, stride=_stride(h, w))[0]
        level = p.mean(0)
        clipped = ((p <= CLIP_MARGIN) | (p >= 1 - CLIP_MARGIN)).any(0)
        bins = min(BRIGHTNESS_BINS, level.numel() // (4 * MIN_BLOCKS))
        if bins < 3:
            continue
        edges = torch.quantile(level, torch.linspace(0, 1, bins + 1, device=y.device)[1:-1])
        which = torch.bucketize(level, edges)
        energy = (k2 @ p) ** 2
        inband, others = energy[band].sum(0), energy[ac & ~band].sum(0)
        in_coarse, others_coarse = energy[coarse].sum(0), energy[ac & ~coarse].sum(0)
        pts = []
        for q in range(bins):
            sel = which == q
            kept = sel & ~clipped
            if int(kept.sum()) < MIN_BLOCKS or float(kept.sum()) < (1 - SHOT_MAX_CLIPPED) * float(sel.sum()):
                continue
            var = float(_flat_variance(inband[kept], others[kept], k))
            if float(_flat_variance(in_coarse[kept], others_coarse[kept], kc)) <= SHOT_TEXTURE ** 2 * var:
                pts.append((float(level[kept].median()), var))
        if len(pts) < 3:
            continue
        m, v = torch.tensor(pts).T
        if float(m.max() - m.min()) < 0.1:
            continue
        g = float(((m - m.mean()) * (v - v.mean())).sum() / ((m - m.mean()) ** 2).sum())
        a = float(v.mean()) - g * float(m.mean())
        if a < 0:  # no Gaussian floor left: a line through the origin
            a, g = 0.0, float((m * v).sum() / (m * m).sum())
        if g <= 0:
            continue
        if g * float(level.mean()) < SHOT_MIN ** 2:
            continue
        lo, hi = torch.quantile(level, torch.tensor([0.1, 0.9], device=y.device)).clamp_min(0.02).tolist()
        ratio = ((a + g * hi) / max(a + g * lo, 1e-12)) ** 0.5
        out[i] = torch.tensor([a, g, min(max((ratio - SHOT_FROM) / (SHOT_AT - SHOT_FROM), 0.0), 1.0)])
    return out


def is_correlated(y: Tensor) -> Tensor:
    """``[B]`` bool: the noise reads as correlated (camera grain, JPEG), not white."""
    s = band_sigmas(y)
    return s[:, 1] / s[:, 0].clamp_min(1e-6) > CORRELATED_FROM
