"""Helpers of the host suite: the running ComfyUI, its HTTP API, the front-end driver, the inputs."""


from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_TESTS = Path(__file__).resolve().parent
PACK_NAME = "ComfyUI-LiT"
SHARED = Path(os.environ.get("LIT_SHARED_DIR") or ROOT.parent / "shared").resolve()
HOST_DIR = Path(os.environ.get("LIT_HOST_DIR", "/tmp/comfyui-lit-host"))
TEMPLATES = sorted(ROOT.glob("example_workflows/*.json"))
# The one console error every page load of frontend 1.27.10 logs, with or without any pack (comfyui-host.md §2).
KNOWN_FRONTEND_ERRORS = ("Cannot read properties of undefined (reading 'id')",
                         # the front-end reaching the internet (release notes, fonts): no network on CI
                         "net::ERR_NAME_NOT_RESOLVED", "net::ERR_INTERNET_DISCONNECTED")


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_shared() -> Path:
    tools = SHARED / "tools" / "comfy_host.sh"
    if not tools.is_file():
        msg = (f"HOST SUITE NOT RUN: {SHARED}/tools/comfy_host.sh is absent. The real-ComfyUI checks need ../shared "
               "(the ComfyUI 0.3.64 snapshot and its harness) beside the checkout.")
        if on_ci():
            pytest.fail(msg + " On CI this is an error.", pytrace=False)
        sys.stderr.write("\n" + "!" * 100 + "\n" + msg + "\n" + "!" * 100 + "\n")
        pytest.skip(msg)
    return tools


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Host:
    """A running ComfyUI with the pack linked as ComfyUI-LiT."""

    def __init__(self, tools: Path, port: int) -> None:
        self.tools = tools
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.comfy_dir = HOST_DIR / "comfyui"
        self.venv = HOST_DIR / "venv"
        self.log = HOST_DIR / "comfyui.log"
        self.pidfile = HOST_DIR / "comfyui.pid"
        self.converted: dict[str, dict] = {}  # template name -> API prompt converted in the page
        self.runs: dict[str, dict] = {}  # template name -> driver result (+ history entry)
        self.startup_seconds = 0.0

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(COMFY_VENV=str(self.venv), COMFY_PORT=str(self.port), COMFY_LOG=str(self.log),
                   COMFY_PIDFILE=str(self.pidfile), COMFY_PLUGIN_NAME=PACK_NAME, COMFY_STRICT="1",
                   COMFY_WAIT="300")
        return env

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                ctype = r.headers.get("Content-Type", "")
                return r.status, (json.loads(raw) if raw and "json" in ctype else raw)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 30):
        status, body = self.request("GET", path, timeout=timeout)
        assert status == 200, (path, status, body)
        return body

    def alive(self) -> bool:
        try:
            return self.request("GET", "/object_info/LoadImage", timeout=10)[0] == 200
        except OSError:
            return False

    def queue(self, prompt: dict) -> tuple[int, dict]:
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": "lit-host-" + uuid.uuid4().hex})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.5)
        self.request("POST", "/interrupt", {"prompt_id": prompt_id})
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")

    def view(self, ref: dict) -> bytes:
        from urllib.parse import urlencode
        q = urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                       "type": ref.get("type", "output")})
        status, body = self.request("GET", "/view?" + q)
        assert status == 200, (ref, status)
        return body

    # ---- the real front-end -----------------------------------------------------------------------------------
    def drive(self, template: str, *, queue: bool = False, reload: bool = False, screenshot: str | None = None,
              timeout: float = 600) -> dict:
        cmd = [str(self.venv / "bin" / "python"), str(HOST_TESTS / "page_driver.py"), "--url", self.url,
               "--template", f"/api/workflow_templates/{PACK_NAME}/{template}.json", "--timeout", str(timeout)]
        if queue:
            cmd.append("--queue")
        if reload:
            cmd.append("--reload")
        if screenshot:
            cmd += ["--screenshot", screenshot]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        assert "fatal" not in out, out["fatal"]
        return out

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _photo(width: int = 451, height: int = 300):
    """A clean real photo (scikit-image's astronaut, public domain), odd width on purpose."""
    import numpy as np
    from skimage import data, transform

    img = data.astronaut()[:, 40:472]
    img = transform.resize(img, (height, width), anti_aliasing=True)
    return (np.clip(img, 0, 1) * 255).round().astype("uint8")


def prepare_inputs(comfy_dir: Path) -> dict:
    """Reset the state a previous session left and put in what the templates read, found from the templates."""
    from PIL import Image

    for sub in ("models/lit", "output", "input", "temp"):
        shutil.rmtree(comfy_dir / sub, ignore_errors=True)
    (comfy_dir / "input").mkdir(parents=True)
    (comfy_dir / "models" / "lit").mkdir(parents=True)
    flickr = sorted(glob.glob(str(SHARED / "data" / "flickr8k-train800" / "*.jpg")))
    photo = _photo()
    made = {"images": [], "datasets": []}
    for path in TEMPLATES:
        wf = json.loads(path.read_text(encoding="utf-8"))
        for node in wf.get("nodes", []):
            values = node.get("widgets_values") or []
            if node.get("type") in ("LoadImage", "LoadImageMask") and values:
                target = comfy_dir / "input" / str(values[0])
                if not target.exists():
                    Image.fromarray(photo).save(target)
                    made["images"].append(target.name)
            elif node.get("type") == "LiTDataset" and values and isinstance(values[0], str) and values[0]:
                folder = comfy_dir / "input" / values[0]
                if folder.exists() or os.path.isabs(values[0]):
                    continue
                folder.mkdir(parents=True)
                # 120 real photos with their 5 human captions each: what a small user dataset looks like.
                for jpg in flickr[:120]:
                    shutil.copy(jpg, folder)
                    shutil.copy(jpg[:-4] + ".txt", folder)
                made["datasets"].append(values[0])
    return made
