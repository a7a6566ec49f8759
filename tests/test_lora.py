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


class _WordTokenizer:
    """A stand-in tokenizer for tiny random models: one id per word (hashed), an end token, right padding."""

    def __init__(self, vocab: int, eos: int) -> None:
        self.vocab, self.eos = vocab, eos

    def __call__(self, texts, padding=True, truncation=True, max_length=32, return_tensors="pt"):
        ids = [[3 + sum(map(ord, w)) % (self.vocab - 4) for w in t.split()][:max_length - 1] + [self.eos]
               for t in texts]
        n = max(map(len, ids))
        return {"input_ids": torch.tensor([i + [0] * (n - len(i)) for i in ids]),
                "attention_mask": torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])}


def _tiny_tower(kind: str):
    from comfyui_lit.models.towers.text_tower import TextTower

    torch.manual_seed(0)
    if kind == "bert":
        model, pooling = BertModel(BertConfig(num_hidden_layers=4, max_position_embeddings=32, **SMALL)), "mean"
    else:
        cfg = CLIPTextConfig(num_hidden_layers=4, max_position_embeddings=32, projection_dim=16, eos_token_id=49,
                             **SMALL)
        model, pooling = CLIPTextModelWithProjection(cfg), "eos"
    return TextTower(model.eval(), _WordTokenizer(50, 49), pooling=pooling, name=kind, arch=kind, max_length=32,
                     hidden_size=16 if kind == "clip" else 32)


@pytest.mark.parametrize("kind", ["bert", "clip"])
def test_top_layer_lora_with_cached_lower_layers_is_exact_and_skips_them(kind):
    """LoRA on the top 2 of 4 layers; the cached path (lower layers run once per caption) gives the whole tower's
    features for any batch (other padding lengths, order), never runs a lower layer, and trains only the top."""
    from comfyui_lit.models.tuning.layer_cache import PrefixCache, top_layer_prefixes

    tower = _tiny_tower(kind)
    top = top_layer_prefixes(tower.model, 2)
    params = apply_lora(tower.model, rank=2, alpha=4, within=top, seed=0)
    names = list(lora_state_dict(tower.model))
    assert names and all(n.startswith(top) for n in names) and len(top) == 2
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.2)  # a trained-looking update, so the top layers matter
    texts = ["a dog runs on the beach", "two kids", "a man on a red bike in a very long and busy city street"]
    cache = PrefixCache(tower, 2)
    cache.fill(texts)
    layers = cache.layers
    calls = []
    hooks = [layers[i].register_forward_hook(lambda *a: calls.append(1)) for i in range(2)]
    for batch in (texts, texts[:2], texts[::-1], texts[1:]):
        got = cache.features(batch)
        assert not calls  # the frozen lower layers never ran
        want = tower(**tower.tokenize(batch))
        calls.clear()
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    for h in hooks:
        h.remove()
    cache.features(texts).pow(2).sum().backward()
    grads = {n for n, p in tower.model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith(top) and n.endswith(("lora_A", "lora_B")) for n in grads)
    assert all(layers[i] is not None and type(layers[i]).__name__ != "_PassThrough" for i in range(4))
