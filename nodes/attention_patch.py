"""LiT Triton Attention (patch model): route a diffusion MODEL's attention through our Triton kernel.

ComfyUI's attention functions are wrapped so that ``transformer_options["optimized_attention_override"]``, when
set, is called instead as ``override(original_func, q, k, v, heads, mask=None, attn_precision=None,
skip_reshape=False, skip_output_reshape=False, **kwargs)``. q/k/v arrive ``[B, N, heads*d]`` (``[B, heads, N, d]``
with ``skip_reshape``), the result leaves ``[B, N, heads*d]`` (``[B, heads, N, d]`` with
``skip_output_reshape``). Shapes, dtypes or devices the kernel does not take go to ``original_func`` for that
call, so patching never breaks a model. The same kernel is also registered in ComfyUI's attention registry as
``"lit_triton"`` when the host has one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..models.attention import triton_kernel as ta
from ..models.attention.dispatch import attention, requested_backend
from ..models.common.errors import LitError
from .host import CATEGORY, with_node_errors

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
    reason = ta.supports(*views)
    if reason is not None:
        return None
    if not q.is_cuda and requested_backend() != "triton":
        return None  # the interpreter is a test tool: only used on the CPU when forced
    b, h, n_q, d = views[0].shape
    try:
        bias = _mask_as_bias(mask, (b, h, n_q, views[1].shape[2]))
    except RuntimeError:
        return None
    if bias is not None and not (bias.dtype == torch.bool or bias.is_floating_point()):
        return None
    out = attention(qh, kh, vh, layout=layout, attn_bias=bias, backend="triton")
    if layout == "bnhd":  # out: [B, N, H, d]
        return out.transpose(1, 2) if skip_output_reshape else out.reshape(b, n_q, h * d)
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
    try:  # pragma: no cover - only inside ComfyUI
        import comfy.ldm.modules.attention as comfy_attention  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - no host, or a host without the module
        return False
    registry = getattr(comfy_attention, "REGISTERED_ATTENTION_FUNCTIONS", None)  # pragma: no cover
    register = getattr(comfy_attention, "register_attention_function", None)  # pragma: no cover
    if register is None:  # pragma: no cover
        return False
    if registry is None or REGISTRY_NAME not in registry:  # pragma: no cover
        register(REGISTRY_NAME, lit_triton_attention)
    return True  # pragma: no cover


class LiTPatchModelAttention:
    """Clone a diffusion MODEL with its attention routed through the LiT Triton kernel."""

    DISPLAY_NAME = "LiT Triton Attention (patch model)"
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the model whose attention runs on the LiT Triton kernel where it can "
                       "(CUDA, fp16/bf16/fp32, head dim <= 128) and on ComfyUI's own attention elsewhere.",)
    DESCRIPTION = ("Patches a diffusion model to compute attention with LiT's fused Triton kernel "
                   "(FlashAttention-2 style). Unsupported calls (CPU, head dim > 128, odd masks) use ComfyUI's "
                   "attention for that call, so the patch never breaks a model. Set COMFYUI_LIT_ATTENTION=torch "
                   "to disable it globally.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch (the original is left unchanged)."}),
                "enabled": ("BOOLEAN", {"default": True,
                                        "tooltip": "Off returns an unpatched copy, to compare speed or output."}),
            }
        }

    @with_node_errors(DISPLAY_NAME)
    def patch(self, model: Any, enabled: bool = True) -> tuple[Any]:
        if not hasattr(model, "clone") or not hasattr(model, "model_options"):
            raise LitError("this is not a diffusion MODEL.", input_name="model",
                           fix="connect the MODEL output of a checkpoint or diffusion-model loader.")
        patched = model.clone()
        if not enabled:
            return (patched,)
        if not ta.TRITON_AVAILABLE:
            _warn_once("no-triton", "LiT Triton attention: triton is not installed; the model is unchanged.")
            return (patched,)
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
        return (patched,)


register_comfy_attention()

NODE_CLASS_MAPPINGS = {"LiTPatchModelAttention": LiTPatchModelAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"LiTPatchModelAttention": LiTPatchModelAttention.DISPLAY_NAME}
