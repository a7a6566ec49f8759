"""Import ``comfyui_lit`` from this checkout for the benchmark scripts, installed or not.

The scripts run as ``python bench/<name>.py``, so this folder is on ``sys.path``; the repository root is a
package whose name depends on the folder it was cloned into, so it is registered under ``comfyui_lit``.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_package() -> None:
    if "comfyui_lit" in sys.modules:
        return
    # The package repairs a CUDA torchvision wheel next to a CPU torch itself (see __init__.py).
    spec = importlib.util.spec_from_file_location("comfyui_lit", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_lit"] = module
    spec.loader.exec_module(module)
