"""One attention entry point for the whole pack: our Triton kernel on CUDA, PyTorch SDPA everywhere else.

Conventions (identical on both paths):

- ``q``: ``[B, H, N_q, d]`` (``layout="bhnd"``) or ``[B, N_q, H, d]`` (``layout="bnhd"``, what transformers
  and ComfyUI hold before their transposes); ``k``/``v`` the same with ``N_k`` tokens. The output has ``q``'s
  layout, shape and dtype.
- ``causal``: top-left aligned, query ``i`` sees keys ``j <= i`` (SDPA's ``is_causal`` convention, also for
  ``N_q != N_k``).
- ``key_padding_mask``: bool ``[B, N_k]``, **True = keep** (a transformers ``attention_mask`` as bool).
- ``attn_bias``: additive float tensor broadcastable to ``[B, H, N_q, N_k]``; ``-inf`` drops a pair. A bool
  tensor is accepted too and means keep/drop (SDPA's ``attn_mask`` convention, True = keep). A float bias gets
  a gradient on both paths.
- ``scale``: softmax scale, default ``1/sqrt(d)``.
- A query row whose keys are all masked outputs zeros (as SDPA does).

Which path runs: ``backend`` argument, else ``$COMFYUI_LIT_ATTENTION`` (``triton`` | ``torch`` | ``auto``,
default ``auto``). ``auto`` is measured, not assumed: on CUDA, the first call of each shape class (GPU, dtype,
head dim, length buckets, mask kind, forward or forward+backward) checks the kernel against SDPA and times both
(``calibrate.py``); the kernel serves the class only when it was right and faster, and the decision is cached
on disk. Off CUDA ``auto`` is SDPA at no cost. ``triton`` forces the kernel (on the CPU it needs
``TRITON_INTERPRET=1``) and raises a :class:`LitError` saying why when it cannot run; ``torch`` always uses
SDPA.

The transformers side: :func:`register_transformers_attention` registers the kernel as attention
implementation ``"lit_triton"``; :func:`preferred_attn_implementation` is what tower loaders pass as
``attn_implementation=``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F

from ..common.errors import LitError
from . import calibrate as cal
from . import triton_kernel as ta

log = logging.getLogger(__name__)

ENV_VAR = "COMFYUI_LIT_ATTENTION"
BACKENDS = ("auto", "triton", "torch")
HF_NAME = "lit_triton"


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: the argument, else the environment variable, else ``auto``."""
    choice = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    choice = (choice or "auto").strip().lower()
    if choice not in BACKENDS:
        source = "backend" if backend is not None else ENV_VAR
        raise LitError(f"unknown attention backend '{choice}'.", input_name=source,
                       fix=f"use one of {', '.join(BACKENDS)}.")
    return choice


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
           attn_bias: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise LitError(f"{name} must be 4-D, got shape {tuple(t.shape)}.", input_name=name,
                           fix="pass [B, H, N, d] (layout='bhnd') or [B, N, H, d] (layout='bnhd').")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[-1] != k.shape[-1]:
        raise LitError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch, heads or head dim.",
                       input_name="k", fix="give q and k the same batch size, head count and head dim.")
    if k.shape[:3] != v.shape[:3]:
        raise LitError(f"k {tuple(k.shape)} and v {tuple(v.shape)} disagree on batch, heads or length.",
                       input_name="v", fix="k and v must come from the same tokens.")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise LitError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}).", input_name="k",
                       fix="cast q, k and v to one dtype.")
    bsz, n_q, n_k = q.shape[0], q.shape[2], k.shape[2]
    if key_padding_mask is not None and (key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != n_k
                                         or key_padding_mask.shape[0] not in (1, bsz)):
        raise LitError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected [{bsz}, {n_k}].",
                       input_name="key_padding_mask", fix="pass a bool [batch, key_length] mask, True = keep.")
    if attn_bias is not None:
        full = (bsz, q.shape[1], n_q, n_k)
        try:
            ok = attn_bias.dim() <= 4 and tuple(torch.broadcast_shapes(attn_bias.shape, full)) == full
        except RuntimeError:
            ok = False
        if not ok:
            raise LitError(f"attn_bias of shape {tuple(attn_bias.shape)} does not broadcast to {list(full)}.",
                           input_name="attn_bias",
                           fix="pass an additive bias broadcastable to [batch, heads, query_len, key_len].")


