"""The fuzz suite's bookkeeping: every case's outcome class, totalled at the end of the session.

Outcome classes: ``clear`` (a LitError naming the input and the fix), ``handled`` (correct result, a skip that is
reported, or an honest refusal), and the failures ``unclear`` (a LitError without input or fix), ``uncaught`` (any
other exception), ``silent`` (a result that is wrong without a word).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from comfyui_lit.models.common.errors import LitError

TOTALS: Counter = Counter()
FAILURES: list[str] = []


def classify(fn: Callable[[], Any], check: Callable[[Any], bool] | None = None) -> tuple[str, Any]:
    try:
        value = fn()
    except LitError as err:
        return ("clear" if err.input_name and err.fix else "unclear"), err
    except Exception as err:  # noqa: BLE001 - that is the point: count it
        return "uncaught", err
    if check is None or check(value):
        return "handled", value
    return "silent", value


@pytest.fixture()
def fuzz(request):
    """``fuzz(fn, expect, check=None, match=None)``: run one case, record its class, assert the expected one."""

    def run(fn: Callable[[], Any], expect: str, check: Callable[[Any], bool] | None = None,
            match: str | None = None) -> Any:
        kind, value = classify(fn, check)
        if kind == "clear" and match and match.lower() not in str(value).lower():
            kind = "unclear"
        TOTALS[kind] += 1
        if kind != expect:
            FAILURES.append(f"{request.node.name}: {kind} ({value!r:.200})")
        assert kind == expect, f"expected {expect}, got {kind}: {value!r}"
        return value

    return run


def pytest_terminal_summary(terminalreporter):
    if not TOTALS:
        return
    n = sum(TOTALS.values())
    terminalreporter.write_line(
        f"fuzz: {n} cases, {TOTALS['clear']} clear errors, {TOTALS['handled']} handled, "
        f"{TOTALS['uncaught']} uncaught, {TOTALS['silent']} silent, {TOTALS['unclear']} unclear")
    for line in FAILURES:
        terminalreporter.write_line(f"  fuzz failure: {line}")


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> str:
    """A 2-layer, 128-wide BERT with its tokenizer, saved as a user would have it (tests/tiny_models.py)."""
    from tiny_models import bert_tokenizer, tiny_bert

    folder = str(tmp_path_factory.mktemp("tiny_text") / "bert")
    tiny_bert(len(bert_tokenizer(folder))).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lit_towers(tiny_text_dir):
    """A tiny random locked tower (8-d) and the tiny BERT text tower: every case runs in milliseconds."""
    from corpus import tiny_tower

    from comfyui_lit.models.towers.text_tower import load_text_tower

    return tiny_tower(seed=0), load_text_tower(tiny_text_dir)
