"""LoRA: starts as the identity, wraps exactly the attention/MLP linears of BERT/CLIP/SigLIP, trains only itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    SiglipTextConfig,
    SiglipTextModel,
)

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.tuning.lora import LoRALinear, apply_lora, find_lora_targets, lora_state_dict

SMALL = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 50}


def _bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(num_hidden_layers=2, max_position_embeddings=32, **SMALL)).eval()


def test_lora_linear_starts_as_identity_and_trains_only_a_b():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    lora = LoRALinear(base, rank=2, alpha=4)
    x = torch.randn(3, 8)
    assert torch.equal(lora(x), base(x))
    assert lora.scaling == 2.0
    assert not base.weight.requires_grad and lora.lora_A.requires_grad and lora.lora_B.requires_grad
    w0 = base.weight.clone()
    opt = torch.optim.SGD([lora.lora_A, lora.lora_B], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (lora(x) - 1).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(lora(x), base(x))
    assert torch.equal(base.weight, w0)
    with pytest.raises(LitError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1)


def test_bert_targets_attention_and_mlp_not_pooler():
    model = _bert()
    names = find_lora_targets(model)
    assert len(names) == 2 * 6
    assert not any("pooler" in n for n in names)
    attn = find_lora_targets(model, "attention")
    mlp = find_lora_targets(model, "mlp")
    assert len(attn) == 2 * 4 and len(mlp) == 2 * 2
    assert not set(attn) & set(mlp)
    assert all(n.endswith(("intermediate.dense", "output.dense")) and "attention" not in n for n in mlp)


def test_apply_lora_keeps_output_then_trains_only_lora():
    model = _bert()
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    before = model(input_ids=ids).last_hidden_state
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    params = apply_lora(model, rank=4, alpha=8)
    assert len(params) == 2 * 6 * 2
    assert torch.allclose(model(input_ids=ids).last_hidden_state, before, atol=1e-6)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        opt.step()
    assert not torch.allclose(model(input_ids=ids).last_hidden_state, before, atol=1e-4)
    state = model.state_dict()
    for k, v in frozen.items():  # every original weight untouched (now under `.base`)
        key = k if k in state else k.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        assert torch.equal(state[key], v), k
    assert len(lora_state_dict(model)) == len(params)
    with pytest.raises(LitError, match="already has LoRA"):
        apply_lora(model, rank=2, alpha=2)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_clip_and_siglip_text_targets(kind):
    torch.manual_seed(0)
    if kind == "clip":
        model = CLIPTextModelWithProjection(CLIPTextConfig(num_hidden_layers=2, max_position_embeddings=16,
                                                           projection_dim=16, **SMALL))
    else:
        model = SiglipTextModel(SiglipTextConfig(num_hidden_layers=2, max_position_embeddings=16, **SMALL))
    names = find_lora_targets(model)
    assert len(names) == 2 * 6
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert not any("projection" in n or n.endswith(".head") for n in names)
    ids = torch.randint(0, 50, (2, 5))
    before = model(input_ids=ids).last_hidden_state
    apply_lora(model, rank=2, alpha=2)
    assert torch.allclose(model(input_ids=ids).last_hidden_state, before, atol=1e-6)
