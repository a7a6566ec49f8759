"""The generalised Anscombe transform: Poisson-Gaussian noise (variance ``sigma^2 + gain * x``) made Gaussian of unit
variance, so a prior that takes one noise level per photo (the built-in one, a blind network) can remove shot noise.

The inverse is Makitalo and Foi's closed-form approximation of the exact unbiased inverse (IEEE TIP 20(1), 2011),
with the Gaussian part's variance taken off: from one photon per pixel up it reads the mean brightness closer than
the plain algebraic inverse, which is biased in the shadows (tested by simulation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

_R = math.sqrt(1.5)


def _bc(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def forward(y: Tensor, sigma2: Tensor, gain: Tensor) -> Tensor:
    """``y [B,C,H,W]`` with noise variance ``sigma2 + gain * x`` (each ``[B]``, gain > 0) -> unit-variance noise."""
    g = _bc(gain)
    return 2 * (y / g + 3 / 8 + _bc(sigma2) / g ** 2).clamp_min(0).sqrt()


def inverse(d: Tensor, sigma2: Tensor, gain: Tensor) -> Tensor:
    """The unbiased inverse of :func:`forward` (closed-form approximation), back in the image's units."""
    g = _bc(gain)
    d = d.clamp_min(0.8)  # below, the approximation turns; nothing real lies there
    return g * (d ** 2 / 4 + _R / 4 / d - 11 / 8 / d ** 2 + 5 * _R / 8 / d ** 3 - 1 / 8 - _bc(sigma2) / g ** 2)


def denoise(denoiser: Callable[[Tensor, Tensor], Tensor], y: Tensor, sigma2: Tensor, gain: Tensor) -> Tensor:
    """``denoiser(x in 0..1, sigma [B])`` applied in the transform's domain, stretched onto 0..1 (noise std
    1/span): with little shot noise the transform is nearly an offset, and the photo would sit in a sliver near 1."""
    d = forward(y, sigma2, gain)
    lo, hi = d.flatten(1).amin(dim=1), d.flatten(1).amax(dim=1)
    span = (hi - lo).clamp_min(1e-6)
    out = denoiser((d - _bc(lo)) / _bc(span), 1 / span)
    return inverse(out * _bc(span) + _bc(lo), sigma2, gain)
