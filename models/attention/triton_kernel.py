"""Fused scaled-dot-product attention in Triton: FlashAttention-2 style forward and backward.

Layout-agnostic: every tensor is addressed through explicit (batch, head, token, dim) strides, so the
``[B, H, N, d]`` and ``[B, N, H, d]`` layouts (and transposed views of either) run without copies.
Numerics: scores, softmax and accumulators are fp32; the softmax runs in the log2 domain (``exp2``), and the
forward keeps the per-row log-sum-exp so the backward recomputes probabilities instead of storing them.

Masks: top-left aligned causal (``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``'s
convention), a boolean key-padding mask ``[B, N_k]`` (nonzero = keep) and an additive fp bias addressed through
broadcast strides. A row whose keys are all masked outputs zeros (as SDPA does) and gets zero gradients.

Head dims that are not powers of two (80, 96) are padded to the next power of two in registers with masked
loads; memory is never padded. Sequences of any length are handled by masked loads on the token axis.

This module imports without Triton; :data:`TRITON_AVAILABLE` tells whether the kernels exist.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except Exception:  # noqa: BLE001 - any import failure (missing, broken driver) means "no kernel"
    triton = None
    tl = None
    TRITON_AVAILABLE = False

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
_LOG2E = 1.4426950408889634

# The interpreter (CPU) is slow per program and cannot autotune usefully: fixed small blocks that still
# exercise the multi-block loop for sequences longer than 32 and the one-block path for short ones.
INTERPRET_BLOCKS = (32, 32)
# Tests flip this to drive the autotuned launchers through the interpreter (with a stub benchmark).
AUTOTUNE_UNDER_INTERPRETER = False


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def usable_for(t: torch.Tensor) -> bool:
    """Whether the kernel can run on this tensor's device at all (CUDA, or any device under the interpreter)."""
    if not TRITON_AVAILABLE:
        return False
    return t.is_cuda or (interpreting() and t.device.type == "cpu")


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """``None`` when the kernel handles these ``[B, H, N, d]`` views, else the reason it does not."""
    if not TRITON_AVAILABLE:
        return "triton is not installed"
    if not usable_for(q):
        return f"tensors are on {q.device.type}, the kernel needs CUDA"
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}/{k.dtype}/{v.dtype} (needs one of fp16, bf16, fp32 for all of q, k, v)"
    if q.shape[-1] != k.shape[-1] or v.shape[-1] != q.shape[-1]:
        return "q, k and v head dims differ"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}"
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or k.shape[:3] != v.shape[:3]:
        return "batch/head/length mismatch between q, k and v (grouped-query attention is not supported)"
    if q.shape[2] == 0 or k.shape[2] == 0 or q.shape[0] * q.shape[1] == 0:
        return "empty sequence"
    if q.is_cuda and torch.version.hip is None:
        cap = torch.cuda.get_device_capability(q.device)
        if cap < (7, 5):
            return f"GPU compute capability {cap[0]}.{cap[1]} (the kernel needs 7.5+)"
        if q.dtype == torch.bfloat16 and cap < (8, 0):
            return "bf16 tensor cores need compute capability 8.0+"
    return None


