"""Make the repository importable as ``comfyui_lit`` from any clone, installed or not.

ComfyUI imports the folder by path (its name can be anything); tests and the CLI import it as ``comfyui_lit``.
When the project is ``pip install -e .``-ed this is already true; otherwise we register the repo root under
that name here so a fresh clone's ``pytest`` works too.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch
from torchvision_cpu import import_torchvision_on_cpu_torch  # tests/ is on sys.path (pyproject: pythonpath)

# The Triton interpreter must be chosen before triton is imported anywhere: kernels are tested on the CPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import_torchvision_on_cpu_torch()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ensure_package() -> None:
    existing = sys.modules.get("comfyui_lit")
    if existing is not None:
        return
    spec = importlib.util.find_spec("comfyui_lit")
    if spec is not None and spec.origin and os.path.samefile(os.path.dirname(spec.origin), ROOT):
        return  # installed (editable) from this very checkout
    spec = importlib.util.spec_from_file_location("comfyui_lit", os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_lit"] = module
    spec.loader.exec_module(module)


_ensure_package()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): on a small
    shared CI machine two OpenMP threads spin-wait for each other (restoration and enhancement tests ran 3-8x longer,
    measured 2026-12-02); the previous setting is restored for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
