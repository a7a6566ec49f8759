"""Attention speed: the LiT Triton kernel vs PyTorch SDPA (each backend) and FlexAttention, bf16.

    python bench/attention.py            # every shape, forward and forward+backward
    python bench/attention.py --quick    # tower shapes only, fewer repetitions

For each shape it prints time (ms) and TFLOP/s of every implementation, and our speed relative to the best
SDPA backend that ran (>1 = we are faster). FLOPs: forward 4*B*H*Nq*Nk*d (halved when causal), forward+backward
3.5x that (the FlashAttention-2 convention). Needs a CUDA GPU; without one it runs a tiny CPU check of the
fallback path and prints the metric line as n/a. Last line: ``attention_speed: <v> TFLOP/s (<r>x vs best sdpa)``
with v the geometric-mean TFLOP/s of our kernel over all shapes and modes and r the geometric mean speed ratio.
The ``lit_auto`` column is what ``auto`` runs after calibrating the class (kernel or SDPA, whichever was measured
faster); ``auto ratio`` is its speed against the best SDPA backend.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

DEVICE = "cuda"  # a dry run of the GPU path on the CPU (interpreter) sets "cpu"


def _import_package():
    """``comfyui_lit`` from this checkout, installed or not."""
    from _package import import_package

    import_package()
    from comfyui_lit.models.attention import dispatch as attn_mod
    from comfyui_lit.models.attention import triton_kernel as ta

    return attn_mod, ta


# name, batch, heads, N_q (= N_k), head dim, causal. Batches are what a tower sees in LiT training/encoding.
TOWER_SHAPES = [
    ("minilm text 64 (d32)", 64, 12, 64, 32, False),
    ("clip-L text 77 causal", 64, 12, 77, 64, True),
    ("vit-b/16 197", 32, 12, 197, 64, False),
    ("clip-L/14 257", 32, 16, 257, 64, False),
    ("vit-H/14 257 (d80)", 32, 16, 257, 80, False),
    ("clip-L/14@336 577", 16, 16, 577, 64, False),
    ("siglip so400m 729 (d72)", 16, 16, 729, 72, False),
    ("dinov2-L 1025", 8, 16, 1025, 64, False),
    ("bert 128 (d96)", 32, 8, 128, 96, False),
]
LONG_SHAPES = [
    ("unet 4096 (d64)", 2, 10, 4096, 64, False),
    ("dit 4096 (d128)", 2, 24, 4096, 128, False),
    ("dit 16384 (d128)", 1, 24, 16384, 128, False),
]


def flops(b, h, n, d, causal, mode):
    f = 4.0 * b * h * n * n * d * (0.5 if causal else 1.0)
    return f * (3.5 if mode == "fwd+bwd" else 1.0)


def make_runners(attn_mod, ta, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    runners = {"lit_triton": lambda q, k, v: attn_mod.attention(q, k, v, causal=causal, backend="triton"),
               # what users get: the calibrated choice (its first call, inside the warm-up, measures the class)
               "lit_auto": lambda q, k, v: attn_mod.attention(q, k, v, causal=causal, backend="auto")}
    backends = (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_efficient", SDPBackend.EFFICIENT_ATTENTION),
                ("sdpa_cudnn", getattr(SDPBackend, "CUDNN_ATTENTION", None)), ("sdpa_math", SDPBackend.MATH))
    for name, backend in backends:
        if backend is None:
            continue

        def run(q, k, v, _backend=backend):
            with sdpa_kernel([_backend]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        runners[name] = run
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        masks: dict = {}

        def run_flex(q, k, v):
            if not causal:
                return flex(q, k, v)
            key = (q.shape[2], k.shape[2])
            if key not in masks:
                masks[key] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, key[0], key[1],
                                               device=q.device)
            return flex(q, k, v, block_mask=masks[key])

        runners["flex"] = run_flex
    except Exception as err:  # noqa: BLE001 - older torch: no FlexAttention
        print(f"FlexAttention unavailable: {err}")
    return runners


def time_ms(fn, mode, q, k, v, reps):
    import triton

    if mode == "fwd":
        def call():
            with torch.no_grad():  # inference: no graph (and auto's "fwd" class, not "fwd+bwd")
                return fn(q, k, v)
    else:
        grad = torch.randn_like(q)

        def call():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(grad)
    return triton.testing.do_bench(call, warmup=max(5, reps // 4), rep=reps)


def run_gpu(args) -> None:
    attn_mod, ta = _import_package()
    if not ta.TRITON_AVAILABLE:
        print("triton is not installed: nothing to compare.")
        print("attention_speed: n/a (0.00x vs best sdpa) - triton missing")
        return
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit"):  # one FlexAttention compile per shape, not eager fallback
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    dev = torch.device(DEVICE)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} - {name} - torch {torch.__version__}, "
          f"triton {__import__('triton').__version__}, bf16")
    shapes = TOWER_SHAPES + ([] if args.quick else LONG_SHAPES)
    reps = 50 if args.quick else 200
    ours_tflops: list[float] = []
    ratios: list[float] = []
    header = None
    for label, b, h, n, d, causal in shapes:
        runners = make_runners(attn_mod, ta, causal)
        if header is None:
            cols = list(runners)
            timed = " | ".join(c + " ms (TF/s)" for c in cols)
            header = f"| shape | B,H,N,d | mode | {timed} | best sdpa | ratio | auto ratio | max err |"
            print(header)
            print("|" + "---|" * (header.count("|") - 1))
        g = torch.Generator(device=dev).manual_seed(0)
        q, k, v = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
                   for _ in range(3))
        with torch.no_grad():
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
            err = (runners["lit_triton"](q, k, v).float() - ref).abs().max().item()
            del ref
        for mode in ("fwd", "fwd+bwd"):
            cells, times = [], {}
            for rname, fn in runners.items():
                if rname == "sdpa_math" and n > 4096:
                    cells.append("skip")
                    continue
                try:
                    ms = time_ms(fn, mode, q, k, v, reps)
                    times[rname] = ms
                    cells.append(f"{ms:.3f} ({flops(b, h, n, d, causal, mode) / ms / 1e9:.0f})")
                except Exception as e:  # noqa: BLE001 - a backend that refuses a shape (e.g. cuDNN, d72) is a cell
                    cells.append(type(e).__name__)
                torch.cuda.empty_cache()
            sdpa = {r: t for r, t in times.items() if r.startswith("sdpa_")}
            best = min(sdpa, key=sdpa.get) if sdpa else None
            ratio = sdpa[best] / times["lit_triton"] if best and "lit_triton" in times else float("nan")
            auto = sdpa[best] / times["lit_auto"] if best and "lit_auto" in times else float("nan")
            if "lit_triton" in times:
                ours_tflops.append(flops(b, h, n, d, causal, mode) / times["lit_triton"] / 1e9)
            if math.isfinite(ratio):
                ratios.append(ratio)
            err_cell = f"{err:.1e}" if mode == "fwd" else ""  # ours vs an fp32 SDPA reference
            cells_all = " | ".join(cells)
            print(f"| {label} | {b},{h},{n},{d} | {mode} | {cells_all} | {best} | {ratio:.2f}x | {auto:.2f}x "
                  f"| {err_cell} |")
    geo_t = math.exp(sum(map(math.log, ours_tflops)) / len(ours_tflops)) if ours_tflops else float("nan")
    geo_r = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else 0.0
    print(f"attention_speed: {geo_t:.1f} TFLOP/s ({geo_r:.2f}x vs best sdpa)")


def run_cpu_smoke() -> None:
    attn_mod, ta = _import_package()
    print("No CUDA device: the kernel benchmark needs a GPU. Running a CPU smoke test of the SDPA fallback.")
    q, k, v = (torch.randn(2, 4, 77, 64) for _ in range(3))
    t0 = time.perf_counter()
    out = attn_mod.attention(q, k, v, causal=True, backend="auto")
    ms = (time.perf_counter() - t0) * 1e3
    err = (out - F.scaled_dot_product_attention(q, k, v, is_causal=True)).abs().max().item()
    print(f"| fallback (auto on cpu) | 2,4,77,64 causal | {ms:.2f} ms | max err vs SDPA {err:.1e} |")
    print(f"triton available: {ta.TRITON_AVAILABLE}")
    print("attention_speed: n/a (0.00x vs sdpa) - no CUDA device")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tower shapes only, fewer repetitions")
    args = parser.parse_args()
    if torch.cuda.is_available():
        run_gpu(args)
    else:
        run_cpu_smoke()


if __name__ == "__main__":
    main()
