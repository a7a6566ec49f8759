"""Front-end checks: the pure JS logic under Node's test runner, and the real extension mounted in headless Chromium.

Both need external programs (``node`` and Debian's ``chromium``); they FAIL, not skip, when those are missing so CI
cannot go green without running them. ``LIT_CHROMIUM`` / ``LIT_NODE`` override the binaries.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "tests" / "e2e"
WEB = REPO / "web"
PACK = "ComfyUI-LiT"


def _binary(env: str, *names: str) -> str:
    path = os.environ.get(env) or next((p for n in names if (p := shutil.which(n))), None)
    if not path:
        pytest.fail(f"{' or '.join(names)} not found: install it (CI: apt-get install -y {names[0]}) or set ${env}.")
    return path


def test_js_unit_tests_pass() -> None:
    node = _binary("LIT_NODE", "node", "nodejs")
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "js").glob("*.test.mjs"))
    assert len(files) >= 4, files
    # Explicit files: Node 18 takes a directory, Node 22 expects glob patterns; a file list works for both.
    proc = subprocess.run([node, "--test", *files], cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"^# pass (\d+)", out, re.M)
    assert passed and int(passed.group(1)) >= 20, out[-2000:]
    assert re.search(r"^# fail 0", out, re.M), out[-2000:]


class _Handler(SimpleHTTPRequestHandler):
    """Serves the pack's web/ where ComfyUI would, stub app/api modules, the e2e page, and /api/view images."""

    images: Path

    def translate_path(self, path: str) -> str:
        route = urllib.parse.urlsplit(path).path
        if route in ("/", "/index.html"):
            return str(E2E / "index.html")
        if route.startswith("/scripts/"):
            return str(E2E / "stubs" / Path(route).name)
        if route.startswith(f"/extensions/{PACK}/"):
            return str(WEB / route[len(f"/extensions/{PACK}/"):])
        if route.startswith("/e2e/"):
            return str(E2E / route[len("/e2e/"):])
        return str(E2E / "missing")

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        parts = urllib.parse.urlsplit(self.path)
        if parts.path == "/api/view":
            q = urllib.parse.parse_qs(parts.query)
            target = self.images / Path(q.get("filename", [""])[0]).name
            if q.get("type") != ["temp"] or not target.is_file():
                self.send_error(404)
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


SimpleHTTPRequestHandler.extensions_map.update({".js": "text/javascript", ".mjs": "text/javascript"})


def _write_images(folder: Path) -> None:
    from PIL import Image

    for i, (before, after) in enumerate([((200, 40, 40), (40, 200, 40)), ((40, 40, 200), (200, 200, 40))]):
        Image.new("RGB", (64, 48), before).save(folder / f"before_{i}.png")
        Image.new("RGB", (64, 48), after).save(folder / f"after_{i}.png")


@pytest.fixture(scope="module")
def page_result(tmp_path_factory) -> dict:
    chromium = _binary("LIT_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    images = tmp_path_factory.mktemp("view")
    _write_images(images)
    handler = type("Handler", (_Handler,), {"images": images})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(E2E)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    profile = tmp_path_factory.mktemp("chromium-profile")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--window-size=1400,1400", "--virtual-time-budget=20000",
             "--dump-dom", url],
            capture_output=True, text=True, timeout=90)
    finally:
        server.shutdown()
        server.server_close()
    match = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"no result in the page (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    text = html.unescape(match.group(1))
    assert text != "pending", "the harness did not finish: " + proc.stderr[-2000:]
    return json.loads(text)


def test_page_ran_without_errors(page_result: dict) -> None:
    assert page_result["errors"] == []
    assert "comfyui_lit.frontend" in page_result["registered"]


def test_colours_badges_and_widgets_per_category(page_result: dict) -> None:
    style = page_result["style"]
    assert style["KSampler"] == {"bgcolor": None, "badges": [], "widgets": [], "serialize": []}
    root, enh, res = style["LiTDataset"], style["LiTEnhancementSampler"], style["LiTRestorationSampler"]
    assert len({root["bgcolor"], enh["bgcolor"], res["bgcolor"]}) == 3
    assert root["badges"] == [] and enh["badges"] == ["enhance"] and res["badges"] == ["restore"]
    assert root["widgets"] == []
    for name in ("LiTLockedTuning", "LiTZeroShotClassify", "LiTScore", "LiTEnhancementSampler"):
        assert style[name]["widgets"] == ["lit_view"], name
        assert style[name]["serialize"] == [False], name  # never sent to the server as an input


