"""Every template, as a new user meets it: loaded from ComfyUI's template route into the real front-end, converted to
API format in the page, queued with Run, and its outputs checked; the widgets drawn from the real run.

Templates are found on disk, not listed here; the ones that save an adapter run first, because the others load it.
What is checked per node type applies to whichever templates contain that node.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
from hostlib import KNOWN_FRONTEND_ERRORS, PACK_NAME, ROOT, TEMPLATES
from PIL import Image

import comfyui_lit

# "About a minute on a CPU" (issue 19), with headroom for a CI machine shared with other jobs.
TEMPLATE_BUDGET_S = float(os.environ.get("LIT_TEMPLATE_BUDGET_S", "240"))
RECORDED = json.loads((ROOT / "tests" / "e2e" / "fixtures" / "recorded.json").read_text())
NOTE_TYPES = {"Note", "MarkdownNote"}


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _run_order(paths):
    def rank(p):
        types = {n["type"] for n in _load(p)["nodes"]}
        return (0 if "LiTSaveAdapter" in types else 1 if "LiTLoadAdapter" not in types else 2, p.name)
    return sorted(paths, key=rank)


ORDERED = _run_order(TEMPLATES)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _image(comfy, ref) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(comfy.view(ref))).convert("RGB"))


def _shape(value):
    """The structure of a ui payload (keys and value types, first element of lists), to compare with the record."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


RECORDED_UI = {"LiTZeroShotClassify": RECORDED["classify_ui"], "LiTScore": RECORDED["score_ui"],
               "LiTRestorationSampler": RECORDED["compare_ui"], "LiTEnhancementSampler": RECORDED["compare_ui"]}


# Failed loads that are the host's business on a fresh user, not the pack's: optional user files
# (user.css, userdata listings, comfy.templates.json), the favicon, the release check on api.comfy.org. A failed
# load of anything of ours (our extension, templates, previews, the prompt) still counts.
OUR_URLS = (f"/extensions/{PACK_NAME}/", f"/workflow_templates/{PACK_NAME}/", "/view?", "/api/prompt")


def _console_errors(run: dict) -> list[str]:
    errs = list(run["exceptions"])
    for c in run["console"]:
        if c["level"] == "log-error" and c["text"].startswith("Failed to load resource"):
            if any(u in c["text"] for u in OUR_URLS):
                errs.append(c["text"])
        elif c["level"] in ("error", "log-error", "assert"):
            errs.append(c["text"])
    return [e for e in errs if not any(k in e for k in KNOWN_FRONTEND_ERRORS)]


@pytest.mark.parametrize("path", ORDERED, ids=[p.stem for p in ORDERED])
def test_template_runs_in_the_real_front_end(comfy, update_screenshots, path):
    wf = _load(path)
    name = path.stem
    shot = str(ROOT / "docs" / f"template_{name}.png") if update_screenshots else None
    t0 = time.time()
    run = comfy.drive(name, queue=True, reload=True, screenshot=shot, timeout=max(900, TEMPLATE_BUDGET_S + 60))
    comfy.runs[name] = run
    comfy.converted[name] = run["api"]

    # Loaded as is: no dialog (missing nodes, errors), every node type known, our extension active.
    assert run["load"] == "loaded", run["load"]
    graph = run["graph"]
    assert not graph["dialogs"], f"{name}: a dialog opened on load: {graph['dialogs']}"
    unknown = [n["type"] for n in graph["nodes"] if not n["registered"]]
    assert not unknown, f"{name}: node types the host does not know: {unknown}"
    assert "comfyui_lit.frontend" in graph["extensions"]
    assert not _console_errors(run), f"{name}: console errors: {_console_errors(run)}"

    # Converted in the page: every executable node is in the API prompt with its class.
    api = run["api"]
    by_id = {str(n["id"]): n for n in wf["nodes"]}
    for nid, node in by_id.items():
        if node["type"] in NOTE_TYPES or node.get("mode", 0) != 0:
            continue
        assert nid in api and api[nid]["class_type"] == node["type"], (name, nid, node["type"])

    # Queued with Run, finished without error, within the budget.
    assert run["prompt_id"], f"{name}: pressing Run queued nothing"
    assert run["finished"], f"{name}: did not finish within {max(900, TEMPLATE_BUDGET_S + 60)} s"
    entry = comfy.get(f"/history/{run['prompt_id']}")[run["prompt_id"]]
    errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", f"{name}: {errors}"
    assert run["run_seconds"] <= TEMPLATE_BUDGET_S, f"{name} took {run['run_seconds']} s on this CPU"
    outputs = entry["outputs"]
    run["seconds"] = round(time.time() - t0, 1)
    print(f"\n[host] {name}: ran in {run['run_seconds']} s (page + run {run['seconds']} s)")
    for nid, node in api.items():
        if node["class_type"] in ("PreviewImage", "SaveImage", "PreviewAny"):
            assert nid in outputs, f"{name}: output node {nid} ({node['class_type']}) produced nothing"

    _check_outputs(comfy, name, api, outputs)
    _check_widgets(name, api, outputs, run)
    if shot:
        # The Templates dialog's thumbnail (<name>.jpg beside the template): the real graph after its run.
        with Image.open(shot) as im:
            thumb = im.convert("RGB")
            thumb.thumbnail((640, 640))
            thumb.save(path.with_suffix(".jpg"), quality=85)


