"""Turning a widget's or a command line's text into a list of prompts, labels or captions: one rule everywhere."""

from __future__ import annotations

import csv
from collections.abc import Sequence

from .errors import LitError


def split_prompts(text: str | Sequence[str], *, input_name: str | None = None, fix: str | None = None) -> list[str]:
    """Prompts from text: one per line, or several on a line separated by ``;``.

    Commas never split (``a dog in a garden, near a fence`` is one prompt); a ``;`` inside double quotes does not
    split either, and the quotes are removed. A list is taken item by item, each item split the same way.
    With ``input_name`` an empty result is a ``LitError`` naming that input; without it an empty list is returned.
    """
    items = [text] if isinstance(text, str) else [str(t) for t in text]
    out: list[str] = []
    for item in items:
        for line in item.splitlines():
            if not line.strip():
                continue
            # csv handles the quoting rules (a quoted ';' stays, "" is a literal quote) so we do not hand-roll them.
            for field in next(csv.reader([line], delimiter=";", quotechar='"', skipinitialspace=True)):
                if field.strip():
                    out.append(field.strip())
    if not out and input_name:
        raise LitError(f"'{input_name}' is empty.", input_name=input_name,
                       fix=fix or "write one entry per line (or several separated by ';').")
    return out
