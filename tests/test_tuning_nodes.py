"""The locked-tuning and zero-shot nodes, called as ComfyUI calls them (under inference mode)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from shapes_data import synthetic_shapes, tiny_shapes_tower, write_shapes_folder

from comfyui_lit.models.common.errors import LitError
from comfyui_lit.models.towers.text_tower import load_text_tower
from comfyui_lit.nodes import host
from comfyui_lit.nodes.tuning import LiTDataset, LiTLoadAdapter, LiTLockedTuning, LiTSaveAdapter
from comfyui_lit.nodes.zero_shot import LiTScore, LiTSelectImages, LiTZeroShotClassify


@pytest.fixture(scope="module")
def towers():
    with torch.inference_mode():  # as ComfyUI's loader nodes would hand them over
        return tiny_shapes_tower(), load_text_tower()


@pytest.fixture()
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def _train(towers, dataset, *, steps=60, mode="head", events=None, monkeypatch=None):
    image, text = towers
    with torch.inference_mode():
        out = LiTLockedTuning().train(image, text, dataset, mode, "softmax", steps, 32, 3e-3, 0,
                                      lora_rank=4, validation_fraction=0.2, validate_every=20, unique_id="7")
    return out["result"]


def test_folder_dataset_tune_save_load_classify(towers, tmp_path, models_dir, monkeypatch):
    folder = write_shapes_folder(str(tmp_path / "shapes"), 96, seed=1)
    events = []
    monkeypatch.setattr(host, "send_event", lambda name, data: events.append((name, data)))
    monkeypatch.setattr("comfyui_lit.nodes.tuning.send_event", lambda name, data: events.append((name, data)))
    with torch.inference_mode():
        dataset, report = LiTDataset().load(folder, True)
    assert "96 images" in report
    model, train_report = _train(towers, dataset)
    assert "locked" in train_report and "Validation best" in train_report
    assert os.path.isdir(os.path.join(folder, ".lit_cache"))
    steps_seen = [d["step"] for name, d in events if name == "comfyui_lit.train" and not d.get("done")]
    assert steps_seen and steps_seen[-1] == 60 and all(d["node"] == "7" for _, d in events)
    assert any("val_i2t_r@1" in d["metrics"] for _, d in events)
    assert events[-1][1]["done"]

    with torch.inference_mode():
        path = LiTSaveAdapter().save(model, "sub/shapes", False)["result"][0]
        again = LiTSaveAdapter().save(model, "sub/shapes", False)["result"][0]
    assert path == str(models_dir / "lit" / "sub" / "shapes.safetensors") and os.path.isfile(path)
    assert again.endswith("shapes_0001.safetensors")  # never overwrites unless asked

    images, _, labels = synthetic_shapes(24, seed=99)
    names = sorted(set(labels))
    with torch.inference_mode():
        choices = LiTLoadAdapter.INPUT_TYPES()["required"]["adapter"][0]
        assert "sub/shapes.safetensors" in choices
        loaded, info = LiTLoadAdapter().load(*towers, "sub/shapes.safetensors", False)
        assert "mode head" in info
        best, probs_json, table = LiTZeroShotClassify().run(loaded, images, "\n".join(names), "{}", 2)["result"]
        ref_best = LiTZeroShotClassify().run(model, images, "\n".join(names), "{}", 2)["result"][0]
    assert best == ref_best  # save -> load gives the same answers
    data = json.loads(probs_json)
    assert len(data["images"]) == 24 and abs(sum(r["p"] for r in data["images"][0]) - 1) < 1e-4
    accuracy = sum(b == t for b, t in zip(best.splitlines(), labels, strict=True)) / len(labels)
    assert accuracy > 2.0 / len(names)  # well above chance after a few seconds of tuning
    assert table.splitlines()[0].startswith("image")


def test_score_and_select_nodes(towers, tmp_path):
    folder = write_shapes_folder(str(tmp_path / "s"), 64, seed=2)
    with torch.inference_mode():
        dataset, _ = LiTDataset().load(folder, True)
    model, _ = _train(towers, dataset, steps=40)
    images, _, labels = synthetic_shapes(12, seed=5)
    with torch.inference_mode():
        scores_json, table, first = LiTScore().run(model, images, "a red circle\na blue square")["result"]
        picked, idx, vals = LiTSelectImages().run(model, images, "a red circle", 3)["result"]
    scores = json.loads(scores_json)["scores"]
    assert len(scores) == 12 and len(scores[0]) == 2 and first == pytest.approx(scores[0][0], abs=1e-5)
    order = [int(i) for i in idx.split(",")]
    assert picked.shape == (3, *images.shape[1:]) and torch.equal(picked[0], images[order[0]])
    col = [row[0] for row in scores]
    assert order == sorted(range(12), key=lambda i: -col[i])[:3]
    assert [float(v) for v in vals.split(",")] == sorted([float(v) for v in vals.split(",")], reverse=True)


def test_in_graph_dataset_and_cancel_stops_the_prompt(towers, monkeypatch):
    images, captions, _ = synthetic_shapes(40, seed=3)
    text = "\n".join(" | ".join(c) for c in captions)
    with torch.inference_mode():
        dataset, report = LiTDataset().load("", True, images=images, captions=text)
    assert "40 images" in report

    calls = {"n": 0}

    class Cancelled(Exception):  # what ComfyUI's Cancel raises inside the host is its own exception type
        pass

    def cancel_at_step_15():
        calls["n"] += 1
        if calls["n"] >= 15:
            raise Cancelled

    monkeypatch.setattr("comfyui_lit.nodes.host.check_interrupted", cancel_at_step_15)
    # Count training steps only: the embedding pass checks for Cancel too (a Cancel there is tested in tests/fuzz).
    monkeypatch.setattr("comfyui_lit.nodes.tuning.embedding_progress", lambda: None)
    # The interruption leaves the node (ComfyUI then stops the prompt: no Save Adapter on a half-trained model)
    # at once: no further training step runs.
    with pytest.raises(Cancelled):
        _train(towers, dataset, steps=50)
    assert calls["n"] == 15


def test_node_errors_name_node_input_and_fix(towers, tmp_path, models_dir):
    with torch.inference_mode():
        with pytest.raises(LitError) as err:
            LiTDataset().load("", True)
        assert "[LiT Dataset]" in str(err.value) and "path" in str(err.value) and "Fix:" in str(err.value)
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(LitError, match=r"\[LiT Dataset\] input 'path'"):  # the node's input, not the engine's
            LiTDataset().load(str(empty), True)
        with pytest.raises(LitError, match=r"\[LiT Dataset\] input 'path'"):
            LiTDataset().load(str(tmp_path / "no_such_folder"), True)
        # ComfyUI shows '<module>.<class>': the pack's name, never the mangled custom_nodes path
        assert f"{LitError.__module__}.{LitError.__qualname__}" == "comfyui_lit.LitError"
        with pytest.raises(LitError, match="LiT Save Adapter"):
            LiTSaveAdapter().save(object(), "../escape", False)
        with pytest.raises(LitError, match=r"\[LiT Load Adapter\].*not found"):
            LiTLoadAdapter().load(*towers, "nothing.safetensors", False)


def test_dataset_is_changed_follows_the_folder(tmp_path):
    folder = write_shapes_folder(str(tmp_path / "d"), 4)
    before = LiTDataset.IS_CHANGED(path=folder)
    assert LiTDataset.IS_CHANGED(path=folder) == before
    (tmp_path / "d" / "extra.txt").write_text("a new caption")
    assert LiTDataset.IS_CHANGED(path=folder) != before
