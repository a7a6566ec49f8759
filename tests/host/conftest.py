"""The host suite: the pack in a real ComfyUI 0.3.64 (CPU, 127.0.0.1), its templates in the real front-end.

Run it on its own: ``python -m pytest -q tests/host`` (``.ci/run`` does, after the unit tests); the README's plain
``python -m pytest -q`` leaves it out (it builds a 1.7 GB venv the first time and runs every template).
``--update-screenshots`` writes ``docs/template_<name>.png`` of each template after its run.

ComfyUI's tree and venv are cached in ``$LIT_HOST_DIR`` (default ``/tmp/comfyui-lit-host``) so that the second
start of one CI run (or a developer's rerun) takes seconds; its models/lit, input and output are reset per session.
Without ``../shared`` (the ComfyUI snapshot and its tools) the suite skips loudly, except on CI (``CI`` set), where
it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostlib import HOST_DIR, HOST_TESTS, ROOT, SHARED, Host, free_port, prepare_inputs, require_shared


def pytest_addoption(parser):
    parser.addoption("--update-screenshots", action="store_true", default=False,
                     help="host suite: write docs/template_<name>.png of each template after its run")


def _host_requested(config) -> bool:
    if os.environ.get("LIT_HOST") == "1":
        return True
    for arg in config.args:
        path = Path(str(arg).split("::")[0]).resolve()
        if path == HOST_TESTS or HOST_TESTS in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    # Only when asked for by path (or LIT_HOST=1): the plain `pytest -q` stays the fast unit suite.
    if _host_requested(config):
        return
    keep, drop = [], []
    for item in items:
        (drop if HOST_TESTS in Path(str(item.fspath)).resolve().parents else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def comfy(request) -> Host:
    tools = require_shared()
    if not shutil.which("chromium") and not shutil.which("chromium-browser"):
        pytest.fail("the host suite needs Debian's chromium (apt-get install -y chromium)", pytrace=False)
    host = Host(tools, free_port())
    HOST_DIR.mkdir(parents=True, exist_ok=True)
    # A server a crashed earlier session left behind on our pidfile: stop it first (our own, by its pid).
    if host.pidfile.exists():
        subprocess.run(["bash", str(tools), "--stop"], env=host.env, capture_output=True, timeout=60)
    if not (host.comfy_dir / "main.py").exists():  # what comfy_host.sh would do, done first to prepare inputs
        host.comfy_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(SHARED / "comfyui" / "ComfyUI-0.3.64.tar.gz"), "-C", str(host.comfy_dir)],
                       check=True, timeout=600)
    host.made = prepare_inputs(host.comfy_dir)
    t0 = time.time()
    proc = subprocess.run(["bash", str(tools), str(host.comfy_dir), str(ROOT)], env=host.env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail("ComfyUI did not start:\n" + proc.stderr[-4000:] + "\n--- log tail:\n" + host.log_text()[-4000:],
                    pytrace=False)
    host.startup_seconds = time.time() - t0
    host.request("POST", "/settings/Comfy.TutorialCompleted", True)
    sys.stderr.write(f"\n[host] ComfyUI ready on {host.url} in {host.startup_seconds:.0f} s (log {host.log})\n")
    yield host
    subprocess.run(["bash", str(tools), "--stop"], env=host.env, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def update_screenshots(request) -> bool:
    return bool(request.config.getoption("--update-screenshots"))