def test_training_chart_draws_recorded_events(page_result: dict) -> None:
    fx = json.loads((E2E / "fixtures" / "recorded.json").read_text())
    events = fx["train_events"]
    empty, mid, done = page_result["trainEmpty"], page_result["trainMid"], page_result["trainDone"]
    assert empty["lossPixels"] == 0 and "Waiting" in empty["summary"]
    assert mid["lossPixels"] > 50 and mid["done"] == "false"
    assert mid["step"] == str(events[len(events) // 2 - 1]["step"])
    assert done["done"] == "true" and done["step"] == str(events[-1]["step"])
    assert done["lossPixels"] > mid["lossPixels"]
    assert done["recallPixels"] > 10
    assert {"loss", "i2t_r@1", "t2i_r@1"} <= set(done["legend"])
    final = events[-1]["metrics"]
    assert f"{100 * final['i2t_r@1']:.1f}%" in done["summary"] and "best:" in done["summary"]
    assert done["canvasSize"][0] > 200 and done["canvasSize"][1] > 100
    assert page_result["trainSaved"] == sum(1 for e in events if "loss" in e["metrics"] and not e.get("done"))


def test_training_chart_survives_reload(page_result: dict) -> None:
    done, again = page_result["trainDonePinned"], page_result["trainReloaded"]
    assert again["summary"] == done["summary"]
    assert again["legend"] == done["legend"]
    assert again["canvasSize"] == done["canvasSize"]
    assert abs(again["lossPixels"] - done["lossPixels"]) <= 0.05 * done["lossPixels"], (done, again)


def test_classify_bars(page_result: dict) -> None:
    fx = json.loads((E2E / "fixtures" / "recorded.json").read_text())
    ranked = fx["classify_ui"]["lit_probs"][0]["images"][0]
    c = page_result["classify"]
    assert c["kind"] == "probs" and c["images"] == 1
    assert c["rows"] == min(5, len(ranked))
    assert c["best"] == [ranked[0]["label"]]
    assert c["values"][0] == f"{100 * ranked[0]['p']:.1f}%"
    # The bar of the top label is p times the track's width.
    assert abs(c["fillWidthsPx"][0] - ranked[0]["p"] * c["trackWidthPx"]) < 2
    assert c["fillWidthsPx"] == sorted(c["fillWidthsPx"], reverse=True)


def test_classify_big_batch_scrolls(page_result: dict) -> None:
    big = page_result["classifyBig"]
    assert big["images"] == 16 and "4 more" in big["more"]
    assert big["scrollable"] is True
    assert page_result["classifySaved"] == "probs"
    # Issue 14 item 10: 160k scores drew (16 x 20 rows), were saved small, and reloads (also of junk) did not throw.
    huge = page_result["scoresHuge"]
    assert "error" not in huge, huge
    assert huge["rows"] == huge["reloadedRows"] == 16 * 20, huge
    assert huge["savedChars"] < 200_000, huge


def test_score_bars(page_result: dict) -> None:
    fx = json.loads((E2E / "fixtures" / "recorded.json").read_text())
    data = fx["score_ui"]["lit_scores"][0]
    s = page_result["score"]
    assert s["kind"] == "scores" and s["rows"] == len(data["prompts"]) * len(data["scores"])
    best = max(range(len(data["prompts"])), key=lambda i: data["scores"][0][i])
    assert s["best"] == [data["prompts"][best]]
    assert s["values"][0] == f"{data['scores'][0][0]:+.3f}"


def test_compare_slider(page_result: dict) -> None:
    assert page_result["compareEmpty"] == "0"
    c = page_result["compare"]
    assert c["count"] == "2" and c["stageVisible"]
    assert c["beforeSrc"].startswith("/api/view?") and "filename=before_0.png" in c["beforeSrc"]
    assert c["beforeLoaded"] == 64 and c["afterLoaded"] == 64
    assert c["initial"] == "0.5000" and c["initialClip"] == "inset(0px 50% 0px 0px)"
    assert abs(float(c["afterDrag"]) - 0.25) < 0.01
    assert c["dragClip"].startswith("inset(0px 75")
    assert c["dividerLeft"].startswith("25")
    assert abs(float(c["afterKey"]) - 0.30) < 0.01
    nxt = c["afterNext"]
    assert nxt["index"] == "1" and nxt["counter"] == "2 / 2"
    assert "filename=before_1.png" in nxt["beforeSrc"] and nxt["beforeLoaded"] == 64


def test_every_node_input_and_output_has_a_tooltip() -> None:
    """The graph shows these on hover; the issue asks for helpful tooltips on every input."""
    from comfyui_lit import NODE_CLASS_MAPPINGS

    assert NODE_CLASS_MAPPINGS
    missing = []
    for name, cls in NODE_CLASS_MAPPINGS.items():
        if not str(getattr(cls, "DESCRIPTION", "")).strip():
            missing.append(f"{name}.DESCRIPTION")
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for inp, value in spec.get(section, {}).items():
                opts = value[1] if isinstance(value, tuple) and len(value) > 1 else {}
                if not str(opts.get("tooltip", "")).strip():
                    missing.append(f"{name}.{inp}")
        tips = getattr(cls, "OUTPUT_TOOLTIPS", ())
        if len(tips) != len(cls.RETURN_TYPES) or not all(str(t).strip() for t in tips):
            missing.append(f"{name}.OUTPUT_TOOLTIPS")
    assert missing == [], missing
