"""Load the CLI's torchvision repair by path, before the pack is importable (see ``cli/environment.py``).

Reference libraries used only by the tests (spandrel, open_clip, timm) import torchvision, which on this CPU-only
torch is the registry's CUDA build.
"""

from __future__ import annotations

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cli", "environment.py")


def import_torchvision_on_cpu_torch() -> None:
    spec = importlib.util.spec_from_file_location("_lit_cli_environment", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.repair_torchvision_import()
