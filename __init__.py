"""ComfyUI-LiT: Locked-image Tuning (LiT) in ComfyUI.

ComfyUI imports this folder by path and reads ``NODE_CLASS_MAPPINGS``, ``NODE_DISPLAY_NAME_MAPPINGS`` and
``WEB_DIRECTORY``. The same folder is the Python package ``comfyui_lit`` for the CLI and tests.
"""

import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _repair_torchvision() -> None:
    # ``python -m comfyui_lit`` imports this file, and through the nodes transformers, before the CLI runs: the
    # CLI's repair for a CUDA torchvision wheel next to a CPU torch (cli/environment.py) has to run here, loaded by
    # path because importing ``.cli`` would import transformers first. Inside ComfyUI the host has imported its own
    # torchvision already, and nothing is done.
    if "torchvision" in _sys.modules:
        return
    path = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "cli", "environment.py")
    spec = _importlib_util.spec_from_file_location("_lit_cli_environment", path)
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.repair_torchvision_import()


_repair_torchvision()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
