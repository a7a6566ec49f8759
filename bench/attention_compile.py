"""Static compile report of the Triton attention kernels for NVIDIA GPUs, made on a machine without one.

    python bench/attention_compile.py                    # sm_90 (H100/H200) and sm_80 (A100), every case
    python bench/attention_compile.py --arch 86 89       # RTX 30xx / 40xx
    python bench/attention_compile.py --cases d64,d72 --quick

Triton compiles a kernel for any target it knows without touching a GPU (TTIR -> TTGIR -> LLVM -> PTX, then
the ``ptxas`` shipped in Triton's wheel makes the cubin). This script drives our launchers with a stand-in CUDA
driver so every kernel is specialised exactly as a real launch would (strides equal to 1 folded, 16-divisible
arguments marked), then compiles each autotune config and reads off what decides speed before any timing:

- ``regs``/``spill``: registers per thread and bytes spilled to local memory (``cuobjdump``); a spill is slow.
- ``smem``: shared memory per program vs the target's per-block limit; an autotune config over the limit would
  be skipped at run time (Triton raises ``OutOfResources``), so it is dead weight in the config set.
  Configs are the ones the kernels ship (``CONFIGS`` in ``models/triton_attention.py``, by head-dim class).
- ``mma``: the tensor-core instruction the dots became (``wgmma`` on Hopper, ``mma.sync`` before it).
- ``vec``: the share of the bytes loaded from global memory that move in vector instructions (8 or 16 bytes:
  ``ld.global.v4`` or asynchronous ``cp.async`` copies); scalar 2-byte loads starve the tensor cores.

This is no substitute for timing on a GPU (``bench/attention.py``); it catches the failures that Triton's CPU
interpreter cannot see (compile errors, resource overflow, spills, lost vectorisation). The last line is
``clean_configs: <n>/<total> (<ratio>x vs all compiled)``, a config being clean when it compiles, fits, does
not spill, uses tensor cores and loads vectorised.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "0"  # compile for the GPU target, never the interpreter

import torch  # noqa: E402

# Per-block shared memory a kernel may opt into (CUDA C programming guide, "Compute capabilities").
SHARED_LIMIT = {75: 65536, 80: 166912, 86: 101376, 89: 101376, 90: 232448}
_LOAD = re.compile(r"ld\.global\S*?(?:\.v(\d))?\.[bufs](8|16|32|64)\s")
_ASYNC_COPY = re.compile(r"cp\.async\.c[ag]\.shared\.global\S*\s+\[[^]]+\],\s*\[[^]]+\],\s*(0x[0-9a-f]+|\d+)")


def load_widths(ptx: str) -> list[int]:
    """Bytes moved by each global load instruction (plain or asynchronous copy to shared memory) in the PTX."""
    widths = [int(n or 1) * int(bits) // 8 for n, bits in _LOAD.findall(ptx)]
    return widths + [int(size, 0) for size in _ASYNC_COPY.findall(ptx)]


def _import_package():
    from _package import import_package

    import_package()
    from comfyui_lit.models.attention import triton_kernel as ta

    return ta


class _StandInCudaDriver:
    """The four calls Triton's JIT makes to the active driver before it compiles; enough for ``warmup``."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


@contextlib.contextmanager
def stand_in_driver(arch: int):
    from triton.runtime import driver

    previous = driver._active  # None until a real driver was needed; reset_active() would try to create one
    driver.set_active(_StandInCudaDriver(arch))
    try:
        yield
    finally:
        driver._active = previous


@contextlib.contextmanager
def capture_launches():
    """Record the (kernel, args, kwargs) of every Triton launch instead of running it."""
    from triton.runtime.jit import JITFunction

    launches: list[tuple] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def _launches_for(ta, case: dict) -> list[tuple]:
    """Run our real forward and backward launchers on CPU tensors and capture their three kernel launches."""
    b, h, n_q, n_k, d = case["b"], case["h"], case["n_q"], case["n_k"], case["d"]
    dtype = getattr(torch, case["dtype"])

    def t(n):  # transformers' [B, N, H, d] memory layout, seen as [B, H, N, d]
        return torch.randn(b, n, h, d).to(dtype).transpose(1, 2)

    q, k, v = t(n_q), t(n_k), t(n_k)
    kpm = torch.ones(b, n_k, dtype=torch.bool).view(torch.uint8) if case.get("kpm") else None
    bias = torch.zeros(1, h, n_q, n_k, dtype=dtype).expand(b, h, n_q, n_k) if case.get("bias") else None
    scale = d ** -0.5
    blocks = (64, 64)  # replaced per config below
    with capture_launches() as launches:
        o, _ = ta._forward(q, k, v, bias, kpm, case.get("causal", False), scale, blocks=blocks)
    lse = torch.zeros(b * h, n_q)
    with capture_launches() as bwd:
        ta._backward(torch.randn_like(o), q, k, v, o, lse, bias, kpm, case.get("causal", False), scale,
                     need_dbias=case.get("bias", False), blocks=blocks)
    return launches + bwd


