"""No-reference auto-grade: white balance, levels and exposure estimated from the image's own statistics.

This is the starting point of every enhancement (with or without a LiT model), built from the same principles as
Zero-DCE's no-reference objectives, but solved in closed form on global, bounded parameters instead of learned:

- colour constancy (Zero-DCE's L_col asks the channel means to agree): the illuminant is estimated by a
  Minkowski "shades of grey" norm of each channel over unclipped pixels, and only the part of the cast above a
  dead zone is removed, so a photo's own warm or cool mood is kept;
- levels: a robust white point well below 1 (or a black point well above 0) means the photo was underexposed or
  flattened; the tonal range is stretched back (a correct photo's robust white point is ~1, so it is left alone);
- exposure control (Zero-DCE's L_exp pulls local means toward a target level): a photo whose mean level lies
  outside a dead zone around mid-grey gets the midtone (gamma) correction that brings its mean to the target;
  black and white stay put, so nothing clips;
- spatial consistency and illumination smoothness (L_spa, L_tvA) hold by construction: every auto term is global.

Every threshold is in :mod:`.spec`. Inside all dead zones the grade is exactly the identity, which is why an
all-white image stays white and a clean, well-exposed photo comes back unchanged.
"""

from __future__ import annotations

import math

import torch

from . import spec
from .ops import EnhancementParams, luminance


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
    amount = _ramp((1.0 - hi) + lo, *spec.RANGE_DEFICIT_GATE)
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

    # levels, per channel (white patch): a channel left well below white is a cast; stretch it back
    ch_white = [_quantile(y[c], 1.0 - spec.LEVEL_QUANTILE) for c in range(3)]
    top = max(max(ch_white), 1e-3)
    stats["channel_white"] = ch_white
    for c in range(3):
        rel = ch_white[c] / top
        wc = 1.0 + _ramp(rel, *spec.CHANNEL_WHITE_GATE) * (max(rel, 0.3) - 1.0)
        # (x - black) / (white_c - black) * gain == ((x - black) / (white - black) * gain) / wc
        p.white[0, c] = black + (white - black) * wc
        p.black[0, c] = black
    y = (y / p.white.new_tensor([(float(p.white[0, c]) - black) / (white - black) for c in range(3)]).view(3, 1)
         ).clamp(0.0, 1.0)

    # exposure control: midtones toward the target mean, outside the dead zone only
    mean = float(y.mean())
    stats["mean_level"] = mean
    lum = (y * y.new_tensor((0.299, 0.587, 0.114)).view(3, 1)).sum(0)
    shadows = float((lum < 0.1).float().mean())
    stats["shadow_fraction"] = shadows
    dark = max(_ramp(mean, spec.DARK_MEAN[1], spec.DARK_MEAN[0]), _ramp(shadows, *spec.DARK_FRACTION))
    amount = dark if mean < spec.TARGET_MEAN else _ramp(mean, *spec.BRIGHT_MEAN)
    if amount > 0:
        target = spec.TARGET_MEAN if mean < spec.TARGET_MEAN else spec.BRIGHT_MEAN[0]
        p.gamma[0] = amount * _gamma_for_mean(y, target)
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
