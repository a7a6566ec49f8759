"""``attention-calibrate``: measure the attention kernel against SDPA on every shape class of the table at once."""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

from ..models.common.errors import LitError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention-calibrate", help="time the Triton attention kernel against PyTorch SDPA on this "
                                                   "GPU for every shape class and cache what 'auto' will use")
    p.add_argument("--device", default="cuda", help="cuda, cuda:1 ... (default cuda)")
    p.add_argument("--dtypes", default="bf16,fp16", help="comma-separated: bf16, fp16, fp32 (default bf16,fp16)")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both (default both)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per implementation (default 5)")
    p.add_argument("--only", default="", help="comma-separated parts of row labels to measure (default: all rows)")
    p.add_argument("--recalibrate", action="store_true", help="forget cached decisions and measure everything again")
    p.add_argument("--show", action="store_true", help="print the cached decisions without measuring anything")
    p.add_argument("--cache", default="", help="calibration file (default: the pack's cache folder)")
    p.add_argument("--json", default="", help="also write the table to this JSON file")
    p.set_defaults(func=run)


def _choices(text: str, allowed: tuple[str, ...], name: str) -> list[str]:
    picked = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [t for t in picked if t not in allowed]
    if bad or not picked:
        raise LitError(f"unknown {name}: {', '.join(bad) or '(none given)'}.", input_name=f"--{name}",
                       fix=f"use a comma-separated list of {', '.join(allowed)}.")
    return picked


def run(args: argparse.Namespace) -> int:
    from ..models.attention import calibrate as cal
    from ..models.attention import dispatch
    from ..models.attention import triton_kernel as ta

    dtypes = _choices(args.dtypes, tuple(DTYPES), "dtypes")
    modes = _choices(args.modes, cal.MODES, "modes")
    calibrator = cal.calibrator(args.cache or None)
    if args.reps is not None:
        if args.reps < 1:
            raise LitError("--reps must be at least 1.", input_name="--reps", fix="pass e.g. --reps 5.")
        calibrator.reps = args.reps
    print(f"# calibration file: {calibrator.path}")
    if args.show:
        rows = sorted(calibrator.decisions().items())
        print("\n".join(cal.format_rows(rows)) if rows else "no decisions cached yet.")
        return 0
    if not ta.TRITON_AVAILABLE:
        print("triton is not installed: 'auto' always uses PyTorch SDPA, there is nothing to calibrate.")
        return 0
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise LitError(f"--device {args.device!r} is not a device ({err}).", input_name="--device",
                       fix="pass cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here: there is nothing to calibrate. On the CPU 'auto' uses PyTorch SDPA at no cost "
              "(the kernel runs on a CPU only under TRITON_INTERPRET=1, as a test tool). Run this command on the "
              "machine with the GPU.")
        return 0
    if device.type == "cpu":
        if not ta.interpreting():
            raise LitError("the kernel runs on a CPU only under Triton's interpreter.", input_name="--device",
                           fix="run on a CUDA GPU, or set TRITON_INTERPRET=1 for a dry run (timings mean nothing).")
        print("# dry run on the CPU under TRITON_INTERPRET=1: the check is real, the timings mean nothing, "
              "nothing is cached")
        calibrator = cal.Calibrator(None, versions_=calibrator.versions, timer=cal.wall_clock_timer,
                                    reps=calibrator.reps)
    elif device.type != "cuda":
        raise LitError(f"--device {args.device} is not a CUDA device.", input_name="--device",
                       fix="pass cuda or cuda:N.")
    if args.recalibrate:
        calibrator.forget()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# {cal.device_label(device)} - {stamp} - torch {torch.__version__}, versions {calibrator.versions}")
    rows, report = [], []
    only = [part.strip().lower() for part in args.only.split(",") if part.strip()]
    table = [row for row in cal.TABLE if not only or any(part in row[0].lower() for part in only)]
    if not table:
        raise LitError(f"no row of the table matches --only {args.only!r}.", input_name="--only",
                       fix="pick parts of: " + "; ".join(row[0] for row in cal.TABLE))
    for label, b, h, n, d, mask in table:
        for dtype_name in dtypes:
            for mode in modes:
                inputs = cal.table_inputs(b, h, n, d, mask, device=device, dtype=DTYPES[dtype_name])
                reason = ta.supports(inputs["q"], inputs["k"], inputs["v"])
                if reason is not None:
                    print(f"# {label} {dtype_name}: kernel cannot run ({reason}); auto uses SDPA")
                    continue
                shape, decision = dispatch.calibrated_decision(**inputs, backward=mode == "fwd+bwd",
                                                               calibrator=calibrator)
                rows.append((f"{label}: {shape.key}", decision))
                report.append({"label": label, "shape": [b, h, n, d], "mask": mask, "class": shape.key,
                               **decision.to_json(), "ratio": decision.ratio})
                print(cal.format_rows([rows[-1]])[-1], flush=True)
                del inputs
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    print()
    print("\n".join(cal.format_rows(rows)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    ratios = [d.ratio for _, d in rows if d.ratio]
    kernel = sum(d.use_kernel for _, d in rows)
    wrong = sum(d.status == "wrong" for _, d in rows)
    errors = sum(d.status == "error" for _, d in rows)
    geo = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    print(f"classes: {len(rows)}, kernel on {kernel}, SDPA on {len(rows) - kernel} ({wrong} wrong, {errors} errors); "
          f"min ratio {min(ratios, default=float('nan')):.2f}x")
    print(f"attention_calibration: {geo:.2f}x geomean vs sdpa over {len(ratios)} classes "
          f"(cache {os.path.basename(calibrator.path or '')})")
    return 0