def _resources(cubin: bytes, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = os.path.join(os.path.dirname(get_ptxas(arch).path), "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out))
    return {"regs": int(fields.get("REG", -1)), "spill": int(fields.get("STACK", 0)) + int(fields.get("LOCAL", 0))}


def compile_one(kernel, args, kwargs: dict, arch: int) -> dict:
    """Compile one launch for ``sm_<arch>``; the report row (or the compile error)."""
    t0 = time.perf_counter()
    try:
        compiled = kernel.warmup(*args, grid=(1,), **kwargs)
    except Exception as err:  # noqa: BLE001 - any compile failure is the finding
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    ptx = compiled.asm["ptx"]
    widths = load_widths(ptx)
    row = {"ok": True, "smem": int(compiled.metadata.shared), "seconds": round(time.perf_counter() - t0, 1),
           "mma": "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "none"),
           "vec": round(sum(w for w in widths if w >= 8) / max(1, sum(widths)), 2), "loads": len(widths)}
    row.update(_resources(compiled.asm["cubin"], arch))
    row["fits"] = row["smem"] <= SHARED_LIMIT.get(arch, 101376)
    # per-row fp32 statistics and the 1-byte padding mask are scalar loads by nature: 0.8, not 1.0
    row["clean"] = row["fits"] and row["spill"] == 0 and row["mma"] != "none" and row["vec"] >= 0.8
    return row


def _config_kwargs(kernel_name: str, kwargs: dict, cfg, n_k: int) -> dict:
    kw = dict(kwargs)
    kw.update(cfg.kwargs)
    kw["num_warps"] = cfg.num_warps
    kw["num_stages"] = cfg.num_stages
    if kernel_name == "_fwd_kernel":
        kw["ONE_BLOCK"] = n_k <= cfg.kwargs["BLOCK_N"]
    return kw


_BASE = {"b": 2, "h": 4, "n_q": 257, "n_k": 257, "d": 64, "dtype": "bfloat16"}
# name -> (what it stands for, overrides of _BASE)
CASES = {
    "d64": ("bf16 d64 N257 (CLIP/ViT-B/L)", {}),
    "d72": ("bf16 d72 N257 (SigLIP so400m)", {"d": 72}),
    "d80": ("bf16 d80 N257 (ViT-H, OpenCLIP bigG)", {"d": 80}),
    "d128": ("bf16 d128 N257", {"d": 128}),
    "clip_text": ("bf16 d64 N77 causal+padding (CLIP text)", {"n_q": 77, "n_k": 77, "causal": True, "kpm": True}),
    "dinov2": ("bf16 d64 N1025 (DINOv2)", {"n_q": 1025, "n_k": 1025}),
    "bias": ("bf16 d64 N256 additive bias (+dBias)", {"n_q": 256, "n_k": 256, "bias": True}),
    "bert": ("bf16 d96 N128 padding (BERT-style)", {"d": 96, "n_q": 128, "n_k": 128, "kpm": True}),
    "minilm": ("bf16 d32 N64 padding (MiniLM)", {"d": 32, "n_q": 64, "n_k": 64, "kpm": True}),
    "fp16": ("fp16 d64 N257", {"dtype": "float16"}),
    "fp32": ("fp32 d64 N257 (exact dots, no tensor cores)", {"dtype": "float32"}),
}
KERNELS = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "dkdv", "_bwd_dq_kernel": "dq"}


def run(arches: list[int], names: list[str], quick: bool) -> list[dict]:
    """Compile every shipped autotune config of every kernel for each case and target; one row each."""
    ta = _import_package()
    if not ta.TRITON_AVAILABLE:
        raise SystemExit("triton is not installed: nothing to compile")
    rows = []
    for arch in arches:
        for kernel in (ta._fwd_kernel, ta._bwd_dkdv_kernel, ta._bwd_dq_kernel):
            kernel.device_caches.clear()  # the JIT caches per device number, not per target: one stand-in, one arch
        with stand_in_driver(arch):
            for name in names:
                label, overrides = CASES[name]
                case = dict(_BASE, **overrides)
                for kernel, args, kwargs in _launches_for(ta, case):
                    short = KERNELS[kernel.__name__]
                    configs = ta.CONFIGS[short][ta.config_class(getattr(torch, case["dtype"]), kwargs["BLOCK_D"])]
                    for cfg in configs[:1] if quick else configs:
                        row = {"arch": arch, "case": name, "label": label, "kernel": short,
                               "config": f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} "
                                         f"s{cfg.num_stages}"}
                        row.update(compile_one(kernel, args, _config_kwargs(kernel.__name__, kwargs, cfg,
                                                                             case["n_k"]), arch))
                        rows.append(row)
                        print(_format(row), flush=True)
    return rows


def _format(row: dict) -> str:
    head = f"| sm_{row['arch']} | {row['label']} | {row['kernel']} | {row['config']} |"
    if not row["ok"]:
        return f"{head} error: {row['error']} | | | | |"
    smem = f"{row['smem'] // 1024} KiB" + ("" if row["fits"] else " (over)")
    return (f"{head} {row['regs']} | {row['spill']} | {smem} | {row['mma']} | {row['vec']:.2f} of {row['loads']} |"
            f" {'yes' if row['clean'] else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80],
                        help="compute capabilities x10 (75, 80, 86, 89, 90); default 90 80")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--quick", action="store_true", help="the first config of each set only")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    import triton

    print(f"# {time.strftime('%Y-%m-%d', time.gmtime())} - compiled without a GPU - triton {triton.__version__}, "
          f"torch {torch.__version__}")
    print("| target | case | kernel | config | regs | spill B | smem | mma | vectorised loads | clean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = run(args.arch, names, args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    clean = sum(r.get("clean", False) for r in rows)
    print(f"clean_configs: {clean}/{len(rows)} ({clean / max(1, len(rows)):.2f}x vs all compiled)")
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
