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


def test_command_line_loads_every_feature():
    """`python -m comfyui_lit` imports the package (and transformers) before the CLI's torchvision repair ran."""
    run = subprocess.run([sys.executable, "-m", "comfyui_lit", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert "unavailable" not in run.stderr, run.stderr
    code = "import comfyui_lit; print(sorted(comfyui_lit.NODE_CLASS_MAPPINGS))"
    names = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "LiTImageEncoderLoader" in names.stdout and "LiTLockedTuning" in names.stdout, names.stderr


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


# ---- Registry / Manager readiness (issue 19) -------------------------------------------------------------------

def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


def _comfyignore() -> list[str]:
    with open(os.path.join(ROOT, ".comfyignore"), encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip() and not line.lstrip().startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    """gitignore-style matching, enough for the patterns we use (dir/, *.ext, name)."""
    import fnmatch

    parts = rel.split("/")
    for pat in patterns:
        if pat.endswith("/"):
            name = pat.rstrip("/").lstrip("/")
            if "/" in name:
                if rel.startswith(name + "/"):
                    return True
            elif name in parts[:-1]:
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def _shipped_files() -> list[str]:
    """What `comfy node publish` would pack: the git-tracked files not excluded by .comfyignore."""
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    patterns = _comfyignore()
    return [f for f in files if os.path.exists(os.path.join(ROOT, f)) and not _ignored(f, patterns)]


def test_license_file_matches_pyproject():
    license_ = _pyproject()["project"]["license"]
    spdx = license_.get("text") if isinstance(license_, dict) else license_
    assert spdx == "Apache-2.0"
    text = open(os.path.join(ROOT, "LICENSE"), encoding="utf-8").read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and len(text) > 10000


def test_icon_and_urls_point_at_this_repository():
    meta = _pyproject()
    urls = meta["project"].get("urls", {})
    placeholders = ("example.com", "your-", "yourname", "<", "TODO", "xxx", "changeme")
    for key, url in urls.items():
        assert url.startswith("https://") and not any(p in url for p in placeholders), (key, url)
    repo = urls.get("Repository", "").rstrip("/")
    icon = meta["tool"]["comfy"].get("Icon")
    if icon:
        # raw.githubusercontent.com/<owner>/<repo>/<branch>/<path>: the same repository, a file that exists in it.
        prefix = "https://raw.githubusercontent.com/"
        assert icon.startswith(prefix), icon
        owner, name, _branch, *path = icon[len(prefix):].split("/")
        assert repo == f"https://github.com/{owner}/{name}", (icon, repo)
        rel = os.path.join(ROOT, *path)
        assert os.path.isfile(rel), f"Icon points at {'/'.join(path)}, which is not in the repository"
        from PIL import Image
        with Image.open(rel) as im:
            assert im.format == "PNG" and im.size[0] == im.size[1] >= 128


def test_comfyignore_keeps_tests_bench_and_docs_out():
    shipped = _shipped_files()
    assert shipped and "__init__.py" in shipped and "pyproject.toml" in shipped
    assert "LICENSE" in shipped and "requirements.txt" in shipped
    for top in ("tests/", "bench/", "docs/", ".ci/"):
        assert not [f for f in shipped if f.startswith(top)], top
    # What the node needs at run time is shipped.
    for needed in ("web/js/lit_extension.js", "nodes/__init__.py", "models/__init__.py"):
        assert needed in shipped, needed


def test_every_template_has_a_jpg_thumbnail():
    from PIL import Image

    templates = sorted(f for f in os.listdir(os.path.join(ROOT, "example_workflows")) if f.endswith(".json"))
    assert templates
    for name in templates:
        thumb = os.path.join(ROOT, "example_workflows", name[:-5] + ".jpg")
        assert os.path.isfile(thumb), f"{name} has no thumbnail {os.path.basename(thumb)}"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and min(im.size) >= 100, (name, im.format, im.size)


def test_templates_have_descriptive_text():
    """A template shows as its file name unless it says what it does; ours carry a Note saying what and how."""
    import json

    folder = os.path.join(ROOT, "example_workflows")
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
        wf = json.load(open(os.path.join(folder, name), encoding="utf-8"))
        notes = [n for n in wf["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert notes, f"{name} has no Note node explaining it"
        text = " ".join(str(v) for n in notes for v in n.get("widgets_values", []))
        assert len(text) > 80, (name, text)


SCANNED_IMPORTS = {"subprocess", "socket", "requests", "httpx", "aiohttp", "urllib.request", "http.client", "pip",
                   "ftplib", "telnetlib"}


def test_shipped_code_has_none_of_the_registry_scanners_patterns():
    import ast
    import re

    problems = []
    for rel in _shipped_files():
        path = os.path.join(ROOT, rel)
        if rel.endswith(".py"):
            tree = ast.parse(open(path, encoding="utf-8").read(), rel)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    if node.func.id in ("eval", "exec", "__import__"):
                        problems.append(f"{rel}:{node.lineno} {node.func.id}()")
                    if node.func.id == "compile":
                        problems.append(f"{rel}:{node.lineno} compile()")
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    base = node.func.value
                    if isinstance(base, ast.Name) and base.id == "os" and node.func.attr in (
                            "system", "popen", "execv", "execvp", "spawnv", "spawnl", "startfile"):
                        problems.append(f"{rel}:{node.lineno} os.{node.func.attr}()")
                    if node.func.attr in ("hf_hub_download", "snapshot_download", "urlretrieve", "urlopen"):
                        problems.append(f"{rel}:{node.lineno} {node.func.attr}() (network)")
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    for n in names:
                        if n in SCANNED_IMPORTS or n.split(".")[0] in ("subprocess", "requests", "httpx", "pip"):
                            problems.append(f"{rel}:{node.lineno} import {n}")
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if re.search(r"-m\s+pip\s+install|pip\.main|ensurepip", node.value):
                        problems.append(f"{rel}:{node.lineno} runtime install string")
                    if re.match(r"https?://", node.value) and "raw.githubusercontent" not in node.value:
                        problems.append(f"{rel}:{node.lineno} URL literal {node.value[:60]}")
        elif rel.endswith((".js", ".mjs")):
            text = open(path, encoding="utf-8").read()
            for pat in (r"\beval\s*\(", r"new\s+Function\s*\(", r"fetch\s*\(\s*['\"`]https?://",
                        r"import\s*\(\s*['\"`]https?://", r"XMLHttpRequest"):
                for m in re.finditer(pat, text):
                    problems.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1} {m.group(0)}")
    assert not problems, "\n".join(problems)


def test_requirements_never_touch_torch_or_triton():
    import re

    lines = [line.split("#")[0].strip() for line in open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8")]
    names = [re.split(r"[<>=!~;\[ ]", line)[0].lower() for line in lines if line]
    assert names
    for bad in ("torch", "torchvision", "torchaudio", "triton", "xformers", "nvidia-"):
        assert not [n for n in names if n == bad or n.startswith(bad + "-") or (bad.endswith("-") and
                                                                                n.startswith(bad))], bad
    assert not [line for line in lines if line.startswith("-")], "no pip options (Manager installs line by line)"
    # pyproject's dependencies are what `pip install .` gets: the same set, plus torch (unpinned, ComfyUI's own).
    deps = [re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in _pyproject()["project"]["dependencies"]]
    assert set(deps) - {"torch"} == set(names), (sorted(deps), sorted(names))


def test_embedded_text_tower_needs_neither_sentence_transformers_nor_sklearn():
    """They arrive only as the MiniLM weights package's dependencies (README, Install); the pack must not need them."""
    code = ("import sys; sys.path.insert(0, 'tests'); import conftest; "
            "sys.modules['sentence_transformers'] = None; sys.modules['sklearn'] = None; "  # any import now fails
            "from comfyui_lit.models.towers.text_tower import load_text_tower; "
            "t = load_text_tower(None); e = t.encode(['a dog on the grass']); "
            "assert e.shape[0] == 1 and e.abs().sum() > 0, e.shape; "
            "assert 'sentence_transformers' not in [m for m, v in sys.modules.items() if v is not None]")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
