"""The Triton attention kernels compiled for real NVIDIA targets on this GPU-less machine.

Triton's CPU interpreter (tests/test_attention.py) proves the arithmetic but not that the kernels compile for a GPU,
fit its shared memory, keep their accumulators in registers or load memory in vectors. ``bench/attention_compile.py``
compiles every shipped autotune config to a cubin with the ``ptxas`` in Triton's wheel and reads that off; these
tests hold the config sets to it, so a kernel edit that spills or loses vector loads fails here, not on a user's GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "attention_compile.py")


def _nvidia_toolchain() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path)
    except Exception:  # noqa: BLE001 - no triton, or a build without the NVIDIA backend
        return False


pytestmark = pytest.mark.skipif(not _nvidia_toolchain(),
                                reason="needs triton with its NVIDIA backend (Linux wheels ship it with ptxas)")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two compile runs side by side (one per core): every config on sm_90, and the consumer-GPU target sm_86."""
    out = tmp_path_factory.mktemp("compile")
    runs = {"sm90": (["--arch", "90", "--cases", "d64,d72,d128"]),
            "sm86": (["--arch", "86", "--cases", "d64,d128"])}
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    procs = {name: subprocess.Popen([sys.executable, SCRIPT, *args, "--json", str(out / f"{name}.json")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
             for name, args in runs.items()}
    result = {}
    for name, proc in procs.items():
        log = proc.communicate(timeout=900)[0]
        assert proc.returncode == 0, f"{name} compile report failed:\n{log[-4000:]}"
        with open(out / f"{name}.json") as f:
            result[name] = json.load(f)
    return result


def test_every_config_compiles_clean_for_hopper(reports):
    rows = reports["sm90"]
    assert len(rows) >= 30  # every config of three kernels for three head dims
    bad = [r for r in rows if not r.get("clean")]
    assert not bad, "configs that spill, overflow shared memory, skip tensor cores or load scalars:\n" + \
        "\n".join(json.dumps(r) for r in bad)
    assert all(r["mma"] in ("wgmma", "mma.sync") for r in rows)
    assert sum(r["mma"] == "wgmma" for r in rows) >= len(rows) * 3 // 4  # Hopper's warpgroup MMA, mostly


def test_head_dim_72_loads_in_vectors(reports):
    """SigLIP's head dim 72 leaves strides that Triton cannot prove 16-byte aligned; the ALIGN hint restores it."""
    rows = [r for r in reports["sm90"] if r["case"] == "d72"]
    assert rows and all(r["vec"] >= 0.9 for r in rows), [(r["kernel"], r["config"], r["vec"]) for r in rows]


def test_consumer_gpus_have_a_clean_config_per_kernel(reports):
    """RTX 30xx/40xx (99 KiB of shared memory per block): each kernel and head-dim class keeps a usable config."""
    rows = reports["sm86"]
    for case in ("d64", "d128"):
        for kernel in ("fwd", "dkdv", "dq"):
            usable = [r for r in rows if r["case"] == case and r["kernel"] == kernel and r.get("clean")]
            assert usable, f"no config of {kernel} for {case} fits sm_86 without spilling"