def _bool_to_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, key_padding_mask: torch.Tensor | None,
          attn_bias: torch.Tensor | None, scale: float | None) -> torch.Tensor:
    """PyTorch SDPA with our mask conventions folded into one ``attn_mask`` ([B, H, N, d] views in and out)."""
    n_q, n_k = q.shape[2], k.shape[2]
    keep: torch.Tensor | None = None
    if key_padding_mask is not None:
        keep = key_padding_mask.to(torch.bool)[:, None, None, :]
    if attn_bias is not None and attn_bias.dtype == torch.bool:
        keep = attn_bias if keep is None else keep & attn_bias
        attn_bias = None
    if causal and (keep is not None or attn_bias is not None):
        tri = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        keep = tri if keep is None else keep & tri
        causal = False
    mask: torch.Tensor | None = keep
    if attn_bias is not None:
        mask = attn_bias.to(q.dtype)
        if keep is not None:
            mask = mask.masked_fill(~keep, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


def _auto_calibrates(q: torch.Tensor) -> bool:
    # the interpreter also runs CPU tensors, but it is a test tool: "auto" measures (and may pick) the kernel on
    # CUDA only, so a CPU never pays for calibration
    return q.is_cuda


def _tracing() -> bool:
    """Inside CUDA-graph capture or torch.compile tracing nothing can be timed: SDPA, undecided."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", None) is not None and compiler.is_compiling():
        return True
    return bool(torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _calibrator() -> cal.Calibrator:
    return cal.calibrator()


def _run_kernel(q, k, v, causal, key_padding_mask, attn_bias, scale) -> torch.Tensor:
    bias = attn_bias
    if bias is not None and bias.dtype == torch.bool:
        bias = _bool_to_bias(bias, torch.float32)
    return ta.triton_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, attn_bias=bias, scale=scale)


def _wants_backward(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def calibrated_decision(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                        key_padding_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                        scale: float | None = None, backward: bool | None = None,
                        calibrator: cal.Calibrator | None = None) -> tuple[cal.ShapeClass, cal.Decision]:
    """The shape class of a call on ``[B, H, N, d]`` views and ``auto``'s decision for it (measured if new)."""
    if backward is None:
        backward = _wants_backward(q, k, v, attn_bias)
    shape = cal.shape_class(q, k, causal=causal, key_padding_mask=key_padding_mask, attn_bias=attn_bias,
                            backward=backward)
    calibrator = calibrator or _calibrator()

    def measure() -> cal.Measurement:
        return cal.measure(
            q, k, v, attn_bias, backward=backward, timer=calibrator.timer, reps=calibrator.reps,
            run_kernel=lambda q_, k_, v_, b_: _run_kernel(q_, k_, v_, causal, key_padding_mask, b_, scale),
            run_sdpa=lambda q_, k_, v_, b_: _sdpa(q_, k_, v_, causal, key_padding_mask, b_, scale))

    return shape, calibrator.decide(shape, measure)


def _plan(q, k, v, causal, key_padding_mask, attn_bias, scale, choice: str) -> tuple[bool, cal.ShapeClass | None]:
    """Whether the kernel serves this call, and the shape class ``auto`` decided it for (None when forced)."""
    if choice == "torch":
        return False, None
    reason = ta.supports(q, k, v)
    if choice == "triton":
        if reason is not None:
            raise LitError(f"the Triton attention kernel cannot run here: {reason}.", input_name="backend",
                           fix=f"use backend='auto' (or unset {ENV_VAR}) to fall back to PyTorch SDPA.")
        return True, None
    if reason is not None or not _auto_calibrates(q) or _tracing():
        return False, None
    shape, decision = calibrated_decision(q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                                          attn_bias=attn_bias, scale=scale)
    return decision.use_kernel, shape


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     key_padding_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                     scale: float | None = None, backend: str | None = None) -> torch.Tensor | None:
    """The kernel's result on ``[B, H, N, d]`` views when the backend (``auto``: the calibration) picks it for
    this call, else ``None`` so the caller runs its own fallback (SDPA here, the host's attention in ComfyUI).

    Forced ``triton`` raises a :class:`LitError` when the kernel cannot run and lets kernel errors through;
    under ``auto`` a kernel error disables its shape class (one logged line) and gives ``None``.
    """
    choice = requested_backend(backend)
    use_kernel, shape = _plan(q, k, v, causal, key_padding_mask, attn_bias, scale, choice)
    if not use_kernel:
        return None
    try:
        return _run_kernel(q, k, v, causal, key_padding_mask, attn_bias, scale)
    except Exception as err:  # noqa: BLE001 - e.g. a GPU/driver Triton cannot compile for
        if shape is None:
            raise
        _calibrator().record_failure(shape, err)
        return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "bhnd", causal: bool = False,
              key_padding_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
              scale: float | None = None, backend: str | None = None) -> torch.Tensor:
    """Scaled-dot-product attention with the conventions in the module docstring; differentiable on both paths."""
    if layout not in ("bhnd", "bnhd"):
        raise LitError(f"unknown layout '{layout}'.", input_name="layout", fix="use 'bhnd' or 'bnhd'.")
    if layout == "bnhd":  # views only: both paths address memory through strides
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    _check(q, k, v, key_padding_mask, attn_bias)
    out = kernel_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, attn_bias=attn_bias,
                           scale=scale, backend=backend)
    if out is None:
        out = _sdpa(q, k, v, causal, key_padding_mask, attn_bias, scale)
    return out.transpose(1, 2) if layout == "bnhd" else out


