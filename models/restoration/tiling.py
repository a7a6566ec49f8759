"""Run a local image operator over overlapping tiles and blend them, so full resolution fits in memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return starts


def _window(n: int, overlap: int, device: torch.device) -> Tensor:
    w = torch.ones(n, device=device)
    if overlap > 0 and n > 2 * overlap:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        w[:overlap], w[n - overlap:] = ramp, ramp.flip(0)
    return w


def tiled(fn: Callable[[Tensor], Tensor], x: Tensor, tile: int = 256, overlap: int = 32) -> Tensor:
    """``fn`` applied to ``x [B,C,H,W]`` tile by tile (``tile`` px, ``overlap`` px shared), linearly blended.

    ``fn`` must map a ``[B,C,h,w]`` tile to the same shape. Images no larger than one tile go through in one call.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    overlap = min(overlap, tile // 4)
    step = tile - overlap
    out = torch.zeros_like(x)
    weight = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
    for top in _starts(h, tile, step):
        for left in _starts(w, tile, step):
            th, tw = min(tile, h), min(tile, w)
            patch = fn(x[..., top:top + th, left:left + tw])
            win = (_window(th, overlap if h > tile else 0, x.device)[:, None]
                   * _window(tw, overlap if w > tile else 0, x.device)[None, :]).to(x.dtype)
            out[..., top:top + th, left:left + tw] += patch * win
            weight[..., top:top + th, left:left + tw] += win
    return out / weight.clamp_min(1e-8)
