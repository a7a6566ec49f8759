"""No-reference auto-grade: white balance, levels and exposure estimated from the image's own statistics.

This is the starting point of every enhancement (with or without a LiT model), built from the same principles as
Zero-DCE's no-reference objectives, but solved in closed form on global, bounded parameters instead of learned:

- colour constancy (Zero-DCE's L_col asks the channels to agree): white patch, the robust white point of each
  channel; when one channel's lies far below the others' (further than in nearly any correct photo, so a photo's
  own warm or cool mood is kept), every channel's white point is aligned;
- levels: a robust white point far below 1 (underexposed) or a black point far above 0 (flattened, hazy) is
  stretched back to 0..1 (a correct photo's robust white point is ~1 and black point ~0, so it is left alone);
- exposure control (Zero-DCE's L_exp pulls local means toward a target level), in a perceptual (log) space: a
  tone curve x ** e scales the mean log-luminance by e, so the ratio of a photo's mean log-luminance to that of
  typical photos *is* the midtone (gamma) exponent that undoes a darkening curve; it is applied only when the photo
  is darker than nearly all correctly exposed photos; black and white stay put;
- spatial consistency and illumination smoothness (L_spa, L_tvA) hold by construction: every auto term is global.

Every threshold is in :mod:`.spec`. Inside all dead zones the grade is exactly the identity, which is why an
all-white image stays white and a clean, well-exposed photo comes back unchanged.
"""

from __future__ import annotations

import math

import torch

from . import spec
from .ops import LUMA, EnhancementParams, luminance


def _ramp(v: float, start: float, end: float) -> float:
    """0 at ``start``, 1 at ``end`` (either order), linear between, clamped."""
    if start == end:
        return float(v >= end)
    return min(max((v - start) / (end - start), 0.0), 1.0)


