"""The pack as ComfyUI sees it: imports without a host, under any folder name, with valid node schemas."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import comfyui_lit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_TYPES = {"IMAGE", "MASK", "LATENT", "MODEL", "VAE", "CLIP_VISION", "STRING", "INT", "FLOAT", "BOOLEAN",
               "CONDITIONING", "CLIP"}


def test_imports_without_comfyui():
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest, comfyui_lit; "
            "assert comfyui_lit.NODE_CLASS_MAPPINGS; "
            "assert not any(m == 'comfy' or m.startswith('comfy.') or m in ('folder_paths', 'server') "
            "for m in sys.modules), 'a host module was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_imports_by_path_like_comfyui_under_any_folder_name():
    """ComfyUI loads `custom_nodes/<folder>/__init__.py` under its full path, dots replaced by "_x_"."""
    name = "/opt/ComfyUI/custom_nodes/ComfyUI-LiT-main_x_git"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(comfyui_lit.NODE_CLASS_MAPPINGS)
        assert os.path.isdir(os.path.join(ROOT, module.WEB_DIRECTORY))
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_engine_never_imports_the_host():
    for dirpath, _, files in os.walk(os.path.join(ROOT, "models")):
        for f in files:
            if f.endswith(".py"):
                text = open(os.path.join(dirpath, f), encoding="utf-8").read()
                for bad in ("import comfy", "from comfy", "import folder_paths", "from server", "import server"):
                    assert bad not in text, f"models/{f} imports the host ({bad})"


NODES = sorted(comfyui_lit.NODE_CLASS_MAPPINGS.items())


@pytest.mark.parametrize("node_id,cls", NODES, ids=[n for n, _ in NODES])
def test_node_schema(node_id, cls):
    assert node_id.startswith("LiT")
    assert comfyui_lit.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (node_id, name)
            kind = entry[0]
            assert isinstance(kind, (str, list)), (node_id, name)
            opts = entry[1] if len(entry) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and opts.get("default", kind[0]) in kind, (node_id, name)
            elif kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], (node_id, name)
    assert isinstance(cls.RETURN_TYPES, tuple)
    assert callable(getattr(cls, cls.FUNCTION)), node_id
    assert cls.CATEGORY == "LiT" or cls.CATEGORY.startswith("LiT/")
    assert getattr(cls, "DESCRIPTION", "")
    if getattr(cls, "RETURN_NAMES", None):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    if getattr(cls, "OUTPUT_TOOLTIPS", None):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


def test_display_names_are_unique():
    names = list(comfyui_lit.NODE_DISPLAY_NAME_MAPPINGS.values())
    assert len(names) == len(set(names))


def test_pyproject_has_registry_metadata():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.importorskip("tomli")
        import tomli as tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        meta = tomllib.load(fh)
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("name", "version", "description", "license", "requires-python", "dependencies", "urls"):
        assert key in project
    assert "Repository" in project["urls"]
    for key in ("PublisherId", "DisplayName", "Icon", "includes"):
        assert key in comfy
    assert "comfyui" not in project["name"].lower()  # the registry asks names not to repeat "ComfyUI"
    torch_req = [d for d in project["dependencies"] if d.startswith("torch")]
    assert torch_req and "<" not in torch_req[0] and "==" not in torch_req[0]
    reqs = open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8").read()
    assert "--index-url" not in reqs and "--extra-index-url" not in reqs
    assert not [line for line in reqs.splitlines() if line.strip().startswith("torch")]


def test_loader_nodes_run_under_inference_mode(tmp_path, monkeypatch):
    from tiny_models import bert_tokenizer, tiny_bert, tiny_clip_vision

    from comfyui_lit.models.common.errors import LitError
    from comfyui_lit.nodes.loaders import (
        EMBEDDED_IMAGE,
        EMBEDDED_TEXT,
        LiTImageEncoderLoader,
        LiTTextEncoderLoader,
    )

    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path))
    folder = tmp_path / "text_encoders" / "tiny-bert"
    tok = bert_tokenizer(str(folder))
    tiny_bert(len(tok)).save_pretrained(str(folder))
    (tmp_path / "clip_vision").mkdir()
    tiny_clip_vision().save_pretrained(str(tmp_path / "clip_vision" / "tiny-clip"))

    text_choices = LiTTextEncoderLoader.INPUT_TYPES()["required"]["text_encoder"][0]
    image_choices = LiTImageEncoderLoader.INPUT_TYPES()["required"]["image_encoder"][0]
    assert "tiny-bert" in text_choices and text_choices[0] == EMBEDDED_TEXT
    assert "tiny-clip" in image_choices and image_choices[0] == EMBEDDED_IMAGE

    with torch.inference_mode():
        (text,) = LiTTextEncoderLoader().load("tiny-bert", "auto", "cpu")
        (image,) = LiTImageEncoderLoader().load("tiny-clip", "auto", "cpu")
        assert text.encode(["a cat"]).shape == (1, 128)
        assert image.encode(torch.rand(1, 16, 16, 3)).shape == (1, 64)
        with torch.inference_mode(False), torch.enable_grad():  # guidance later differentiates through the tower
            pixels = torch.rand(1, 16, 16, 3, requires_grad=True)
            image.embed(pixels).sum().backward()
            assert pixels.grad is not None and pixels.grad.abs().sum() > 0
        with pytest.raises(LitError) as err:
            LiTTextEncoderLoader().load("missing.safetensors", "auto", "cpu")
    message = str(err.value)
    assert "[LiT Load Text Encoder]" in message and "text_encoder" in message and "Fix:" in message


def test_suite_runs_from_a_clone_named_like_the_readme_says(tmp_path):
    """Cloned as ``ComfyUI-LiT`` (not a Python identifier) the tests must still collect and pass."""
    import shutil
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=root, capture_output=True, text=True, check=True).stdout.split()
    clone = tmp_path / "ComfyUI-LiT"
    for rel in files:
        if os.path.exists(os.path.join(root, rel)):
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(root, rel), clone / rel)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_losses.py"],
                         cwd=clone, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
