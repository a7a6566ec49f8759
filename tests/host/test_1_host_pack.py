"""The pack as the real ComfyUI loads it: a clean import, every node in /object_info, its web and templates served."""

from __future__ import annotations

import re

from hostlib import PACK_NAME, ROOT, TEMPLATES

import comfyui_lit

OUR_MODULE = f"custom_nodes.{PACK_NAME}"


def test_pack_imports_with_no_error_or_warning(comfy):
    log = comfy.log_text()
    assert re.search(rf"\d+\.\d+ seconds: .*custom_nodes/{re.escape(PACK_NAME)}$", log, re.M), \
        "the pack is not in ComfyUI's import-times table:\n" + log[-3000:]
    assert "IMPORT FAILED" not in "\n".join(x for x in log.splitlines() if PACK_NAME in x)
    # Anything the pack (or a library while the pack imports) says in the log: warnings, errors, tracebacks.
    ours = []
    for line in log.splitlines():
        mentions = PACK_NAME in line or str(ROOT) in line or "comfyui_lit" in line or line.startswith("[LiT")
        if mentions and not re.search(r"\d+\.\d+ seconds: ", line):
            ours.append(line)
    assert not ours, "the pack logged at startup:\n" + "\n".join(ours)
    blocks = [b.split("\n\n")[0] for b in log.split("Traceback (most recent call last):")[1:]]
    assert not [b for b in blocks if PACK_NAME in b or str(ROOT) in b], "a traceback through the pack"


def test_every_node_is_in_object_info_with_category_and_tooltips(comfy):
    info = comfy.get("/object_info")
    ours = {name for name, d in info.items() if d.get("python_module") == OUR_MODULE}
    # The host sees exactly the nodes the pack defines: none lost to an import that fails only in ComfyUI.
    assert ours == set(comfyui_lit.NODE_CLASS_MAPPINGS), (sorted(set(comfyui_lit.NODE_CLASS_MAPPINGS) - ours),
                                                          sorted(ours - set(comfyui_lit.NODE_CLASS_MAPPINGS)))
    for name, cls in comfyui_lit.NODE_CLASS_MAPPINGS.items():
        d = info[name]
        assert d["category"] == cls.CATEGORY and d["category"].startswith("LiT"), name
        assert d["display_name"] == comfyui_lit.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert d["description"], f"{name} has no description"
        for section in ("required", "optional"):
            for inp, entry in d["input"].get(section, {}).items():
                opts = entry[1] if len(entry) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip in /object_info"
        assert len(d["output"]) == len(cls.RETURN_TYPES)
        if getattr(cls, "OUTPUT_TOOLTIPS", None):
            assert d["output_tooltips"] == list(cls.OUTPUT_TOOLTIPS)


def test_front_end_extension_and_templates_are_served(comfy):
    exts = comfy.get("/extensions")
    assert f"/extensions/{PACK_NAME}/js/lit_extension.js" in exts, exts
    listed = comfy.get("/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == sorted(p.stem for p in TEMPLATES), listed
    for p in TEMPLATES:
        status, body = comfy.request("GET", f"/api/workflow_templates/{PACK_NAME}/{p.name}")
        assert status == 200 and isinstance(body, dict) and body.get("nodes"), p.name
