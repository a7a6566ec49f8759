"""Contrastive losses for locked-image tuning, each owning its learnable temperature (and bias).

Both accept an optional ``positives`` mask: with class-name captions two images in a batch often share the
same caption, and treating those pairs as negatives would teach the model to tell identical texts apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import LitError

LOSSES = ("softmax", "sigmoid")
# CLIP clamps its logit scale at 100 so a runaway temperature can't make the softmax degenerate.
MAX_LOG_SCALE = math.log(100.0)


class ContrastiveLoss(nn.Module):
    """Softmax (InfoNCE) loss of CLIP / LiT, symmetric over image->text and text->image."""

    kind = "softmax"

    def __init__(self, init_scale: float = 1.0 / 0.07) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()

    @property
    def logit_bias(self) -> torch.Tensor:
        return torch.zeros((), device=self.log_scale.device)

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                positives: torch.Tensor | None = None, *, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Mean loss of L2-normalised ``[B,D]`` image and text embeddings (row i of each is a pair).

        ``rows=(start, stop)``: this rank's part of the loss over the GLOBAL batch (the embeddings are the
        all-gathered ``[B,D]``): the image->text rows of its images and the text->image rows of its texts,
        normalised by the global B, so the parts of all ranks sum to the full loss (open_clip's local loss).
        """
        if rows is not None:
            return _local_softmax(self.logit_scale, image_emb, text_emb, positives, rows)
        logits = self.logit_scale * image_emb @ text_emb.t()
        if positives is None:
            target = torch.arange(logits.shape[0], device=logits.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        # Several correct texts per image: the target distribution is uniform over them.
        pos = positives.to(logits.dtype)
        t_i2t = pos / pos.sum(1, keepdim=True)
        t_t2i = pos.t() / pos.t().sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, t_i2t) + F.cross_entropy(logits.t(), t_t2i))


class SigmoidLoss(nn.Module):
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023): every image-text pair is a binary decision."""

    kind = "sigmoid"

    def __init__(self, init_scale: float = 10.0, init_bias: float = -10.0) -> None:
        super().__init__()
        # The paper's init (t'=log 10, b=-10) keeps the many negatives from swamping the first steps.
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=MAX_LOG_SCALE).exp()

    @property
    def logit_bias(self) -> torch.Tensor:
        return self.bias

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                positives: torch.Tensor | None = None, *, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """``rows=(start, stop)``: this rank's image rows of the global pair matrix (see ContrastiveLoss)."""
        if rows is not None:
            start, stop = rows
            b = image_emb.shape[0]
            logits = self.logit_scale * image_emb[start:stop] @ text_emb.t() + self.bias
            pos = positives[start:stop] if positives is not None else (
                torch.arange(start, stop, device=logits.device)[:, None] == torch.arange(b, device=logits.device))
            labels = pos.to(logits.dtype) * 2.0 - 1.0
            return -F.logsigmoid(labels * logits).sum() / b
        logits = self.logit_scale * image_emb @ text_emb.t() + self.bias
        if positives is None:
            positives = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        labels = positives.to(logits.dtype) * 2.0 - 1.0
        # Normalised by batch size, as in the paper: the sum over the row of pairs, averaged over images.
        return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def _local_softmax(scale: torch.Tensor, image_emb: torch.Tensor, text_emb: torch.Tensor,
                   positives: torch.Tensor | None, rows: tuple[int, int]) -> torch.Tensor:
    start, stop = rows
    b = image_emb.shape[0]
    i2t = scale * image_emb[start:stop] @ text_emb.t()  # [b_local, B]
    t2i = scale * text_emb[start:stop] @ image_emb.t()
    if positives is None:
        target = torch.arange(start, stop, device=i2t.device)
        return 0.5 * (F.cross_entropy(i2t, target, reduction="sum") + F.cross_entropy(t2i, target, reduction="sum")) / b
    pos = positives.to(i2t.dtype)
    t_i2t, t_t2i = pos[start:stop], pos.t()[start:stop]
    t_i2t = t_i2t / t_i2t.sum(1, keepdim=True)
    t_t2i = t_t2i / t_t2i.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(i2t, t_i2t, reduction="sum") + F.cross_entropy(t2i, t_t2i, reduction="sum")) / b


def make_loss(name: str) -> nn.Module:
    """``"softmax"`` (CLIP/LiT) or ``"sigmoid"`` (SigLIP)."""
    if name == "softmax":
        return ContrastiveLoss()
    if name == "sigmoid":
        return SigmoidLoss()
    raise LitError(f"unknown loss '{name}'.", input_name="loss", fix=f"use one of: {', '.join(LOSSES)}.")
