"""Where the research-use data and weights of ``../shared`` are, for the tests that need them.

They are never copied into this repository. A test that needs them skips with a clear message only where
``../shared`` (beside the checkout) is absent; CI always has it, so there such a test runs.
"""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("LIT_SHARED_DIR") or os.path.normpath(os.path.join(ROOT, "..", "shared"))


def shared_path(*parts: str) -> str:
    """The path of ``../shared/<parts>``; skips the calling test (with why) when ``../shared`` is absent."""
    if not os.path.isdir(SHARED):
        pytest.skip(f"{SHARED} is absent: this test needs the research-use data beside the checkout "
                    "(../shared, present on CI).")
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):  # shared/ is there but incomplete: that is a broken setup, not a reason to skip
        pytest.fail(f"{path} is missing from {SHARED}.")
    return path
