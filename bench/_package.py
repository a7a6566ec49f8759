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
    # The CLI's repair for a CUDA torchvision wheel next to a CPU torch (see cli/environment.py), loaded by path
    # because it must run before the pack (and transformers) is imported.
    env_file = os.path.join(ROOT, "cli", "environment.py")
    env_spec = importlib.util.spec_from_file_location("_lit_cli_environment", env_file)
    env = importlib.util.module_from_spec(env_spec)
    env_spec.loader.exec_module(env)
    env.repair_torchvision_import()
    spec = importlib.util.spec_from_file_location("comfyui_lit", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_lit"] = module
    spec.loader.exec_module(module)