def _subsample(x: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """``[3,H,W]`` -> ``[3,N]`` strided pixels (not averaged: extremes survive)."""
    h, w = x.shape[-2:]
    stride = 1
    while (h // stride) * (w // stride) > max_pixels:
        stride += 1
    return x[:, ::stride, ::stride].reshape(3, -1)


def _quantile(v: torch.Tensor, q: float) -> float:
    v = v.reshape(-1)
    k = min(max(int(round(q * (v.numel() - 1))), 0), v.numel() - 1)
    return float(v.kthvalue(k + 1).values)


def _gamma_for_mean(y: torch.Tensor, target: float) -> float:
    """The gamma parameter g (exponent 2**-g, bounded) that brings mean(y ** 2**-g) to ``target`` (bisection)."""
    lo, hi = spec.GRADE_PARAMS["gamma"].low, spec.GRADE_PARAMS["gamma"].high
    y = y.clamp(0.0, 1.0).reshape(-1)
    if y.numel() > 1 << 16:  # the mean of a strided 64k-pixel sample is exact to ~1e-3: plenty for a gamma
        y = y[:: y.numel() // (1 << 16)]
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if float(y.pow(2.0 ** -mid).mean()) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def exposure_evidence(lum: torch.Tensor) -> float:
    """Luminance samples -> g = log2(mean(log Y) / PRIOR_MEAN_LOG): the midtone exponent that brings the photo's
    geometric-mean level to the typical one (> 0: darker than typical)."""
    mean_log = float(lum.clamp_min(spec.LOG_FLOOR).log().mean())
    return math.log2(mean_log / spec.PRIOR_MEAN_LOG) if mean_log < 0 else -3.0


def shadow_noise(x: torch.Tensor, black: torch.Tensor, scale: torch.Tensor, max_pixels: int = spec.STAT_PIXELS
                 ) -> tuple[float, int]:
    """Noise in the shadows of ``x`` ``[3,H,W]`` after levels (``(x - black) * scale`` per channel): the robust
    (median absolute) finest-scale Haar diagonal detail of each channel over 2x2 blocks darker than SHADOW_LEVEL
    (Donoho's estimator: for white noise of sigma it is sigma, and texture seldom reaches the median), and how many
    blocks it came from. Blocks are strided so at most ``max_pixels`` are read."""
    h, w = x.shape[-2:]
    step = 2
    while (h // step) * (w // step) * 4 > max_pixels:
        step += 2
    a, b = x[:, 0:h - 1:step, 0:w - 1:step], x[:, 0:h - 1:step, 1::step]
    c, d = x[:, 1::step, 0:w - 1:step], x[:, 1::step, 1::step]
    n_h, n_w = min(t.shape[1] for t in (a, b, c, d)), min(t.shape[2] for t in (a, b, c, d))
    a, b, c, d = (t[:, :n_h, :n_w] for t in (a, b, c, d))
    k = scale.view(3, 1, 1)
    hh = (a - b - c + d) * 0.5 * k
    level = ((a + b + c + d) * 0.25 - black.view(3, 1, 1)) * k
    lum = (level * level.new_tensor(LUMA).view(3, 1, 1)).sum(0)
    dark = lum < spec.SHADOW_LEVEL
    n = int(dark.sum())
    if n == 0:
        return 0.0, 0
    return float(hh[:, dark].abs().median()) / 0.6745, n


def shadow_limit(x: torch.Tensor, p: EnhancementParams) -> tuple[float, float]:
    """The noise-aware cap (stops) on the midtone lift's gain for one image ``[3,H,W]`` graded by ``p``, and the
    shadow noise it came from: K = SHADOW_NOISE_TARGET / noise, the noise including the 8-bit step (scaled by the
    levels' stretch), K within SHADOW_GAIN_RANGE."""
    black = p.black[0].float()
    scale = 2.0 ** float(p.exposure[0]) / (p.white[0].float() - black).clamp_min(0.2)
    sigma, n = shadow_noise(x.float(), black, scale)
    if n < 64:  # almost no shadows: nothing for the cap to protect
        return spec.GRADE_PARAMS["shadow_gain"].identity, sigma
    k = spec.SHADOW_NOISE_TARGET / max(sigma, 1e-6)
    k = min(max(k, spec.SHADOW_GAIN_RANGE[0]), spec.SHADOW_GAIN_RANGE[1])
    return math.log2(k), sigma


def auto_grade_one(x: torch.Tensor) -> tuple[EnhancementParams, dict[str, float]]:
    """One image ``[3,H,W]`` in 0..1 -> its auto-grade and the statistics it came from."""
    px = _subsample(x.float(), spec.STAT_PIXELS)
    p = EnhancementParams.identity(1)
    stats: dict[str, float] = {}
    if float(luminance(x[None].float()).std()) < spec.FLAT_STD:  # one colour: no statistics to act on
        stats["flat"] = 1.0
        return p, stats

    # levels, global: robust white and black points over all channels together (keeps the colour balance)
    hi = _quantile(px, 1.0 - spec.LEVEL_QUANTILE)
    lo = _quantile(px, spec.LEVEL_QUANTILE)
    stats["white_point"], stats["black_point"] = hi, lo
    amount = max(_ramp(hi, *spec.WHITE_GATE), _ramp(lo, *spec.BLACK_GATE))
    white = 1.0 + amount * (hi - 1.0)
    black = amount * lo
    wmin = spec.GRADE_PARAMS["white"].low
    if white < wmin:  # deeper than Levels can reach: the rest is exposure
        p.exposure[0] = min(max(math.log2(wmin / max(white, 1e-4)), spec.GRADE_PARAMS["exposure"].low),
                            spec.GRADE_PARAMS["exposure"].high)
        white = wmin
    black = min(black, white - 0.2)
    gain = 2.0 ** float(p.exposure[0])
    y = ((px - black) / (white - black) * gain).clamp(0.0, 1.0)

    # colour cast (white patch): when the lowest channel's white point is far below the brightest one's, align
    # every channel's white point (a cast is one error of the whole white balance, not of one channel)
    ch_white = [_quantile(y[c], 1.0 - spec.LEVEL_QUANTILE) for c in range(3)]
    top = max(max(ch_white), 1e-3)
    rel = [max(v / top, 0.3) for v in ch_white]
    stats["channel_white"] = ch_white
    # judged before the midtone lift. (Judging it after, as r ** e, spares a darkened warm photo a false cast but
    # misses real casts on dark photos: on Flickr8k copies, cast 46.94 -> 46.00 dB for gamma-2.2 25.60 -> 25.97.)
    cast = _ramp(min(rel), *spec.CHANNEL_WHITE_GATE)
    stats["cast"] = cast
    for c in range(3):
        wc = 1.0 + cast * (rel[c] - 1.0)
        # (x - black) / (white_c - black) * gain == ((x - black) / (white - black) * gain) / wc
        p.white[0, c] = black + (white - black) * wc
        p.black[0, c] = black
    y = (y / p.white.new_tensor([(float(p.white[0, c]) - black) / (white - black) for c in range(3)]).view(3, 1)
         ).clamp(0.0, 1.0)

    # exposure control: midtones toward the typical level, only when the photo is darker (or brighter) than
    # nearly every correctly exposed photo
    mean = float(y.mean())
    lum = (y * y.new_tensor(LUMA).view(3, 1)).sum(0)
    g = exposure_evidence(lum)
    stats["mean_level"], stats["exposure_evidence"] = mean, g
    dark = _ramp(g, *spec.DARK_GATE)
    if dark > 0:
        p.gamma[0] = dark * min(g, spec.GRADE_PARAMS["gamma"].high)
    elif mean > spec.BRIGHT_MEAN[0]:
        p.gamma[0] = _ramp(mean, *spec.BRIGHT_MEAN) * _gamma_for_mean(y, spec.BRIGHT_MEAN[0])
    if float(p.gamma[0]) > 0:  # a lift: cap its shadow gain where it would amplify the shadows' noise
        p.shadow_gain[0], stats["shadow_noise"] = shadow_limit(x, p)
    return p, stats


def auto_grade(x: torch.Tensor) -> tuple[EnhancementParams, list[dict[str, float]]]:
    """``[B,3,H,W]`` in 0..1 -> one auto-grade per image, and the statistics behind each."""
    grades, stats = [], []
    for i in range(x.shape[0]):
        g, s = auto_grade_one(x[i])
        grades.append(g)
        stats.append(s)
    return EnhancementParams.cat(grades), stats


def mean_level(x: torch.Tensor) -> torch.Tensor:
    """Mean luminance per image (for reports)."""
    return luminance(x).mean((1, 2, 3))
