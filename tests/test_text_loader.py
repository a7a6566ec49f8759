"""Text tower loading: every supported layout round-trips (save -> load -> same outputs as transformers)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from tiny_models import (
    bert_tokenizer,
    hf_to_openclip_text,
    save_state,
    tiny_bert,
    tiny_clip_text,
    tiny_siglip_text,
    write_clip_bpe,
)

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.towers.text_tower import load_text_tower

TEXTS = ["a photo of a cat", "red square on the blue", "dog"]


def _bert_reference(model, tok, texts):
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


def test_bert_hf_folder_round_trip(tmp_path):
    folder = str(tmp_path / "tiny-bert")
    tok = bert_tokenizer(folder)
    model = tiny_bert(len(tok))
    model.save_pretrained(folder)
    tower = load_text_tower(folder)
    assert tower.arch == "bert" and tower.pooling == "mean" and tower.hidden_size == 128
    torch.testing.assert_close(tower.encode(TEXTS), _bert_reference(model, tok, TEXTS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_bert_single_file_with_tokenizer_folder_beside_it(tmp_path, prefix):
    tok = bert_tokenizer(str(tmp_path / "minibert"))  # "<stem>/" beside "<stem>.safetensors"
    model = tiny_bert(len(tok))
    path = save_state({prefix + k: v for k, v in model.state_dict().items()}, str(tmp_path / "minibert.safetensors"))
    tower = load_text_tower(path)
    torch.testing.assert_close(tower.encode(TEXTS), _bert_reference(model, tok, TEXTS), atol=1e-5, rtol=1e-5)
    assert tower.fingerprint == load_text_tower(path).fingerprint


def _clip_reference(model, tok, texts):
    batch = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds


@pytest.fixture()
def clip_tokenizer_dir(tmp_path):
    return write_clip_bpe(str(tmp_path / "clip_tok"))


def _clip_model_for(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    return tiny_clip_text(len(tok), eos=tok.eos_token_id), tok


def test_clip_text_single_file_uses_search_dir_tokenizer(tmp_path, clip_tokenizer_dir):
    """A bare clip_l-style file: the tokenizer comes from a search dir (ComfyUI's sd1_tokenizer inside ComfyUI)."""
    model, tok = _clip_model_for(clip_tokenizer_dir)
    folder = tmp_path / "text_encoders"
    folder.mkdir()
    path = save_state(model.state_dict(), str(folder / "clip_l.safetensors"))
    tower = load_text_tower(path, tokenizer_search_dirs={"clip": [clip_tokenizer_dir]})
    assert tower.arch == "clip" and tower.hidden_size == 96 and tower.max_length == 32
    torch.testing.assert_close(tower.encode(TEXTS), _clip_reference(model, tok, TEXTS), atol=1e-5, rtol=1e-5)


def test_clip_text_openclip_native_layout(tmp_path, clip_tokenizer_dir):
    """OpenCLIP's own layout (transformer.resblocks, in_proj) as bigG checkpoints come, converted on load."""
    model, tok = _clip_model_for(clip_tokenizer_dir)
    model.config.hidden_act = "quick_gelu"
    state = hf_to_openclip_text(model.state_dict())
    path = save_state(state, str(tmp_path / "open_clip_text.safetensors"))
    tower = load_text_tower(path, tokenizer_path=clip_tokenizer_dir)
    torch.testing.assert_close(tower.encode(TEXTS), _clip_reference(model, tok, TEXTS), atol=1e-5, rtol=1e-5)


def test_clip_text_bigg_width_uses_gelu_and_20_heads(tmp_path, clip_tokenizer_dir):
    """Widths the loader knows pick the released towers' settings: 1280 wide = OpenCLIP bigG (gelu, 20 heads)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(clip_tokenizer_dir)
    torch.manual_seed(0)
    model = tiny_clip_text(len(tok), hidden=1280, heads=20, act="gelu", eos=tok.eos_token_id)
    path = save_state(model.state_dict(), str(tmp_path / "clip_g.safetensors"))
    tower = load_text_tower(path, tokenizer_path=clip_tokenizer_dir)
    assert tower.model.config.num_attention_heads == 20 and tower.model.config.hidden_act == "gelu"
    torch.testing.assert_close(tower.encode(TEXTS), _clip_reference(model, tok, TEXTS), atol=1e-4, rtol=1e-4)


def test_siglip_text_hf_folder(tmp_path):
    folder = str(tmp_path / "siglip-text")
    tok = bert_tokenizer(folder)
    model = tiny_siglip_text(len(tok))
    model.save_pretrained(folder)
    tower = load_text_tower(folder)
    assert tower.arch == "siglip" and tower.pad_to_max_length
    batch = tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"]).pooler_output
    torch.testing.assert_close(tower.encode(TEXTS), ref, atol=1e-5, rtol=1e-5)


def test_dtype_and_device_control(tmp_path):
    folder = str(tmp_path / "tiny-bert")
    tok = bert_tokenizer(folder)
    tiny_bert(len(tok)).save_pretrained(folder)
    tower = load_text_tower(folder, dtype=torch.bfloat16, device="cpu")
    assert tower.dtype == torch.bfloat16 and tower.device.type == "cpu"
    assert tower.encode(TEXTS).dtype == torch.float32


def test_embedded_minilm_ranks_paraphrase_above_unrelated():
    tower = load_text_tower()
    assert tower.hidden_size == 384 and tower.max_length == 256 and "MiniLM" in tower.name
    e = F.normalize(tower.encode(["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                                  "The stock market fell sharply today."]), dim=-1)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_text_tower_is_trainable_through_forward():
    tower = load_text_tower()
    batch = tower.tokenize(["a cat", "a dog on the grass"])
    out = tower(**batch)
    out.sum().backward()
    grads = [p.grad for p in tower.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


# --- bad input ------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(LitError, match="does not exist"):
        load_text_tower(str(tmp_path / "nope.safetensors"))


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(LitError, match="pickle") as err:
        load_text_tower(str(path))
    assert "safetensors" in str(err.value) and "Fix:" in str(err.value)


def test_truncated_file(tmp_path):
    folder = str(tmp_path / "tiny-bert")
    tok = bert_tokenizer(folder)
    path = save_state(tiny_bert(len(tok)).state_dict(), str(tmp_path / "b.safetensors"))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LitError, match="truncated"):
        load_text_tower(str(cut))


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(LitError, match="not a safetensors file|corrupt"):
        load_text_tower(str(bad))


def test_unknown_architecture(tmp_path):
    path = save_state({"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(LitError, match="not a text encoder this pack recognises"):
        load_text_tower(path)


def test_single_file_without_tokenizer_says_where_to_put_one(tmp_path, clip_tokenizer_dir):
    model, _ = _clip_model_for(clip_tokenizer_dir)
    folder = tmp_path / "lonely"
    folder.mkdir()
    path = save_state(model.state_dict(), str(folder / "clip_l.safetensors"))
    with pytest.raises(LitError, match="no tokenizer found") as err:
        load_text_tower(path)
    assert "clip_l" in str(err.value) and "next to the file" in str(err.value)


def test_mismatched_tokenizer(tmp_path, clip_tokenizer_dir):
    model, _ = _clip_model_for(clip_tokenizer_dir)
    small = tiny_clip_text(20)  # fewer embeddings than the tokenizer has tokens
    path = save_state(small.state_dict(), str(tmp_path / "clip_small.safetensors"))
    shutil.copytree(clip_tokenizer_dir, tmp_path / "clip_small")
    with pytest.raises(LitError, match="different models"):
        load_text_tower(path)
    del model


def test_incomplete_weights(tmp_path):
    folder = str(tmp_path / "b")
    tok = bert_tokenizer(folder)
    state = tiny_bert(len(tok)).state_dict()
    state = {k: v for k, v in state.items() if "layer.1." not in k or "layer.0." in k}
    state["encoder.layer.1.attention.self.query.weight"] = torch.zeros(128, 128)
    path = save_state(state, str(tmp_path / "b.safetensors"))
    with pytest.raises(LitError, match="missing .* weights"):
        load_text_tower(path)
