"""Training objectives: the contrastive loss of one step, owning its single-process and distributed variants
(open_clip's loss classes do the same), so the loop calls ``objective(img, txt, positives)`` whatever the world.

Each returns ``(loss_to_backward, global_loss)``: under torchrun every rank computes its own rows of the loss over
the GLOBAL batch (the rows of all ranks sum to the full loss); ``global_loss`` is that sum, the same on every rank.
"""

from __future__ import annotations

import torch

from . import distributed as dist_


class LocalObjective:
    """One process: the loss module on the whole batch."""

    def __init__(self, loss: torch.nn.Module) -> None:
        self.loss = loss

    def slice(self, n: int) -> tuple[int, int]:
        """The part of a global batch of ``n`` this rank embeds."""
        return 0, n

    def __call__(self, img: torch.Tensor, txt: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.loss(img, txt, positives=pos)
        return loss, loss.detach()


class GatherObjective(LocalObjective):
    """torchrun: embeddings all-gathered WITH gradients; each rank computes its own rows of the global loss."""

    def __init__(self, loss: torch.nn.Module, world: int, rank: int) -> None:
        super().__init__(loss)
        self.world, self.rank = world, rank
        self._sizes: list[int] = []

    def slice(self, n: int) -> tuple[int, int]:
        self._sizes = dist_.split_sizes(n, self.world)
        lo = sum(self._sizes[:self.rank])
        return lo, lo + self._sizes[self.rank]

    def __call__(self, img, txt, pos):
        lo, hi = self.slice(int(pos.shape[0]))
        img_all = dist_.all_gather_with_grad(img, self._sizes)
        txt_all = dist_.all_gather_with_grad(txt, self._sizes)
        loss = self.loss(img_all, txt_all, positives=pos, rows=(lo, hi))
        return loss, dist_.sum_scalar(loss)


class RingObjective(GatherObjective):
    """torchrun + sigmoid loss: SigLIP's chunked ring exchange of text embeddings instead of an all-gather."""

    def __call__(self, img, txt, pos):
        self.slice(int(pos.shape[0]))
        loss = dist_.sigmoid_ring_loss(img, txt, self.loss.logit_scale, self.loss.logit_bias, pos, self._sizes)
        return loss, dist_.sum_scalar(loss)


def make_objective(loss: torch.nn.Module, *, world: int, rank: int, ring: bool = False) -> LocalObjective:
    if world == 1:
        return LocalObjective(loss)
    return RingObjective(loss, world, rank) if ring else GatherObjective(loss, world, rank)
