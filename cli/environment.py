"""The command line runs outside ComfyUI, in whatever Python environment the user has; repair one known break.

transformers imports torchvision's Python side whenever torchvision is installed. The registry's torchvision
wheels are CUDA builds: next to a CPU-only torch their C++ ops cannot load, and ``import torchvision`` then dies
registering a fake kernel for ``torchvision::nms`` — which takes ``import transformers``' model classes, and with
them every command, down. Declaring the two op schemas first lets the Python side import; the C++ ops stay
unavailable, and the pack never calls them. Inside ComfyUI the host's own torchvision is used as it is.
This file imports nothing but torch, so the test suite can load it before the pack.
"""

from __future__ import annotations

import sys

import torch


def repair_torchvision_import() -> bool:
    """Make ``import torchvision`` work on a CPU torch with a CUDA torchvision wheel; True when a repair was made."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401
        return True
    except ImportError:
        pass  # not installed: nothing to repair
    return False