if TRITON_AVAILABLE:

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # UPCAST is only set under the CPU interpreter for bf16, whose bf16 dot is wrong; GPUs use native bf16 MMA.
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _hint(sb, sh, sn, ALIGN: tl.constexpr):
        # Triton only learns "divisible by 16" from arguments; head dims like 72 leave the head stride at 72
        # elements and every tile load scalar. ALIGN (the strides' common power-of-two factor, from the
        # wrapper) restores 16-byte vector loads.
        # (a hint on a kernel argument itself is dropped: it has to sit on an operation, here the widening)
        if ALIGN > 1:
            sb = tl.multiple_of(sb.to(tl.int64), ALIGN)
            sh = tl.multiple_of(sh.to(tl.int64), ALIGN)
            sn = tl.multiple_of(sn.to(tl.int64), ALIGN)
        return sb, sh, sn

    @triton.jit
    def _scores(q, k_t, bias_ptrs, kpm_ptrs, offs_m, cols, qk_scale, N_Q, N_K,
                HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # log2-domain scores of one [BLOCK_M, BLOCK_N] tile with every mask applied (-inf = dropped)
        s = _dot(q, k_t, PRECISION, UPCAST) * qk_scale
        # rows past N_Q need no mask: their q is zero (finite scores), the forward never stores them and the
        # backward gives them lse = +inf, so their probabilities are 0
        valid = (cols < N_K)[None, :]
        if HAS_BIAS:
            bias = tl.load(bias_ptrs, mask=(offs_m[:, None] < N_Q) & valid, other=0.0).to(tl.float32)
            s += bias * 1.4426950408889634
        if HAS_KPM:
            keep = tl.load(kpm_ptrs, mask=cols < N_K, other=0)
            valid = valid & (keep != 0)[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= cols[None, :])
        return tl.where(valid, s, float("-inf"))

    @triton.jit
    def _fwd_kernel(Q, K, V, OUT, LSE, BIAS, KPM,
                    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod,
                    sbb, sbh, sbm, sbn, skpb, skpn,
                    qk_scale, H, N_Q, N_K, HEAD_D: tl.constexpr, ALIGN: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    ONE_BLOCK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        sqb, sqh, sqn = _hint(sqb, sqh, sqn, ALIGN)
        skb, skh, skn = _hint(skb, skh, skn, ALIGN)
        svb, svh, svn = _hint(svb, svh, svn, ALIGN)
        sob, soh, son = _hint(sob, soh, son, ALIGN)
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_D

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                    mask=(offs_m[:, None] < N_Q) & mask_d[None, :], other=0.0)
        # K is loaded [BLOCK_N, BLOCK_D] (d contiguous) and transposed in registers: loading it transposed
        # straight from memory compiles to scalar 2-byte loads on the one-tile path (no cp.async pipeline there)
        k_base = K + b * skb + h * skh + offs_d[None, :] * skd
        v_base = V + b * svb + h * svh + offs_d[None, :] * svd
        bias_base = BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm
        kpm_base = KPM + b * skpb

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        if ONE_BLOCK:
            # short sequences (towers: 64/77 tokens): all keys fit one tile, a plain softmax, no rescaling
            cols = offs_n
            k = tl.load(k_base + cols[:, None] * skn, mask=(cols[:, None] < N_K) & mask_d[None, :], other=0.0)
            s = _scores(q, tl.trans(k), bias_base + cols[None, :] * sbn, kpm_base + cols * skpn, offs_m, cols, qk_scale,
                        N_Q, N_K, HAS_BIAS, HAS_KPM, CAUSAL, PRECISION, UPCAST)
            m_i = tl.max(s, 1)
            m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * svn, mask=(cols[:, None] < N_K) & mask_d[None, :], other=0.0)
            acc = _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        else:
            hi = N_K
            if CAUSAL:
                hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M)  # tiles right of the diagonal are fully masked
            for start_n in range(0, hi, BLOCK_N):
                cols = start_n + offs_n
                k = tl.load(k_base + cols[:, None] * skn, mask=(cols[:, None] < N_K) & mask_d[None, :], other=0.0)
                s = _scores(q, tl.trans(k), bias_base + cols[None, :] * sbn, kpm_base + cols * skpn, offs_m, cols,
                            qk_scale, N_Q, N_K, HAS_BIAS, HAS_KPM, CAUSAL, PRECISION, UPCAST)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                # a row with no kept key so far has max -inf: subtract 0 instead so exp2 gives 0, not NaN
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(s - m_safe[:, None])
                alpha = tl.math.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_base + cols[:, None] * svn, mask=(cols[:, None] < N_K) & mask_d[None, :], other=0.0)
                acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
                m_i = m_new

        empty = l_i == 0.0
        acc = acc / tl.where(empty, 1.0, l_i)[:, None]
        # +inf log-sum-exp makes the backward's recomputed probabilities exactly 0 for fully masked rows
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
        tl.store(LSE + bh.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)
        tl.store(OUT + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :] * sod, acc.to(OUT.dtype.element_ty),
                 mask=(offs_m[:, None] < N_Q) & mask_d[None, :])

    @triton.jit
    def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, BIAS, KPM, DK, DV,
                         sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
                         sbb, sbh, sbm, sbn, skpb, skpn,
                         sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                         qk_scale, sm_scale, H, N_Q, N_K, HEAD_D: tl.constexpr, ALIGN: tl.constexpr,
                         HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # one program owns a key tile and walks all query tiles: dK, dV accumulate in registers, no atomics
        sqb, sqh, sqn = _hint(sqb, sqh, sqn, ALIGN)
        skb, skh, skn = _hint(skb, skh, skn, ALIGN)
        svb, svh, svn = _hint(svb, svh, svn, ALIGN)
        sdob, sdoh, sdon = _hint(sdob, sdoh, sdon, ALIGN)
        sdkb, sdkh, sdkn = _hint(sdkb, sdkh, sdkn, ALIGN)
        sdvb, sdvh, sdvn = _hint(sdvb, sdvh, sdvn, ALIGN)
        start_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        cols = start_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_D
        kv_mask = (cols[:, None] < N_K) & mask_d[None, :]

        k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        k_t = tl.trans(k)
        v_t = tl.trans(v)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

        lo = 0
        if CAUSAL:
            lo = (start_n * BLOCK_N // BLOCK_M) * BLOCK_M  # query rows above this key tile never see it
        for start_m in range(lo, N_Q, BLOCK_M):
            offs_m = start_m + offs_m0
            row_mask = offs_m < N_Q
            q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                        mask=row_mask[:, None] & mask_d[None, :], other=0.0)
            do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdon + offs_d[None, :] * sdod,
                         mask=row_mask[:, None] & mask_d[None, :], other=0.0)
            lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=float("inf"))
            delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
            s = _scores(q, k_t, BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm + cols[None, :] * sbn,
                        KPM + b * skpb + cols * skpn, offs_m, cols, qk_scale, N_Q, N_K,
                        HAS_BIAS, HAS_KPM, CAUSAL, PRECISION, UPCAST)
            p = tl.math.exp2(s - lse[:, None])
            dv += _dot(tl.trans(p.to(do.dtype)), do, PRECISION, UPCAST)
            dp = _dot(do, v_t, PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, PRECISION, UPCAST)

        dk = dk * sm_scale
        tl.store(DK + b * sdkb + h * sdkh + cols[:, None] * sdkn + offs_d[None, :] * sdkd,
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b * sdvb + h * sdvh + cols[:, None] * sdvn + offs_d[None, :] * sdvd,
                 dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, BIAS, KPM, DQ, DBIAS,
                       sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdob, sdoh, sdon, sdod,
                       sbb, sbh, sbm, sbn, skpb, skpn,
                       sdqb, sdqh, sdqn, sdqd,
                       qk_scale, sm_scale, H, N_Q, N_K, HEAD_D: tl.constexpr, ALIGN: tl.constexpr,
                       HAS_BIAS: tl.constexpr, HAS_KPM: tl.constexpr, CAUSAL: tl.constexpr, HAS_DBIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        # one program owns a query tile and walks the key tiles: dQ in registers; dBias (= dS) written per tile
        sqb, sqh, sqn = _hint(sqb, sqh, sqn, ALIGN)
        skb, skh, skn = _hint(skb, skh, skn, ALIGN)
        svb, svh, svn = _hint(svb, svh, svn, ALIGN)
        sdob, sdoh, sdon = _hint(sdob, sdoh, sdon, ALIGN)
        sdqb, sdqh, sdqn = _hint(sdqb, sdqh, sdqn, ALIGN)
        start_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        h = (bh % H).to(tl.int64)
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_D
        row_mask = offs_m < N_Q

        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                    mask=row_mask[:, None] & mask_d[None, :], other=0.0)
        do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdon + offs_d[None, :] * sdod,
                     mask=row_mask[:, None] & mask_d[None, :], other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * N_Q + offs_m, mask=row_mask, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        hi = N_K
        if CAUSAL:
            hi = tl.minimum(N_K, (start_m + 1) * BLOCK_M)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + offs_n
            kv_mask = (cols[:, None] < N_K) & mask_d[None, :]
            k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
            v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
            s = _scores(q, tl.trans(k), BIAS + b * sbb + h * sbh + offs_m[:, None] * sbm + cols[None, :] * sbn,
                        KPM + b * skpb + cols * skpn, offs_m, cols, qk_scale, N_Q, N_K,
                        HAS_BIAS, HAS_KPM, CAUSAL, PRECISION, UPCAST)
            p = tl.math.exp2(s - lse[:, None])
            dp = _dot(do, tl.trans(v), PRECISION, UPCAST)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, PRECISION, UPCAST)
            if HAS_DBIAS:
                # DBIAS is a dense fp32 [B, H, N_Q, N_K]; the wrapper sums it down to the bias' broadcast shape
                tl.store(DBIAS + bh.to(tl.int64) * N_Q * N_K + offs_m[:, None] * N_K + cols[None, :], ds,
                         mask=row_mask[:, None] & (cols[None, :] < N_K))
        if HAS_DBIAS and CAUSAL:
            # tiles right of the diagonal are skipped above; their gradient is exactly zero
            for start_n in range(hi, N_K, BLOCK_N):
                cols = start_n + offs_n
                tl.store(DBIAS + bh.to(tl.int64) * N_Q * N_K + offs_m[:, None] * N_K + cols[None, :],
                         tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32),
                         mask=row_mask[:, None] & (cols[None, :] < N_K))
        dq = dq * sm_scale
        tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqn + offs_d[None, :] * sdqd,
                 dq.to(DQ.dtype.element_ty), mask=row_mask[:, None] & mask_d[None, :])

    def _cfg(block_m: int, block_n: int, warps: int, stages: int):
        return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)

    # Config sets per class (see config_class), chosen with bench/attention_compile.py: every fp16/bf16 config
    # compiles for sm_90 without spilling and fits its shared memory (tests/test_attention_compile.py keeps it
    # so), spills at most a few bytes on sm_80, and each class keeps spill-free configs for the 99 KiB of
    # RTX 30xx/40xx. Wide head dims need 8 warps for the [BLOCK, 128] fp32 accumulators; fp32 (ieee dots, no
    # tensor cores) only fits small tiles and is a correctness path: "auto" sends fp32 to SDPA.
    CONFIGS = {
        "fwd": {
            "d64": [_cfg(128, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(64, 64, 4, 3),
                    _cfg(64, 128, 8, 2), _cfg(64, 32, 4, 2)],
            "d128": [_cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 128, 8, 2), _cfg(64, 32, 4, 2)],
            "fp32": [_cfg(32, 32, 4, 2)],
        },
        "dkdv": {
            "d64": [_cfg(64, 64, 8, 2), _cfg(32, 64, 4, 2), _cfg(64, 32, 4, 2), _cfg(128, 32, 8, 2)],
            "d128": [_cfg(64, 64, 8, 2), _cfg(32, 64, 8, 2), _cfg(32, 32, 4, 2)],
            "fp32": [_cfg(32, 32, 4, 2)],
        },
        "dq": {
            "d64": [_cfg(64, 64, 4, 2), _cfg(128, 64, 8, 2), _cfg(64, 32, 4, 2), _cfg(128, 32, 8, 2)],
            "d128": [_cfg(64, 64, 8, 2), _cfg(128, 32, 8, 2), _cfg(64, 32, 4, 2), _cfg(128, 64, 8, 2)],
            "fp32": [_cfg(32, 32, 4, 2)],
        },
    }

    def _all_configs(kernel: str) -> list:
        unique: list = []
        for configs in CONFIGS[kernel].values():
            unique += [c for c in configs if c not in unique]
        return unique

    def _pruner(kernel: str):
        def prune(configs, named_args, **kwargs):
            kept = CONFIGS[kernel][config_class(named_args["Q"].dtype, kwargs["BLOCK_D"])]
            if kernel == "fwd":
                # key tiles far wider than the key sequence only waste registers
                cap = max(16, triton.next_power_of_2(named_args["N_K"]))
                kept = [c for c in kept if c.kwargs["BLOCK_N"] <= cap] or kept[-1:]
            return kept

        return {"early_config_prune": prune}

    _KEY = ["N_Q", "N_K", "HEAD_D", "HAS_BIAS", "HAS_KPM", "CAUSAL", "ALIGN"]

    _fwd_tuned = triton.autotune(_all_configs("fwd"), key=_KEY, prune_configs_by=_pruner("fwd"))(
        triton.heuristics({"ONE_BLOCK": lambda a: a["N_K"] <= a["BLOCK_N"]})(_fwd_kernel))
    _dkdv_tuned = triton.autotune(_all_configs("dkdv"), key=_KEY, prune_configs_by=_pruner("dkdv"))(_bwd_dkdv_kernel)
    _dq_tuned = triton.autotune(_all_configs("dq"), key=_KEY + ["HAS_DBIAS"], prune_configs_by=_pruner("dq"))(
        _bwd_dq_kernel)


