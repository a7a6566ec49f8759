"""pytest plugin (loaded by ``-p`` from pyproject): let the suite run from a clone under any folder name.

The repository root is the pack and has an ``__init__.py`` (ComfyUI imports the folder by path). pytest would
collect that root as a Python package named after the folder, and a folder such as ``ComfyUI-LiT`` (the README's
own clone instruction) is no valid module name, so every test errored with "attempted relative import". The root
is collected as a plain directory instead; the tests import the pack as ``comfyui_lit`` (see conftest.py).
"""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if os.path.isdir(path) and os.path.samefile(str(path), ROOT):
        return pytest.Dir.from_parent(parent, path=path)
    return None
