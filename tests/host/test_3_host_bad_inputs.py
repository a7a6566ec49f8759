"""Bad inputs through the real /prompt: the error in /history names the node, the input and the fix, and the server
stays up. The prompts are the templates as the page converted them, with one input changed."""

from __future__ import annotations

import copy
import pickle

import pytest
from hostlib import TEMPLATES

import comfyui_lit

NAMES = comfyui_lit.NODE_DISPLAY_NAME_MAPPINGS


def _ensure_adapter(comfy) -> None:
    """The classify prompts load the adapter the train template saves; run it first when run on their own."""
    if any((comfy.comfy_dir / "models" / "lit").glob("*.safetensors")):
        return
    for path in TEMPLATES:
        if "LiTSaveAdapter" in path.read_text(encoding="utf-8"):
            comfy.drive(path.stem, queue=True)
            return


def _api_with(comfy, node_type: str) -> dict:
    """The page-converted API prompt of the first template that has ``node_type``."""
    if node_type != "LiTDataset":
        _ensure_adapter(comfy)
    for path in TEMPLATES:
        if node_type in path.read_text(encoding="utf-8"):
            api = comfy.converted.get(path.stem) or comfy.drive(path.stem)["api"]
            comfy.converted[path.stem] = api
            if any(n["class_type"] == node_type for n in api.values()):
                return copy.deepcopy(api)
    pytest.fail(f"no template uses {node_type}")


def _node(api: dict, node_type: str) -> str:
    return next(nid for nid, n in api.items() if n["class_type"] == node_type)


def _expect_error(comfy, api: dict, node_type: str, input_name: str, *fix_words: str) -> str:
    status, body = comfy.queue(api)
    assert status == 200, body
    entry = comfy.wait(body["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "error", entry["status"]
    (err,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    msg = err["exception_message"]
    assert err["node_type"] == node_type, err
    assert f"[{NAMES[node_type]}]" in msg, msg
    assert f"'{input_name}'" in msg, msg
    assert "Fix:" in msg, msg
    for word in fix_words:
        assert word.lower() in msg.lower(), (word, msg)
    # A user-facing error type, not a path-mangled module name.
    assert err["exception_type"].endswith("LitError") and "custom_nodes" not in err["exception_type"], err
    assert comfy.alive(), "the server went down"
    return msg


def test_missing_dataset_folder(comfy):
    api = _api_with(comfy, "LiTDataset")
    api[_node(api, "LiTDataset")]["inputs"]["path"] = "no_such_folder_for_lit"
    _expect_error(comfy, api, "LiTDataset", "path")


def test_empty_dataset_folder(comfy):
    (comfy.comfy_dir / "input" / "lit_empty_folder").mkdir(exist_ok=True)
    api = _api_with(comfy, "LiTDataset")
    api[_node(api, "LiTDataset")]["inputs"]["path"] = "lit_empty_folder"
    _expect_error(comfy, api, "LiTDataset", "path")


def test_renamed_pickle_as_adapter(comfy):
    fake = comfy.comfy_dir / "models" / "lit" / "renamed_pickle.safetensors"
    fake.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    try:
        api = _api_with(comfy, "LiTLoadAdapter")
        api[_node(api, "LiTLoadAdapter")]["inputs"]["adapter"] = fake.name
        _expect_error(comfy, api, "LiTLoadAdapter", "adapter")
    finally:
        fake.unlink()


def test_empty_labels(comfy):
    api = _api_with(comfy, "LiTZeroShotClassify")
    api[_node(api, "LiTZeroShotClassify")]["inputs"]["labels"] = "  \n \n"
    _expect_error(comfy, api, "LiTZeroShotClassify", "labels")
