"""Strict tower loading: no tensor dropped silently, malformed files and configs give the pack's clear error,
non-finite weights are refused, and a config.json beside the file overrides detection."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import bert_tokenizer, openclip_ids, perturb_, save_state, tiny_bert, tiny_clip_vision, write_clip_bpe

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.common.safetensors_io import load_tensors, read_metadata, tensor_shapes
from comfyui_lit.models.towers.image_tower import load_image_tower
from comfyui_lit.models.towers.text_tower import load_text_tower


@pytest.fixture(scope="module")
def clip_vision_state():
    return {k: v.detach().clone() for k, v in perturb_(tiny_clip_vision()).state_dict().items()}


def _openclip_with_layer_scale(vocab: int):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg={"image_size": 32, "layers": 1, "width": 64, "head_width": 64, "patch_size": 16,
                    "ls_init_value": 0.1},
        text_cfg={"context_length": 16, "vocab_size": vocab, "width": 64, "heads": 1, "layers": 1,
                  "ls_init_value": 0.1}).eval()
    return perturb_(model)


def test_openclip_layer_scale_is_used_not_dropped(tmp_path):
    """Before: ls_1/ls_2.gamma were dropped silently and the tower gave other embeddings than OpenCLIP's."""
    from transformers import AutoTokenizer

    tok_dir = write_clip_bpe(str(tmp_path / "tok"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = _openclip_with_layer_scale(len(tok))
    state = model.state_dict()
    assert any(k.endswith("ls_1.gamma") for k in state)
    path = save_state(state, str(tmp_path / "ls.safetensors"))
    image = load_image_tower(path)
    x = torch.rand(2, 40, 40, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.encode_image(image.preprocess(x))
    torch.testing.assert_close(image.encode(x), ref, atol=1e-5, rtol=1e-4)
    text = load_text_tower(path, tokenizer_path=tok_dir)
    texts = ["a cat", "a photo of a dog"]
    with torch.no_grad():
        ref = model.encode_text(openclip_ids(text.tokenize(texts)["input_ids"], 16, tok.pad_token_id))
    torch.testing.assert_close(text.encode(texts), ref, atol=1e-5, rtol=1e-4)


def test_unknown_tensor_in_a_block_is_refused_by_name(tmp_path):
    import open_clip

    model = open_clip.model.CLIP(embed_dim=32, vision_cfg={"image_size": 32, "layers": 1, "width": 64,
                                                           "patch_size": 16},
                                 text_cfg={"context_length": 8, "vocab_size": 40, "width": 64, "heads": 1,
                                           "layers": 1})
    state = dict(model.state_dict())
    state["visual.transformer.resblocks.0.ln_attn.weight"] = torch.ones(64)  # a block variant we don't build
    path = save_state(state, str(tmp_path / "variant.safetensors"))
    with pytest.raises(LitError, match="ln_attn") as err:
        load_image_tower(path)
    assert "would not use" in str(err.value) and "Fix:" in str(err.value)


def test_hf_layout_extra_and_missing_tensors_are_refused(tmp_path, clip_vision_state):
    extra = dict(clip_vision_state, **{"vision_model.encoder.layers.0.ls_1.gamma": torch.ones(128)})
    with pytest.raises(LitError, match=r"would not use \(vision_model\.encoder\.layers\.0\.ls_1\.gamma\)"):
        load_image_tower(save_state(extra, str(tmp_path / "extra.safetensors")))
    missing = {k: v for k, v in clip_vision_state.items() if k != "vision_model.post_layernorm.bias"}
    with pytest.raises(LitError, match=r"missing \(vision_model\.post_layernorm\.bias\)"):
        load_image_tower(save_state(missing, str(tmp_path / "missing.safetensors")))


def test_ignorable_tensors_are_reported_not_refused(tmp_path, clip_vision_state):
    state = dict(clip_vision_state, **{"logit_scale": torch.tensor(4.6),
                                       "vision_model.embeddings.position_ids": torch.arange(17)[None]})
    tower = load_image_tower(save_state(state, str(tmp_path / "ok.safetensors")))
    assert set(tower.ignored_tensors) == {"logit_scale", "vision_model.embeddings.position_ids"}
    assert tower.layout == "hf-clip-vision"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, clip_vision_state, value):
    state = dict(clip_vision_state)
    w = state["vision_model.encoder.layers.1.mlp.fc2.weight"].clone()
    w[3, 5] = value
    state["vision_model.encoder.layers.1.mlp.fc2.weight"] = w
    with pytest.raises(LitError, match=r"non-finite .*'vision_model\.encoder\.layers\.1\.mlp\.fc2\.weight'"):
        load_image_tower(save_state(state, str(tmp_path / "nan.safetensors")))


def test_non_finite_text_weights_are_refused(tmp_path):
    tok = bert_tokenizer(str(tmp_path / "b"))
    state = dict(tiny_bert(len(tok)).state_dict())
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"].clone()
    state["embeddings.word_embeddings.weight"][0, 0] = float("nan")
    with pytest.raises(LitError, match="non-finite .*word_embeddings"):
        load_text_tower(save_state(state, str(tmp_path / "b.safetensors")))


def _raw_file(path, header, body=b"\0" * 64):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    return str(path)


@pytest.mark.parametrize("header,words", [
    ([1, 2, 3], "not a safetensors file"),
    ({"a": 5}, "not a safetensors file"),
    ({"a": {"dtype": "F32", "shape": [4]}}, "not a safetensors file"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "__metadata__": {"x": 1}},
     "not a safetensors file"),
    (b"{not json", "not a safetensors file"),
    ({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, "truncated"),
])
def test_malformed_headers_give_clear_errors(tmp_path, header, words):
    """Before: a header that is a list, an entry that is not an object or lacks data_offsets raised a raw
    TypeError/KeyError/AttributeError from the hand-written reader."""
    path = _raw_file(tmp_path / "bad.safetensors", header)
    for reader in (load_tensors, read_metadata, tensor_shapes):
        with pytest.raises(LitError, match=words) as err:
            reader(path, input_name="image_encoder")
        assert "Fix:" in str(err.value) and "image_encoder" in str(err.value)
    with pytest.raises(LitError, match=words):
        load_image_tower(path)


def test_header_cut_short_and_empty_file(tmp_path):
    save_file({"a": torch.zeros(100)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:20])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(LitError, match="truncated"):
        load_tensors(str(tmp_path / "cut.safetensors"))
    with pytest.raises(LitError, match="empty or truncated"):
        load_tensors(str(tmp_path / "empty.safetensors"))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe".encode("latin-1")])
def test_malformed_companion_config_json(tmp_path, clip_vision_state, content):
    path = save_state(clip_vision_state, str(tmp_path / "v.safetensors"))
    (tmp_path / "v.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LitError, match="config file 'v.json'") as err:
        load_image_tower(path)
    assert "Fix:" in str(err.value)


def test_malformed_hf_folder_configs(tmp_path):
    model = tiny_clip_vision()
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text("{\"crop_size\": ")
    with pytest.raises(LitError, match="preprocessor config 'preprocessor_config.json' is not valid JSON"):
        load_image_tower(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": "grey", "crop_size": 32}))
    with pytest.raises(LitError, match="image_mean"):
        load_image_tower(str(folder))
    (folder / "preprocessor_config.json").unlink()
    (folder / "config.json").write_text("{")
    with pytest.raises(LitError, match="config file 'config.json' is not valid JSON"):
        load_image_tower(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": "wide"}))
    with pytest.raises(LitError, match="does not fit|config"):
        load_image_tower(str(folder))


def test_malformed_sentence_transformers_config(tmp_path):
    folder = str(tmp_path / "st")
    tok = bert_tokenizer(folder)
    tiny_bert(len(tok)).save_pretrained(folder)
    (tmp_path / "st" / "sentence_bert_config.json").write_text("{\"max_seq_length\": ")
    with pytest.raises(LitError, match="sentence-transformers config"):
        load_text_tower(folder)
    (tmp_path / "st" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": "long"}))
    with pytest.raises(LitError, match="max_seq_length"):
        load_text_tower(folder)
    (tmp_path / "st" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 20}))
    assert load_text_tower(folder).max_length == 20


def test_malformed_weights_index(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_state(tiny_clip_vision(), str(folder / "model-00001.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model-00001.safetensors"]}))
    with pytest.raises(LitError, match="weight_map"):
        load_image_tower(str(folder))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../../etc/x"}}))
    with pytest.raises(LitError, match="outside its folder"):
        load_image_tower(str(folder))


def test_config_json_overrides_detection(tmp_path, clip_vision_state):
    """Shapes cannot show the head count: detection guesses 2 heads for a 128-wide tower; a config.json says 4."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                           image_size=32, patch_size=8, projection_dim=64, hidden_act="gelu")
    torch.manual_seed(0)
    model = perturb_(CLIPVisionModelWithProjection(cfg).eval())
    path = save_state(model, str(tmp_path / "v.safetensors"))
    guessed = load_image_tower(path)
    assert guessed.backbone.model.config.num_attention_heads == 2
    (tmp_path / "v.json").write_text(cfg.to_json_string())
    tower = load_image_tower(path)
    assert tower.backbone.model.config.num_attention_heads == 4
    x = torch.rand(2, 32, 32, 3)
    with torch.no_grad():
        ref = model(pixel_values=tower.preprocess(x)).image_embeds
    torch.testing.assert_close(tower.encode(x), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(guessed.encode(x), ref, atol=1e-3)


def test_config_json_with_unknown_or_wrong_model_type(tmp_path, clip_vision_state):
    path = save_state(clip_vision_state, str(tmp_path / "v.safetensors"))
    (tmp_path / "v.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(LitError, match="model_type 'llama'"):
        load_image_tower(path)
    (tmp_path / "v.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(LitError, match="not laid out as that model"):
        load_image_tower(path)


def test_reference_libraries_stay_test_only(tmp_path, monkeypatch, clip_vision_state):
    """open_clip and timm are in the `test` extra only: no pack module imports them, and towers load without them."""
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for folder in ("models", "nodes", "cli"):
        for py in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.split(".")[0] in ("open_clip", "timm") for n in names), py
    monkeypatch.setitem(__import__("sys").modules, "open_clip", None)  # any import of it now fails
    monkeypatch.setitem(__import__("sys").modules, "timm", None)
    tower = load_image_tower(save_state(clip_vision_state, str(tmp_path / "v.safetensors")))
    assert tower.encode(torch.rand(1, 32, 32, 3)).shape == (1, 64)