def _input_photo(comfy, api, node_id) -> np.ndarray | None:
    """The pixels that the LoadImage upstream of ``node_id`` read, if there is one."""
    seen = set()
    stack = [node_id]
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = api[nid]
        if node["class_type"] == "LoadImage":
            return np.asarray(Image.open(comfy.comfy_dir / "input" / node["inputs"]["image"]).convert("RGB"))
        stack += [v[0] for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return None


def _previews_of(api, outputs, source_id):
    """Images of the PreviewImage/SaveImage nodes fed directly by ``source_id``."""
    refs = []
    for nid, node in api.items():
        if node["class_type"] in ("PreviewImage", "SaveImage"):
            src = node["inputs"].get("images")
            if isinstance(src, list) and src[0] == source_id and nid in outputs:
                refs += outputs[nid].get("images", [])
    return refs


def _check_outputs(comfy, name, api, outputs):
    for nid, node in api.items():
        kind, ui = node["class_type"], outputs.get(nid, {})
        if kind == "LiTSaveAdapter":
            (line,) = ui["text"]
            assert line.startswith("saved "), line
            saved = line[len("saved "):].split(" ('")[0]  # the path, without a note about a new name
            assert os.path.isfile(saved) and saved.endswith(".safetensors"), saved
            assert os.path.dirname(saved) == str(comfy.comfy_dir / "models" / "lit"), saved
            from safetensors import safe_open
            with safe_open(saved, "pt") as fh:  # a real adapter: metadata and finite tensors
                assert fh.metadata() and fh.keys()
                for key in fh.keys():
                    assert bool(np.isfinite(fh.get_tensor(key).float().numpy()).all()), key
            # Reloadable: the host lists it for LiT Load Adapter (the templates after this one load it).
            choices = comfy.get("/object_info/LiTLoadAdapter")["LiTLoadAdapter"]["input"]["required"]["adapter"][0]
            assert os.path.basename(saved) in choices, choices
        elif kind == "LiTZeroShotClassify":
            (data,) = ui["lit_probs"]
            assert data["images"], name
            for ranked in data["images"]:
                assert {r["label"] for r in ranked} == set(data["labels"])
                assert abs(sum(r["p"] for r in ranked) - 1) < 1e-3, ranked
        elif kind == "LiTRestorationSampler":
            clean = _input_photo(comfy, api, nid)
            restored = [_image(comfy, r) for r in _previews_of(api, outputs, nid)]
            damaged_id = node["inputs"]["image"][0]
            damaged = [_image(comfy, r) for r in _previews_of(api, outputs, damaged_id)]
            assert clean is not None and restored and damaged, name
            assert restored[0].shape == clean.shape, f"size changed: {clean.shape} -> {restored[0].shape}"
            gain = _psnr(restored[0], clean) - _psnr(damaged[0], clean)
            print(f"[host] {name}: restored PSNR {_psnr(restored[0], clean):.2f} dB vs damaged "
                  f"{_psnr(damaged[0], clean):.2f} dB")
            assert gain > 3, f"restoration gained only {gain:.2f} dB"
        elif kind == "LiTEnhancementSampler":
            clean = _input_photo(comfy, api, nid)
            enhanced = [_image(comfy, r) for r in _previews_of(api, outputs, nid)]
            assert clean is not None and enhanced, name
            assert enhanced[0].shape == clean.shape
            psnr = _psnr(enhanced[0], clean)
            print(f"[host] {name}: enhanced vs clean input PSNR {psnr:.2f} dB")
            assert psnr > 20, f"a clean photo was changed a lot: PSNR {psnr:.2f} dB"


def _check_widgets(name, api, outputs, run):
    """The ui payloads of the real run have the recorded shape, and our widgets drew them (and again after reload)."""
    widgets = {w["id"]: w for w in run["widgets"]}
    reloaded = {w["id"]: w for w in run.get("widgets_after_reload", [])}
    for nid, node in api.items():
        kind, ui = node["class_type"], outputs.get(nid, {})
        if kind in RECORDED_UI:
            recorded = RECORDED_UI[kind]
            assert set(recorded) <= set(ui), (kind, sorted(ui), sorted(recorded))
            assert _shape({k: ui[k] for k in recorded}) == _shape(recorded), (kind, _shape(ui), _shape(recorded))
        w = widgets.get(nid)
        if kind in ("LiTZeroShotClassify", "LiTScore"):
            assert w and w["barsImages"] >= 1 and w["barRows"] >= 1, (name, w)
            labels = set(json.loads(json.dumps(ui["lit_probs"][0]["labels"]))) if "lit_probs" in ui else \
                set(ui["lit_scores"][0]["prompts"])
            assert set(w["barLabels"]) <= labels and w["barLabels"], (w["barLabels"], labels)
            assert reloaded[nid]["barRows"] == w["barRows"], "bars lost after reload"
        elif kind in ("LiTRestorationSampler", "LiTEnhancementSampler"):
            assert w and w["compareCount"] == str(len(ui["lit_compare"])), (name, w)
            assert reloaded[nid]["compareCount"] == w["compareCount"], "slider lost after reload"
        elif kind == "LiTSaveAdapter":
            assert w and w["savedPath"] == ui["text"][0], (name, w)
            assert reloaded[nid]["savedPath"] == w["savedPath"], "saved path lost after reload"
        elif kind == "LiTLockedTuning":
            assert w and w["trainDone"] == "true" and int(w["trainStep"]) >= 1, (name, w)
            assert reloaded[nid]["trainStep"] == w["trainStep"], "chart lost after reload"
            # The report stays readable after a reload (core's Preview Any forgets it).
            assert w["trainReport"] == ui["text"][0][:4000], (w["trainReport"], ui["text"][0][:200])
            assert reloaded[nid]["trainReport"] == w["trainReport"], "report lost after reload"
    # Every node type the front-end decorates carries the LiT badge.
    for n in run["graph"]["nodes"]:
        if n["type"] in comfyui_lit.NODE_CLASS_MAPPINGS:
            assert n["badges"] >= 1, (name, n["type"])
    assert PACK_NAME
