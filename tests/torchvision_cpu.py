"""A CPU torch with the registry's (CUDA) torchvision: make ``import torchvision`` work for test-only libraries."""

from __future__ import annotations

import sys

import torch


def import_torchvision_on_cpu_torch() -> None:
    """Let reference libraries (spandrel, open_clip, timm, transformers' image utils) import torchvision here.

    The registry's torchvision wheels are CUDA builds: on a CPU-only torch their C++ ops cannot load and
    ``import torchvision`` dies registering a fake kernel for ``torchvision::nms``. Declaring the two op schemas
    first lets the Python side import (the C++ ops themselves stay unavailable, and nothing here uses them).
    This lives in the tests only; the pack never imports torchvision.
    """
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
    except ImportError:
        pass  # not installed: nothing to repair
