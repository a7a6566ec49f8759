"""Which attention implementation the towers use: our Triton kernel on CUDA, PyTorch's SDPA elsewhere."""

from __future__ import annotations

import torch


def attention_for(device: torch.device | str) -> str:
    """The transformers ``attn_implementation`` for towers on ``device``."""
    try:
        from .dispatch import preferred_attn_implementation
    except ImportError:  # kernel module unavailable: SDPA is always correct
        return "sdpa"
    return preferred_attn_implementation(torch.device(device))
