"""``python -m comfyui_lit attention-calibrate``: clean exits without a GPU or Triton, a CPU dry run, --show."""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from comfyui_lit.cli import main  # noqa: E402
from comfyui_lit.models.attention import calibrate as cal  # noqa: E402
from comfyui_lit.models.attention import triton_kernel as ta  # noqa: E402


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cal.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_without_a_gpu_it_says_so_and_exits_cleanly(monkeypatch, capsys, cache_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["attention-calibrate"]) == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU here" in out and "nothing to calibrate" in out and "SDPA" in out
    assert not cache_dir.exists()  # nothing measured, nothing written


def test_without_triton_it_says_so(monkeypatch, capsys):
    monkeypatch.setattr(ta, "TRITON_AVAILABLE", False)
    assert main(["attention-calibrate"]) == 0
    assert "triton is not installed" in capsys.readouterr().out


def test_bad_options_are_clear_errors(capsys):
    assert main(["attention-calibrate", "--dtypes", "fp8"]) == 2
    assert "--dtypes" in capsys.readouterr().err
    assert main(["attention-calibrate", "--modes", "bwd"]) == 2
    assert main(["attention-calibrate", "--device", "cpu", "--only", "no such row"]) == 2
    assert "--only" in capsys.readouterr().err


@pytest.mark.skipif(not ta.TRITON_AVAILABLE, reason="triton is a declared dependency of this test")
def test_cpu_dry_run_measures_the_table_and_caches_nothing(monkeypatch, capsys, cache_dir):
    monkeypatch.setattr(cal, "TABLE", [("tiny causal", 1, 2, 20, 32, "causal"),
                                       ("tiny clip mask", 1, 1, 13, 32, "bias")])
    assert main(["attention-calibrate", "--device", "cpu", "--dtypes", "fp32", "--modes", "fwd,fwd+bwd",
                 "--reps", "1", "--json", str(cache_dir.parent / "table.json")]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 8  # 2 shapes x 2 modes, printed as measured and again as the table
    assert all("| faster |" in r or "| slower |" in r for r in rows)  # checked right: never "wrong" here
    assert out.strip().splitlines()[-1].startswith("attention_calibration: ")
    report = json.loads((cache_dir.parent / "table.json").read_text())
    assert {r["class"].split("|")[-2] for r in report} == {"causal", "bias"}
    assert all(r["max_err"] < 1e-4 and r["ratio"] >= 1.0 for r in report)
    assert not cache_dir.exists()


def test_show_prints_the_cached_decisions(capsys, cache_dir):
    c = cal.calibrator(str(cache_dir / cal.CACHE_FILE))
    c.forget()
    shape = cal.ShapeClass("Fake GPU (sm_90)", "bf16", 80, 512, 512, "none", "fwd+bwd")
    c.decide(shape, lambda: cal.Measurement(kernel_ms=1.0, sdpa_ms=1.5, max_err=1e-3, allowed_err=3e-2))
    assert main(["attention-calibrate", "--show"]) == 0
    out = capsys.readouterr().out
    assert f"| {shape.key} | 1.000 | 1.500 | kernel | 1.50x |" in out
