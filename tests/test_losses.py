"""Contrastive losses: values at known points, learnable temperature/bias, the positives mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.tuning.losses import ContrastiveLoss, SigmoidLoss, make_loss


def _emb(n: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_softmax_matches_clip_formula_and_is_symmetric():
    loss = ContrastiveLoss()
    assert float(loss.logit_scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    assert float(loss.logit_bias.detach()) == 0.0
    img, txt = _emb(8, seed=1), _emb(8, seed=2)
    logits = loss.logit_scale * img @ txt.t()
    t = torch.arange(8)
    want = 0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t))
    assert torch.allclose(loss(img, txt), want)
    assert torch.allclose(loss(img, txt), loss(txt, img))


def test_softmax_aligned_pairs_beat_random_and_temperature_learns():
    loss = ContrastiveLoss()
    img = _emb(16)
    aligned, shuffled = loss(img, img), loss(img, img.roll(1, 0))
    assert aligned < 0.1 < math.log(16) < shuffled
    aligned.backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0


def test_positives_mask_for_images_sharing_a_caption():
    img = _emb(4)
    shared = F.normalize(img[0] + img[1], dim=-1)
    txt = torch.stack([shared, shared, img[2], img[3]])  # images 0 and 1 have the same caption
    pos = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    soft = ContrastiveLoss()
    # Softmax: the duplicate column already splits the probability evenly, so the mask changes nothing...
    assert torch.allclose(soft(img, txt, positives=pos), soft(img, txt))
    assert torch.allclose(soft(img, img, positives=torch.eye(4, dtype=torch.bool)), soft(img, img))
    # ...but the sigmoid loss would push image 0 away from its own caption's copy: the mask must stop that.
    sig = SigmoidLoss(init_scale=20.0, init_bias=-5.0)  # a trained state: matching pairs score high
    masked, plain = sig(img, txt, positives=pos), sig(img, txt)
    assert masked < plain
    masked.backward()
    g_masked = sig.log_scale.grad.clone()
    sig.zero_grad()
    plain.backward()
    assert not torch.allclose(g_masked, sig.log_scale.grad)


def test_sigmoid_init_as_paper_and_learns_scale_and_bias():
    loss = SigmoidLoss()
    assert float(loss.logit_scale.detach()) == pytest.approx(10.0)
    assert float(loss.logit_bias.detach()) == pytest.approx(-10.0)
    img = _emb(8)
    value = loss(img, img)
    logits = 10.0 * img @ img.t() - 10.0
    labels = 2 * torch.eye(8) - 1
    assert torch.allclose(value, -F.logsigmoid(labels * logits).sum() / 8)
    value.backward()
    assert loss.log_scale.grad != 0 and loss.bias.grad != 0
    assert loss(img, img) < loss(img, img.roll(1, 0))


def test_unknown_loss_is_a_lit_error():
    assert isinstance(make_loss("sigmoid"), SigmoidLoss)
    with pytest.raises(LitError, match="loss"):
        make_loss("triplet")