def config_class(dtype: torch.dtype, block_d: int) -> str:
    """Which autotune config set a launch draws from: ``fp32``, ``d128`` (head dims 65..128) or ``d64``."""
    if dtype == torch.float32:
        return "fp32"
    return "d128" if block_d > 64 else "d64"


def _bhnd_strides(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else tuple(t.stride())  # type: ignore[return-value]


def _empty_like_layout(q: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A dense [B, H, N, d] tensor whose memory order follows ``q`` (so [B, N, H, d] inputs give [B, N, H, d])."""
    b, h, n, d = shape or q.shape
    if q.stride(1) < q.stride(2):  # head stride smaller than token stride: the [B, N, H, d] memory layout
        return torch.empty(b, n, h, d, device=q.device, dtype=q.dtype).transpose(1, 2)
    return torch.empty(b, h, n, d, device=q.device, dtype=q.dtype)


def _stride_align(*tensors: torch.Tensor) -> int:
    """The largest power of two (at most 16) dividing every batch/head/token stride, 1 unless d is contiguous."""
    align = 16
    for t in tensors:
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            return 1
        for size, stride in zip(t.shape[:-1], t.stride()[:-1], strict=True):
            if size > 1:
                align = math.gcd(align, stride)
    return max(1, align)


def _meta(q: torch.Tensor, blocks: tuple[int, int] | None) -> dict:
    """Compile-time flags shared by all kernels, and the fixed (BLOCK_M, BLOCK_N) or None for autotuning."""
    interp = interpreting()
    if blocks is None and interp and not AUTOTUNE_UNDER_INTERPRETER:
        blocks = INTERPRET_BLOCKS
    return {
        "BLOCK_D": max(16, triton.next_power_of_2(q.shape[-1])),
        "PRECISION": "ieee" if q.dtype == torch.float32 else None,  # fp32 in: fp32 math (SDPA parity)
        "UPCAST": interp and q.dtype == torch.bfloat16,
        "blocks": blocks,
    }


def _forward(q, k, v, bias, kpm, causal: bool, scale: float,
             blocks: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    bsz, heads, n_q, d = q.shape
    n_k = k.shape[2]
    o = _empty_like_layout(q)
    lse = torch.empty(bsz * heads, n_q, device=q.device, dtype=torch.float32)
    meta = _meta(q, blocks)
    dummy = q  # never dereferenced when the matching HAS_* flag is off
    args = (q, k, v, o, lse, bias if bias is not None else dummy, kpm if kpm is not None else dummy,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), *_bhnd_strides(bias),
            *(kpm.stride() if kpm is not None else (0, 0)),
            scale * _LOG2E, heads, n_q, n_k, d)
    flags = {"HAS_BIAS": bias is not None, "HAS_KPM": kpm is not None, "CAUSAL": causal,
             "BLOCK_D": meta["BLOCK_D"], "PRECISION": meta["PRECISION"], "UPCAST": meta["UPCAST"],
             "ALIGN": _stride_align(q, k, v, o)}
    if meta["blocks"] is not None:
        bm, bn = meta["blocks"]
        grid = (triton.cdiv(n_q, bm), bsz * heads)
        _fwd_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, ONE_BLOCK=n_k <= bn, num_warps=4)
    else:
        def grid(m):
            return (triton.cdiv(n_q, m["BLOCK_M"]), bsz * heads)
        _fwd_tuned[grid](*args, **flags)
    return o, lse


def _backward(do, q, k, v, o, lse, bias, kpm, causal: bool, scale: float, need_dbias: bool,
              blocks: tuple[int, int] | None = None):
    bsz, heads, n_q, d = q.shape
    n_k = k.shape[2]
    delta = (do.float() * o.float()).sum(-1).reshape(bsz * heads, n_q).contiguous()
    dq = _empty_like_layout(q)
    dk = _empty_like_layout(k)
    dv = _empty_like_layout(v)
    dbias = torch.empty(bsz, heads, n_q, n_k, device=q.device, dtype=torch.float32) if need_dbias else None
    meta = _meta(q, blocks)
    dummy = q
    b_arg = bias if bias is not None else dummy
    m_arg = kpm if kpm is not None else dummy
    common = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *_bhnd_strides(bias),
              *(kpm.stride() if kpm is not None else (0, 0)))
    tail = (scale * _LOG2E, scale, heads, n_q, n_k, d)
    flags = {"HAS_BIAS": bias is not None, "HAS_KPM": kpm is not None, "CAUSAL": causal,
             "BLOCK_D": meta["BLOCK_D"], "PRECISION": meta["PRECISION"], "UPCAST": meta["UPCAST"],
             "ALIGN": _stride_align(q, k, v, do, dq, dk, dv)}
    kv_args = (q, k, v, do, lse, delta, b_arg, m_arg, dk, dv, *common, *dk.stride(), *dv.stride(), *tail)
    q_args = (q, k, v, do, lse, delta, b_arg, m_arg, dq, dbias if dbias is not None else dummy, *common,
              *dq.stride(), *tail)
    if meta["blocks"] is not None:
        bm, bn = meta["blocks"]
        _bwd_dkdv_kernel[(triton.cdiv(n_k, bn), bsz * heads)](*kv_args, **flags, BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
        _bwd_dq_kernel[(triton.cdiv(n_q, bm), bsz * heads)](*q_args, **flags, HAS_DBIAS=need_dbias,
                                                            BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
    else:
        _dkdv_tuned[lambda m: (triton.cdiv(n_k, m["BLOCK_N"]), bsz * heads)](*kv_args, **flags)
        _dq_tuned[lambda m: (triton.cdiv(n_q, m["BLOCK_M"]), bsz * heads)](*q_args, **flags, HAS_DBIAS=need_dbias)
    return dq, dk, dv, dbias


def _reduce_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a dense [B, H, N_q, N_k] gradient down to the (broadcast) shape the bias came in with."""
    lead = grad.dim() - len(shape)
    grad = grad.sum(dim=tuple(range(lead))) if lead else grad
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


class TritonAttention(torch.autograd.Function):
    """Autograd wrapper: q, k, v are [B, H, N, d] views (any strides); ``attn_bias`` an additive fp tensor
    broadcastable to [B, H, N_q, N_k] (it gets a gradient); ``kpm`` a uint8 [B, N_k] keep-mask."""

    @staticmethod
    def forward(ctx, q, k, v, attn_bias, kpm, causal: bool, scale: float):  # type: ignore[override]
        bias = None
        if attn_bias is not None:
            bsz, heads, n_q, n_k = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
            view = attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))
            bias = view.expand(bsz, heads, n_q, n_k)  # stride 0 on broadcast dims, no copy
        o, lse = _forward(q, k, v, bias, kpm, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, attn_bias, kpm)
        ctx.causal = causal
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):  # type: ignore[override]
        q, k, v, o, lse, attn_bias, kpm = ctx.saved_tensors
        bias = None
        if attn_bias is not None:
            view = attn_bias.reshape((1,) * (4 - attn_bias.dim()) + tuple(attn_bias.shape))
            bias = view.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        need_dbias = attn_bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(do, q, k, v, o, lse, bias, kpm, ctx.causal, ctx.scale, need_dbias)
        if dbias is not None:
            dbias = _reduce_to(dbias, attn_bias.shape).reshape(attn_bias.shape).to(attn_bias.dtype)
        return dq, dk, dv, dbias, None, None, None


def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                     key_padding_mask: torch.Tensor | None = None, attn_bias: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """Run the kernel on [B, H, N, d] views (validated by the caller; see ``models.attention.attention``).

    ``attn_bias``: additive float tensor broadcastable to [B, H, N_q, N_k] (differentiable).
    ``key_padding_mask``: bool [B, N_k], True = keep. Output: same dtype as ``q``, memory order of ``q``.
    """
    bsz, n_k = q.shape[0], k.shape[2]
    scale = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    kpm = None
    if key_padding_mask is not None:
        keep = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        kpm = keep.expand(bsz, n_k).view(torch.uint8)
    return TritonAttention.apply(q, k, v, attn_bias, kpm, bool(causal), scale)
