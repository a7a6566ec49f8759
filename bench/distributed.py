"""Scale-out throughput of locked tuning: 1 vs 2 processes under torchrun (gloo, CPU, one thread each).

Weak scaling, as a cluster is used: each process keeps the per-rank batch, so 2 processes train a global batch
twice as large. The image side comes from the embedding cache (built before the timed loop), so the timed work is
the text side (real all-MiniLM-L6-v2 in LoRA mode by default) plus the all-gathers and the gradient all-reduce.

    python bench/distributed.py [--steps 8] [--batch 16] [--mode lora] [--images 96]

Ends with: ``distributed_scaling: <pairs/s at 2 procs> (<ratio>x vs 1 process)``. On a machine with fewer free
cores than processes the ratio shows the contention, not the method.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _package import import_package as _import_package  # noqa: E402


def worker(data: str, out: str, steps: int, batch: int, mode: str) -> None:
    _import_package()
    import torch
    from shapes_data import TinyShapesCNN

    from comfyui_lit.models.data.dataset import load_folder
    from comfyui_lit.models.towers.image_tower import ImageTower
    from comfyui_lit.models.towers.text_tower import load_text_tower
    from comfyui_lit.models.tuning import distributed
    from comfyui_lit.models.tuning.lit_model import LitModel
    from comfyui_lit.models.tuning.trainer import TrainConfig, train_locked

    rank, world = distributed.init_from_env("cpu")
    torch.manual_seed(0)
    image = ImageTower(TinyShapesCNN(dim=64).eval(), embed_dim=64, input_size=32, mean=(0.5,) * 3,
                       std=(0.5,) * 3, name="tiny-random")
    model = LitModel(image, load_text_tower(), mode=mode, seed=0)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-3, val_fraction=0.0, seed=0)
    result = train_locked(model, load_folder(data), cfg, cache_dir=os.path.join(data, ".lit_cache"))
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"world": world, "pairs_per_second": result.pairs_per_second,
                       "loss": result.history[-1]["loss"], "global_batch": batch * world}, fh)
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, data: str, work: str, args: argparse.Namespace) -> dict:
    out = os.path.join(work, f"n{nproc}.json")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", os.path.abspath(__file__), "worker", data, out, str(args.steps),
           str(args.batch), args.mode]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{nproc}-process run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(out) as fh:
        return json.load(fh)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        data, out, steps, batch, mode = sys.argv[2:]
        worker(data, out, int(steps), int(batch), mode)
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=16, help="pairs per step per process")
    p.add_argument("--mode", default="lora", choices=["head", "lora", "full"])
    p.add_argument("--images", type=int, default=96)
    args = p.parse_args()
    _import_package()
    from shapes_data import write_shapes_folder

    with tempfile.TemporaryDirectory() as work:
        data = write_shapes_folder(os.path.join(work, "data"), args.images, seed=0)
        rows = []
        for nproc in (1, 2):
            run(nproc, data, work, args)  # first run of each size fills the cache and warms the file cache
            rows.append(run(nproc, data, work, args))
    print(f"\nlocked tuning, mode {args.mode}, {args.steps} steps, {args.batch} pairs/step/process, gloo on CPU")
    print(f"{'processes':>10}{'global batch':>14}{'pairs/s':>10}{'final loss':>12}")
    for r in rows:
        print(f"{r['world']:>10}{r['global_batch']:>14}{r['pairs_per_second']:>10.1f}{r['loss']:>12.4f}")
    one, two = rows[0]["pairs_per_second"], rows[1]["pairs_per_second"]
    print(f"distributed_scaling: {two:.1f} ({two / one:.2f}x vs 1 process)")


if __name__ == "__main__":
    main()