# ---------------------------------------------------------------------------------------------- transformers


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


def lit_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers ``AttentionInterface`` function: [B, H, N, d] in, ([B, N, H, d] contiguous, None) out.

    The mask arrives 4-D: boolean (True = keep, from ``sdpa_mask``, which we register for our name) or additive
    float (models that build their own); a mask that only varies over keys becomes a key-padding mask. Calls the
    kernel can't serve (attention dropout while training, position biases, soft-capping, ``auto`` on a CPU) go to
    transformers' own SDPA function, so results never silently change.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    unsupported = (dropout and dropout > 0.0) or kwargs.get("position_bias") is not None \
        or kwargs.get("softcap") is not None or kwargs.get("cache") is not None or key.shape[-1] != value.shape[-1]
    if unsupported:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
    n_q, n_k = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    causal = bool(causal) and attention_mask is None and n_q > 1
    kpm, bias = None, None
    if attention_mask is not None:
        mask = attention_mask[..., :n_k]
        if mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[2] == 1 and mask.dtype == torch.bool:
            kpm = mask[:, 0, 0, :].expand(query.shape[0], n_k)
        else:
            bias = mask
    out = attention(query, key, value, causal=causal, key_padding_mask=kpm, attn_bias=bias, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register_transformers_attention() -> str:
    """Register ``"lit_triton"`` with transformers' attention and mask interfaces (idempotent); return the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(HF_NAME, lit_attention_forward)
    # without a mask function transformers would hand an unknown implementation *no* mask (padding ignored):
    # ours takes SDPA's boolean 4-D masks
    AttentionMaskInterface.register(HF_NAME, sdpa_mask)
    return HF_NAME


def preferred_attn_implementation(device: torch.device | str) -> str:
    """``"lit_triton"`` (registered on the way) on CUDA with Triton, else ``"sdpa"``; the env var can force it."""
    choice = requested_backend()
    device = torch.device(device)
    if choice == "torch":
        return "sdpa"
    if choice == "triton" or (device.type == "cuda" and ta.TRITON_AVAILABLE):
        if not ta.TRITON_AVAILABLE:
            return "sdpa"
        return register_transformers_attention()
    return "sdpa"
