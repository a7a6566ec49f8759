"""The engine's shape (issue 12): each feature one package, functions a reader can hold in their head."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 100


def _functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            # The docstring is documentation, not code a reader has to follow.
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str) and len(body) > 1:
                body = body[1:]
            yield node.name, node.lineno, body[-1].end_lineno - node.lineno + 1


def test_no_engine_function_is_longer_than_a_screenful_or_two():
    long = [f"{p.relative_to(ROOT)}:{line} {name} ({n} lines)"
            for p in sorted((ROOT / "models").rglob("*.py")) for name, line, n in _functions(p)
            if n > MAX_FUNCTION_LINES]
    assert not long, "split these into steps with names:\n" + "\n".join(long)


def test_the_length_check_sees_a_long_function(tmp_path):
    src = tmp_path / "long.py"
    src.write_text("def f():\n    '''doc'''\n" + "    x = 1\n" * (MAX_FUNCTION_LINES + 1), encoding="utf-8")
    ((name, _, n),) = list(_functions(src))
    assert name == "f" and n > MAX_FUNCTION_LINES


def test_each_feature_is_one_package_of_the_engine():
    packages = {p.name for p in (ROOT / "models").iterdir() if (p / "__init__.py").exists()}
    assert {"common", "towers", "data", "tuning", "retrieval", "restoration", "enhancement", "attention"} <= packages
    loose = [p.name for p in (ROOT / "models").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside a feature package: {loose}"
    for feature in ("tuning", "retrieval", "enhancement", "restoration"):
        assert (ROOT / "models" / feature / "spec.py").exists(), f"models/{feature} has no spec.py"
