"""torch.distributed plumbing for locked tuning: process-group set-up from torchrun's environment, an all-gather
that carries gradients, gradient all-reduce (checkpoints live in ``checkpoints.py``).

Everything degrades to a no-op in a single process, so the trainer has one code path.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..common.errors import LitError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``); returns ``(rank, world_size)``. Without ``WORLD_SIZE>1`` nothing happens.

    NCCL when the training device is CUDA (each process then pins ``cuda:LOCAL_RANK``), gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    if is_dist():
        return rank(), world_size()
    if not all(k in os.environ for k in ("RANK", "MASTER_ADDR", "MASTER_PORT")):
        raise LitError("WORLD_SIZE is set but RANK/MASTER_ADDR/MASTER_PORT are not.", input_name="environment",
                       fix="launch with torchrun (it sets all of them), or unset WORLD_SIZE.")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank(), world_size()


def local_device(device: str | torch.device) -> torch.device:
    """``cuda`` becomes this process's ``cuda:LOCAL_RANK`` under torchrun; anything else is unchanged."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def shutdown() -> None:
    if is_dist():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for each slot and hands each rank its own slice:
    the gradient of the SUM of all ranks' losses w.r.t. the local tensor. Written with all_reduce (not
    reduce_scatter/all_to_all) so it runs on gloo as well as NCCL."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        r = dist.get_rank()
        n = max(sizes)
        padded = x.new_zeros((n, *x.shape[1:]))
        padded[: x.shape[0]] = x
        out = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(out, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, r
        return torch.cat([o[:s] for o, s in zip(out, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (rank order) along dim 0, differentiably. ``sizes`` (rows per rank) may
    differ between ranks; pass them when known, else they are exchanged first."""
    if not is_dist():
        return x
    if sizes is None:
        n = torch.tensor([x.shape[0]], device=x.device)
        all_n = [torch.zeros_like(n) for _ in range(world_size())]
        dist.all_gather(all_n, n)
        sizes = [int(t) for t in all_n]
    return _GatherWithGrad.apply(x, tuple(sizes))


class _NeighbourExchange(torch.autograd.Function):
    """Send ``x`` to the next rank of the ring and receive the previous rank's; backward runs the ring the other
    way, so each received chunk's gradient returns to its owner."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:  # type: ignore[override]
        ctx.to_rank, ctx.from_rank = to_rank, from_rank
        return _exchange(x, to_rank, from_rank)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return _exchange(grad, ctx.from_rank, ctx.to_rank), None, None


def _exchange(x: torch.Tensor, to_rank: int, from_rank: int) -> torch.Tensor:
    x = x.contiguous()
    buf = torch.empty_like(x)
    req = dist.isend(x, to_rank)
    dist.recv(buf, from_rank)
    req.wait()
    return buf


def sigmoid_ring_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                      logit_bias: torch.Tensor, positives: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """This rank's part of SigLIP's sigmoid loss over the global batch by the chunked ring exchange: the local
    images meet every rank's text chunk in W-1 hops, so no rank ever holds the global ``[B,D]`` text matrix or
    the ``[B,B]`` logits. ``positives`` is the global ``[B,B]`` mask; the parts of all ranks sum to the full loss.
    """
    world, r = world_size(), rank()
    offsets = [sum(sizes[:i]) for i in range(world)]
    lo, hi = offsets[r], offsets[r] + sizes[r]
    n = max(sizes)
    # Chunks travel padded to the longest one (a collective needs one shape); padding rows are sliced off.
    cur = torch.nn.functional.pad(text_emb, (0, 0, 0, n - text_emb.shape[0]))
    total = image_emb.new_zeros(())
    for hop in range(world):
        if hop:
            cur = _NeighbourExchange.apply(cur, (r + 1) % world, (r - 1) % world)
        owner = (r - hop) % world
        chunk = cur[: sizes[owner]]
        logits = logit_scale * image_emb @ chunk.t() + logit_bias
        labels = positives[lo:hi, offsets[owner]: offsets[owner] + sizes[owner]].to(logits.dtype) * 2.0 - 1.0
        total = total - torch.nn.functional.logsigmoid(labels * logits).sum()
    return total / sum(sizes)


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` over ranks in place, as one flat buffer (one collective, not one per parameter)."""
    if not is_dist() or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_scalar(value: torch.Tensor) -> torch.Tensor:
    """A detached scalar summed over ranks (the global loss from per-rank partial losses)."""
    v = value.detach().reshape(1).clone()
    if is_dist():
        dist.all_reduce(v)
    return v[0]


def split_sizes(n: int, parts: int) -> list[int]:
    """Rows per rank when ``n`` rows are cut into ``parts`` contiguous chunks (the first ones one row longer)."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# -- checkpoints ----------------------------------------------------------------------------------------------
