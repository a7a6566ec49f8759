"""The orthonormal DCT-II matrix, built once per size (the JPEG model and the DCT denoiser share it)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=16)
def _dct(n: int) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


def dct_matrix(n: int = 8) -> Tensor:
    """``D [n, n]`` with ``D @ x`` the orthonormal 1-D DCT-II of ``x`` (``D.T`` inverts it). A fresh copy."""
    return _dct(int(n)).clone()
