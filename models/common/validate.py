"""Checks at the boundary where tensors enter the engine: shape, emptiness and finiteness, with clear errors."""

from __future__ import annotations

import torch

from .errors import LitError


def check_finite(t: torch.Tensor, *, input_name: str, what: str = "values", fix: str | None = None) -> torch.Tensor:
    """Refuse NaN or infinite entries, saying how many there are."""
    if t.is_floating_point() or t.is_complex():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise LitError(f"{bad} of the {t.numel()} {what} are NaN or infinite.", input_name=input_name,
                           fix=fix or "check what feeds this input; an upstream node produced non-finite values.")
    return t


def check_image_batch(images, *, input_name: str = "image", channels: tuple[int, ...] = (1, 3, 4),
                      min_size: int = 1) -> torch.Tensor:
    """A ComfyUI ``IMAGE`` ``[B,H,W,C]`` (``[H,W,C]`` is taken as one image) that is non-empty and finite."""
    if images is None:  # an optional input left unconnected, or a node that output nothing
        raise LitError("nothing is connected.", input_name=input_name, fix="connect an IMAGE output (e.g. Load Image).")
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or images.shape[-1] not in channels:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        want = "/".join(str(c) for c in channels)
        raise LitError(f"expected an IMAGE batch [B,H,W,C] with C = {want}, got {shape}.", input_name=input_name,
                       fix="connect an IMAGE output (e.g. Load Image).")
    images = images if images.dim() == 4 else images.unsqueeze(0)
    if images.shape[0] == 0:
        raise LitError("the image batch is empty.", input_name=input_name,
                       fix="check the node that makes the batch (an empty folder or a filter that kept nothing).")
    if min(images.shape[1], images.shape[2]) < min_size:
        raise LitError(f"the image is too small ({images.shape[1]}x{images.shape[2]}); at least "
                       f"{min_size}x{min_size} is needed.", input_name=input_name, fix="use a larger image.")
    return check_finite(images, input_name=input_name, what="pixel values")
