"""Short, stable identifiers for towers: adapters and caches remember which tower they belong to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

_SAMPLES_PER_TENSOR = 64


def _tensor_digest(t: torch.Tensor) -> bytes:
    # Hashing every weight of a 2 GB tower would take seconds; a strided sample plus the sum tells towers apart
    # just as well (two different trainings never agree on all of them) at a tiny cost.
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return b"empty"
    idx = torch.linspace(0, n - 1, steps=min(n, _SAMPLES_PER_TENSOR), device=flat.device).long()
    sample = flat[idx].to(torch.float64).cpu()
    total = flat.to(torch.float64).sum().cpu()
    return sample.numpy().tobytes() + total.numpy().tobytes()


def fingerprint_state(state: Mapping[str, torch.Tensor], extra: Mapping[str, Any] | None = None) -> str:
    """A 16-hex-digit fingerprint of named tensors plus plain settings (architecture, preprocessing)."""
    h = hashlib.sha256()
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name]
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(_tensor_digest(t))
    return h.hexdigest()[:16]

