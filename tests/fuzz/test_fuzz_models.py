"""Fuzz: tower and adapter files that lie (NaN/Inf weights, malformed configs, damaged metadata), through the
engine loaders, the loader nodes (under inference mode, from the models folder) and the CLI (exit 2, a clear line)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import perturb_, save_state, tiny_clip_vision

from comfyui_lit.models.towers.image_tower import load_image_tower
from comfyui_lit.models.towers.text_tower import load_text_tower
from comfyui_lit.models.tuning.lit_model import LitModel, load_adapter, save_adapter
from comfyui_lit.nodes.loaders import LiTImageEncoderLoader, LiTTextEncoderLoader
from comfyui_lit.nodes.tuning import LiTLoadAdapter


@pytest.fixture(scope="module")
def vision_state():
    return {k: v.detach().clone() for k, v in perturb_(tiny_clip_vision()).state_dict().items()}


@pytest.fixture(scope="module")
def bert_dir(tiny_text_dir):
    return tiny_text_dir


@pytest.fixture()
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    for sub in ("clip_vision", "text_encoders", "lit"):
        os.makedirs(tmp_path / "models" / sub)
    return tmp_path / "models"


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from comfyui_lit import cli

    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def _all_three(fuzz, capsys, engine, node, cli_argv, match):
    """One bad file: a clear LitError from the engine and the node, exit 2 with the message from the CLI."""
    fuzz(engine, "clear", match=match)
    with torch.inference_mode():
        err = fuzz(node, "clear", match=match)
    assert "[LiT " in str(err)  # the node's name is in the message
    rc, out = fuzz(lambda: _cli(cli_argv, capsys), "handled", check=lambda r: r[0] == 2)
    assert match.lower() in out.lower() and "Traceback" not in out


# -- issue 2: non-finite tower weights; issue 7: malformed configs beside a tower ----------------------------------
def _vision_case(root, state, case: str) -> str:
    """Writes the damaged image encoder under ``root`` and returns its path (file or folder)."""
    if case in ("nan", "inf"):
        state = dict(state)
        w = state["vision_model.encoder.layers.0.mlp.fc1.weight"].clone()
        w[1, 2] = float(case)
        state["vision_model.encoder.layers.0.mlp.fc1.weight"] = w
        return save_state(state, os.path.join(root, f"{case}.safetensors"))
    if case.startswith("companion"):
        path = save_state(state, os.path.join(root, f"{case}.safetensors"))
        content = {"companion_json": b"{not json", "companion_list": b"[1, 2]", "companion_latin1": b"\xff\xfe\xe9"}
        with open(os.path.join(root, f"{case}.json"), "wb") as fh:
            fh.write(content[case])
        return path
    folder = os.path.join(root, case)
    tiny_clip_vision().save_pretrained(folder)
    if case == "preprocessor_json":
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as fh:
            fh.write('{"crop_size": ')
    elif case == "preprocessor_type":
        with open(os.path.join(folder, "preprocessor_config.json"), "w") as fh:
            json.dump({"image_mean": "grey", "crop_size": 32}, fh)
    elif case == "config_json":
        with open(os.path.join(folder, "config.json"), "w") as fh:
            fh.write("{")
    elif case == "index":
        os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "model-00001.safetensors"))
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
            json.dump({"weight_map": ["model-00001.safetensors"]}, fh)
    elif case == "index_escape":
        os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "model-00001.safetensors"))
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
            json.dump({"weight_map": {"a": "../../etc/passwd"}}, fh)
    return folder


@pytest.mark.parametrize("case,match", [
    ("nan", "non-finite"), ("inf", "non-finite"), ("companion_json", "config file"),
    ("companion_list", "config file"), ("companion_latin1", "config file"), ("preprocessor_json", "not valid JSON"),
    ("preprocessor_type", "image_mean"), ("config_json", "not valid JSON"), ("index", "weight_map"),
    ("index_escape", "outside its folder"),
])
def test_bad_image_encoders(fuzz, capsys, models, vision_state, case, match):
    path = _vision_case(str(models / "clip_vision"), vision_state, case)
    name = os.path.relpath(path, models / "clip_vision")
    _all_three(fuzz, capsys, lambda: load_image_tower(path), lambda: LiTImageEncoderLoader().load(name),
               ["classify", path, "--adapter", "none.safetensors", "--labels", "a;b", "--image-encoder", path],
               match)


@pytest.mark.parametrize("case,match", [("nan", "non-finite"), ("inf", "non-finite"),
                                        ("st_json", "sentence-transformers config"), ("st_type", "max_seq_length")])
def test_bad_text_encoders(fuzz, capsys, models, bert_dir, vision_state, case, match):
    folder = str(models / "text_encoders" / case)
    shutil.copytree(bert_dir, folder)
    if case in ("nan", "inf"):
        state = load_file(os.path.join(folder, "model.safetensors"))
        key = next(k for k in state if k.endswith("word_embeddings.weight"))
        state[key] = state[key].clone()
        state[key][0, 0] = float(case)
        save_file(state, os.path.join(folder, "model.safetensors"))
    else:
        with open(os.path.join(folder, "sentence_bert_config.json"), "w") as fh:
            fh.write('{"max_seq_length": ' if case == "st_json" else json.dumps({"max_seq_length": "long"}))
    image = save_state(vision_state, str(models / "clip_vision" / "ok.safetensors"))
    _all_three(fuzz, capsys, lambda: load_text_tower(folder), lambda: LiTTextEncoderLoader().load(case),
               ["classify", image, "--adapter", "none.safetensors", "--labels", "a;b", "--image-encoder", image,
                "--text-encoder", folder], match)


# -- issue 2 and 7: adapters with NaN/Inf weights or damaged metadata ------------------------------------------------
@pytest.fixture(scope="module")
def adapter_towers(lit_towers):
    return lit_towers


def _damaged_adapter(path: str, how: str) -> None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(path)
    info = json.loads(meta["lit"])
    if how in ("nan", "inf"):
        k = next(iter(tensors))
        tensors[k] = tensors[k].clone()
        tensors[k].view(-1)[0] = float(how)
    elif how == "bad_json":
        meta["lit"] = "{not json"
    elif how == "no_mode":
        info.pop("mode")
        meta["lit"] = json.dumps(info)
    elif how == "rank":
        info["lora_rank"] = "eight"
        meta["lit"] = json.dumps(info)
    elif how == "not_lit":
        meta = {}
    elif how == "wrong_shape":
        k = next(iter(tensors))
        tensors[k] = torch.zeros(3, 3)
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
        return
    save_file(tensors, path, metadata=meta)


@pytest.mark.parametrize("how,match", [("nan", "non-finite"), ("inf", "non-finite"), ("bad_json", "damaged"),
                                       ("no_mode", "damaged"), ("rank", "damaged"), ("not_lit", "adapter"),
                                       ("wrong_shape", "don't fit"), ("truncated", "truncated")])
def test_bad_adapters(fuzz, capsys, models, adapter_towers, monkeypatch, how, match):
    from comfyui_lit.cli import common as cli_common

    monkeypatch.setattr(cli_common, "towers", lambda args: adapter_towers)
    path = save_adapter(LitModel(*adapter_towers, mode="head"), str(models / "lit" / f"{how}.safetensors"))
    _damaged_adapter(path, how)
    image = str(models / "x.png")
    from corpus import png

    png(image)
    _all_three(fuzz, capsys, lambda: load_adapter(path, *adapter_towers),
               lambda: LiTLoadAdapter().load(*adapter_towers, f"{how}.safetensors"),
               ["classify", image, "--adapter", path, "--labels", "a;b"], match)


def test_good_adapter_round_trips_through_node_and_cli(fuzz, capsys, models, adapter_towers, monkeypatch):
    from corpus import png

    from comfyui_lit.cli import common as cli_common

    monkeypatch.setattr(cli_common, "towers", lambda args: adapter_towers)
    path = save_adapter(LitModel(*adapter_towers, mode="head"), str(models / "lit" / "good.safetensors"))
    with torch.inference_mode():
        fuzz(lambda: LiTLoadAdapter().load(*adapter_towers, "good.safetensors"), "handled",
             check=lambda out: "good.safetensors: mode head" in out[1])
    image = png(str(models / "x.png"))
    from comfyui_lit import cli

    fuzz(lambda: cli.main(["classify", image, "--adapter", path, "--labels", "red;blue"]), "handled",
         check=lambda rc: rc == 0)
    assert "%" in capsys.readouterr().out
