"""The example workflows: every node exists, widget values line up with the schema, and the graph runs.

The graph is executed in-process with the pack's own node classes (the few core nodes they use are stood in
for), as ComfyUI would after converting the UI format, so a mis-wired template fails here, not in a user's hands.
"""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import comfyui_lit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOWS = sorted(glob.glob(os.path.join(ROOT, "example_workflows", "*.json")))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CORE_NODES = {"LoadImage", "PreviewImage", "PreviewAny", "SaveImage", "LoadImageMask"}
NOTE_NODES = {"Note", "MarkdownNote"}  # shown in the editor, never executed


def _widget_names(cls) -> list[str]:
    names = []
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                names.append(name)
                # The front-end adds a "fixed/randomize" control (one more value) to these, as it does for seeds.
                if opts.get("control_after_generate") or name in ("seed", "noise_seed"):
                    names.append(None)
    return names


def _load(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def test_there_are_example_workflows():
    names = {os.path.basename(p) for p in WORKFLOWS}
    assert {"lit_1_train_adapter_run_first.json", "lit_2_classify_and_select.json"} <= names


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(p) for p in WORKFLOWS])
def test_workflow_matches_the_node_schemas(path):
    wf = _load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for n in wf["nodes"]:
        assert n["type"] in comfyui_lit.NODE_CLASS_MAPPINGS or n["type"] in CORE_NODES | NOTE_NODES, n["type"]
        cls = comfyui_lit.NODE_CLASS_MAPPINGS.get(n["type"])
        if cls is None:
            continue
        linked_widgets = {i["name"] for i in n["inputs"] if i.get("widget")}
        expected = [w for w in _widget_names(cls)]
        # a widget turned into an input keeps no value slot only if it is linked
        expected = [w for w in expected if w not in linked_widgets]
        assert len(n["widgets_values"]) == len(expected), (n["type"], n["widgets_values"], expected)
        assert len(n["outputs"]) == len(cls.RETURN_TYPES)
        for out, kind in zip(n["outputs"], cls.RETURN_TYPES, strict=True):
            assert out["type"] == kind
    for link_id, src, sslot, dst, dslot, kind in wf["links"]:
        assert nodes[src]["outputs"][sslot]["type"] == kind
        assert link_id in nodes[src]["outputs"][sslot]["links"]
        target = nodes[dst]["inputs"][dslot]
        assert target["link"] == link_id and target["type"] in (kind, "*")


def _set_widget(node, name, value):
    """Change a widget value by name, as a user would in the editor."""
    cls = comfyui_lit.NODE_CLASS_MAPPINGS[node["type"]]
    linked = {i["name"] for i in node["inputs"] if i.get("link") is not None}
    names = [w for w in _widget_names(cls) if w not in linked]
    node["widgets_values"][names.index(name)] = value


def _run_graph(wf, core):
    """Execute a UI-format workflow with our node classes; ``core`` maps core node types to stand-ins."""
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {lid: (src, sslot) for lid, src, sslot, *_ in wf["links"]}
    results: dict[int, tuple] = {}

    def run(node_id):
        if node_id in results:
            return results[node_id]
        n = nodes[node_id]
        kwargs = {}
        for inp in n["inputs"]:
            if inp["link"] is not None:
                src, sslot = links[inp["link"]]
                kwargs[inp["name"]] = run(src)[sslot]
        cls = comfyui_lit.NODE_CLASS_MAPPINGS.get(n["type"])
        if cls is None:
            results[node_id] = core[n["type"]](**kwargs)
            return results[node_id]
        linked = set(kwargs)
        names = [w for w in _widget_names(cls) if w not in linked]
        for name, value in zip(names, n["widgets_values"], strict=True):
            if name is not None:
                kwargs[name] = value
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        results[node_id] = out["result"] if isinstance(out, dict) else out
        return results[node_id]

    with torch.inference_mode():
        for node_id, node in nodes.items():
            if node["type"] not in NOTE_NODES:
                run(node_id)
    return results


def test_train_then_classify_workflows_run_end_to_end(tmp_path, monkeypatch):
    """The two templates in sequence, as a user would: train + save an adapter, then load it and classify."""
    from shapes_data import synthetic_shapes, write_shapes_folder

    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)
    write_shapes_folder(str(tmp_path / "lit_dataset"), 48, seed=4)
    shown = []
    core = {"PreviewAny": lambda source: shown.append(source) or (),
            "PreviewImage": lambda images: shown.append(images) or ()}

    train = _load(os.path.join(ROOT, "example_workflows", "lit_1_train_adapter_run_first.json"))
    for n in train["nodes"]:  # keep CI quick: few steps and the cheap adapter mode
        if n["type"] == "LiTLockedTuning":
            _set_widget(n, "mode", "head")
            _set_widget(n, "steps", 20)
    _run_graph(train, core)
    assert os.path.isfile(tmp_path / "models" / "lit" / "my_lit_adapter.safetensors")
    assert "LiT locked tuning" in shown[0]

    images, _, _ = synthetic_shapes(3, seed=1)
    core["LoadImage"] = lambda: (images, torch.zeros(3, 32, 32))
    classify = _load(os.path.join(ROOT, "example_workflows", "lit_2_classify_and_select.json"))
    _run_graph(classify, core)
    table, picked = shown[1], shown[2]
    assert table.splitlines()[0].startswith("image") and len(table.splitlines()) == 2 + 3
    assert picked.shape == (1, 32, 32, 3)

    enhance = _load(os.path.join(ROOT, "example_workflows", "lit_3_enhance_photo.json"))
    for n in enhance["nodes"]:
        if n["type"] == "LiTEnhancementSampler":
            _set_widget(n, "steps", 3)
            _set_widget(n, "samples", 1)
    _run_graph(enhance, core)
    enhanced, scores = shown[3], shown[4]
    assert enhanced.shape == images.shape and "score" in scores and "->" in scores


def test_restore_workflow_runs_end_to_end():
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[100:196, 180:276].copy()).float().div(255)[None]
    shown = []
    core = {"LoadImage": lambda: (photo, torch.zeros(1, 96, 96)),
            "PreviewImage": lambda images: shown.append(images) or ()}
    _run_graph(_load(os.path.join(ROOT, "example_workflows", "lit_4_restore_photo.json")), core)
    damaged, restored = shown

    def psnr(a, b):
        return float(-10 * torch.log10(((a - b) ** 2).mean()))

    assert psnr(restored, photo) > psnr(damaged, photo) + 5


def test_classify_without_an_adapter_says_to_run_the_train_template_first(tmp_path, monkeypatch):
    """A new user who opens the classify template first gets told the order, not "'(no adapters…)' not found"."""
    from comfyui_lit.models.common.errors import LitError
    from comfyui_lit.nodes.tuning import LiTLoadAdapter

    monkeypatch.setenv("COMFYUI_LIT_MODELS", str(tmp_path / "models"))
    (choice,) = LiTLoadAdapter.INPUT_TYPES()["required"]["adapter"][0]
    with pytest.raises(LitError) as err, torch.inference_mode():
        LiTLoadAdapter().load(None, None, choice)
    msg = str(err.value)
    assert "[LiT Load Adapter]" in msg and "'adapter'" in msg and "Fix:" in msg
    train = [os.path.basename(p)[:-5] for p in WORKFLOWS if "LiTSaveAdapter" in open(p, encoding="utf-8").read()]
    assert train and train[0] in msg, msg
