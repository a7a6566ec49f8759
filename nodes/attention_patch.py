"""LiT Triton Attention (patch model): route a diffusion MODEL's attention through our Triton kernel.

ComfyUI's attention functions are wrapped so that ``transformer_options["optimized_attention_override"]``, when
set, is called instead as ``override(original_func, q, k, v, heads, mask=None, attn_precision=None,
skip_reshape=False, skip_output_reshape=False, **kwargs)``. q/k/v arrive ``[B, N, heads*d]`` (``[B, heads, N, d]``
with ``skip_reshape``), the result leaves ``[B, N, heads*d]`` (``[B, heads, N, d]`` with
``skip_output_reshape``). Shapes, dtypes or devices the kernel does not take go to ``original_func`` for that
call, so patching never breaks a model; under ``auto`` the per-GPU calibration (``models/attention/calibrate.py``)
decides per shape class whether the kernel or ComfyUI's attention serves it. The same kernel is also registered
in ComfyUI's attention registry as ``"lit_triton"`` when the host has one.

Core's CLIP text and vision encoders call their attention without ``transformer_options``, so the hook never
sees them; connected to the node, they are routed by object patches on their own patchers (``nodes/host.py``,
section "attention"), which ComfyUI applies while that clone is loaded and removes afterwards.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..models.attention import triton_kernel as ta
from ..models.attention.dispatch import kernel_attention, requested_backend
from ..models.common.errors import LitError
from .host import CATEGORY, clone_encoder, register_attention_function, route_encoder_attention, with_node_errors

log = logging.getLogger(__name__)
REGISTRY_NAME = "lit_triton"
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


def _split_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, skip_reshape: bool):
    """[B, N, heads*d] -> [B, N, heads, d] views (layout 'bnhd'), or the [B, heads, N, d] tensors as they are."""
    if skip_reshape:
        return q, k, v, "bhnd"
    b = q.shape[0]
    d = q.shape[-1] // heads
    return (q.view(b, q.shape[1], heads, d), k.view(b, k.shape[1], heads, d), v.view(b, v.shape[1], heads, d),
            "bnhd")


def _mask_as_bias(mask: torch.Tensor | None, shape: tuple[int, int, int, int]) -> torch.Tensor | None:
    """ComfyUI's mask (2-D [N_q, N_k], 3-D [B, N_q, N_k] or 4-D; bool keep-mask or additive) as a 4-D bias."""
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    torch.broadcast_shapes(mask.shape, shape)  # raises for shapes we can't map; the caller falls back
    return mask


def _kernel_call(q, k, v, heads, mask, skip_reshape, skip_output_reshape) -> torch.Tensor | None:
    """Our kernel's result in ComfyUI's output convention, or ``None`` when this call should fall back."""
    if requested_backend() == "torch" or q.dim() != (4 if skip_reshape else 3):
        return None
    if not skip_reshape and (q.shape[-1] % heads or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]):
        return None
    qh, kh, vh, layout = _split_heads(q, k, v, heads, skip_reshape)
    views = (qh, kh, vh) if layout == "bhnd" else (qh.transpose(1, 2), kh.transpose(1, 2), vh.transpose(1, 2))
    if ta.supports(*views) is not None:
        return None
    b, h, n_q, d = views[0].shape
    try:
        bias = _mask_as_bias(mask, (b, h, n_q, views[1].shape[2]))
    except RuntimeError:
        return None
    if bias is not None and not (bias.dtype == torch.bool or bias.is_floating_point()):
        return None
    # auto: the calibration decides (CPU: never); forced triton: the kernel
    out = kernel_attention(*views, attn_bias=bias)
    if out is None:
        return None
    return out if skip_output_reshape else out.transpose(1, 2).reshape(b, n_q, h * d)


def lit_attention_override(original_func: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                           mask: torch.Tensor | None = None, attn_precision: Any = None, skip_reshape: bool = False,
                           skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """``optimized_attention_override``: our kernel where it applies, ``original_func`` otherwise."""
    try:
        out = _kernel_call(q, k, v, heads, mask, skip_reshape, skip_output_reshape)
    except LitError:
        out = None
    except Exception as err:  # noqa: BLE001 - a kernel failure (e.g. an unsupported GPU) must not kill the run
        _warn_once(type(err).__name__, f"LiT Triton attention failed ({err}); using ComfyUI's attention instead.")
        out = None
    if out is not None:
        return out
    return original_func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                         skip_output_reshape=skip_output_reshape, **kwargs)


def _sdpa_comfy_convention(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                           skip_output_reshape=False, **kwargs):
    """Plain SDPA in ComfyUI's attention-function convention: the registry entry's fallback."""
    qh, kh, vh, layout = _split_heads(q, k, v, heads, skip_reshape)
    if layout == "bnhd":
        qh, kh, vh = qh.transpose(1, 2), kh.transpose(1, 2), vh.transpose(1, 2)
    b, h, n_q, d = qh.shape
    bias = _mask_as_bias(mask, (b, h, n_q, kh.shape[2]))
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
    return out if skip_output_reshape else out.transpose(1, 2).reshape(b, n_q, h * d)


def lit_triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         mask: torch.Tensor | None = None, attn_precision: Any = None, skip_reshape: bool = False,
                         skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """A ComfyUI attention function (registry convention, no ``original_func``): kernel, else SDPA."""
    return lit_attention_override(_sdpa_comfy_convention, q, k, v, heads, mask=mask, attn_precision=attn_precision,
                                  skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **kwargs)


def register_comfy_attention() -> bool:
    """Add ``lit_triton`` to ComfyUI's attention registry (once); False without a host that has one."""
    return register_attention_function(REGISTRY_NAME, lit_triton_attention)


def route_through_lit(original_func: Callable) -> Callable:
    """Core's attention function ``original_func`` with our kernel in front (what routed encoder layers get)."""
    if getattr(original_func, "lit_routed", False):
        return original_func
    routed = functools.partial(lit_attention_override, original_func)
    routed.lit_routed = True  # type: ignore[attr-defined]
    return routed


class LiTPatchModelAttention:
    """Clone a diffusion MODEL (and optionally a CLIP / CLIP_VISION) with attention routed through the LiT kernel."""

    DISPLAY_NAME = "LiT Triton Attention (patch model)"
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "CLIP", "CLIP_VISION")
    RETURN_NAMES = ("model", "clip", "clip_vision")
    OUTPUT_TOOLTIPS = (
        "A copy of the model whose attention runs on the LiT Triton kernel where it was measured faster and "
        "correct on this GPU, and on ComfyUI's own attention elsewhere.",
        "A copy of the connected CLIP with its text encoders routed the same way (empty when none is connected).",
        "A copy of the connected CLIP_VISION routed the same way (empty when none is connected).")
    DESCRIPTION = ("Patches a diffusion model to compute attention with LiT's fused Triton kernel "
                   "(FlashAttention-2 style). On the first call of each shape class the kernel is checked against "
                   "PyTorch SDPA and timed against it; it serves the class only when it is right and faster "
                   "(decisions cached on disk; `python -m comfyui_lit attention-calibrate` measures them all at "
                   "once). Other calls (CPU, head dim > 128, odd masks) use ComfyUI's attention, so the patch "
                   "never breaks a model. Core's CLIP text and vision encoders bypass the model hook: connect them "
                   "here to route them too. COMFYUI_LIT_ATTENTION=torch disables it globally, =triton forces it.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch (the original is left unchanged)."}),
                "enabled": ("BOOLEAN", {"default": True,
                                        "tooltip": "Off returns unpatched copies, to compare speed or output."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "A CLIP (text encoders) to route through the kernel as well."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "A CLIP_VISION (CLIP, SigLIP or DINOv2 image encoder) "
                                                           "to route through the kernel as well."}),
                "route_encoders": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Route the connected CLIP / CLIP_VISION encoders (ComfyUI's CLIP encoders skip "
                               "the model's attention hook). The same per-GPU calibration decides each call."}),
            },
        }

    @with_node_errors(DISPLAY_NAME)
    def patch(self, model: Any, enabled: bool = True, clip: Any = None, clip_vision: Any = None,
              route_encoders: bool = True) -> tuple[Any, Any, Any]:
        if not hasattr(model, "clone") or not hasattr(model, "model_options"):
            raise LitError("this is not a diffusion MODEL.", input_name="model",
                           fix="connect the MODEL output of a checkpoint or diffusion-model loader.")
        patched = model.clone()
        encoders = {"clip": clip, "clip_vision": clip_vision}
        if not enabled or not ta.TRITON_AVAILABLE:
            if enabled:
                _warn_once("no-triton", "LiT Triton attention: triton is not installed; the model is unchanged.")
            return (patched, *(None if e is None else _plain_clone(e, name) for name, e in encoders.items()))
        options = dict(patched.model_options)
        transformer_options = dict(options.get("transformer_options", {}))
        previous = transformer_options.get("optimized_attention_override")
        if previous is None:
            override = lit_attention_override
        else:
            def override(original_func, *args, **kwargs):
                # keep an earlier patch working: it becomes the fallback for calls our kernel declines
                def fallback(*a, **kw):
                    return previous(original_func, *a, **kw)
                return lit_attention_override(fallback, *args, **kwargs)
        transformer_options["optimized_attention_override"] = override
        options["transformer_options"] = transformer_options
        patched.model_options = options
        routed = []
        for name, encoder in encoders.items():
            if encoder is None:
                routed.append(None)
            elif not route_encoders:
                routed.append(_plain_clone(encoder, name))
            else:
                twin, layers = route_encoder_attention(encoder, route_through_lit, input_name=name)
                if not layers:
                    _warn_once(f"no-layers-{name}", f"LiT Triton attention: the connected {name} has no core "
                                                    "CLIP/DINOv2 encoder layers to route; it is unchanged.")
                routed.append(twin)
        return (patched, *routed)


def _plain_clone(encoder: Any, input_name: str) -> Any:
    try:
        return clone_encoder(encoder)
    except AttributeError as err:
        raise LitError(f"this input is not a ComfyUI CLIP or CLIP_VISION ({err}).", input_name=input_name,
                       fix="connect the output of a Load CLIP / Load Checkpoint / Load CLIP Vision node.") from err


register_comfy_attention()

NODE_CLASS_MAPPINGS = {"LiTPatchModelAttention": LiTPatchModelAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"LiTPatchModelAttention": LiTPatchModelAttention.DISPLAY_NAME}
