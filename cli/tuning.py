"""``demo`` (the main job) and ``train``: locked-image tuning from the command line."""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from ..models.common.errors import LitError
from .common import add_tower_args, device_name, towers


def _add_train_args(p: argparse.ArgumentParser, steps: int, mode: str) -> None:
    p.add_argument("--mode", choices=["head", "lora", "full"], default=mode)
    p.add_argument("--loss", choices=["softmax", "sigmoid"], default="softmax")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step PER PROCESS under torchrun")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--val-every", type=int, default=25)
    p.add_argument("--cache-dir", default="", help="image-embedding cache (default: DATA/.lit_cache)")


def _train(args: argparse.Namespace, data: str):
    from ..models.data.dataset import load_dataset
    from ..models.data.streaming import load_shards
    from ..models.tuning.lit_model import LitModel
    from ..models.tuning.trainer import TrainConfig, train_locked

    shards = getattr(args, "shards", None)
    if bool(data) == bool(shards):
        raise LitError("give either DATA (a folder or manifest) or --shards (tar files), not both or neither.",
                       input_name="data", fix="e.g. 'train my_folder --out a.safetensors' or "
                       "'train --shards \"data/shard-{000..009}.tar\" --out a.safetensors'.")
    image, text = towers(args)
    dataset = load_shards(shards) if shards else load_dataset(data)
    model = LitModel(image, text, mode=args.mode, loss=args.loss, lora_rank=args.lora_rank, seed=args.seed)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         val_fraction=args.val_fraction, val_every=args.val_every,
                         checkpoint_dir=getattr(args, "checkpoint_dir", "") or None,
                         checkpoint_every=getattr(args, "checkpoint_every", 0),
                         resume=getattr(args, "resume", False), sigmoid_ring=getattr(args, "sigmoid_ring", False))
    result = train_locked(model, dataset, config, cache_dir=args.cache_dir or None)
    return model, result


def _print_recall(result) -> None:
    keys = ["i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5", "zero_shot_acc"]
    before, after = result.before_metrics, result.best_metrics
    shown = [k for k in keys if k in before or k in after]
    if not shown:
        return
    print(f"\n{'validation':<14}{'before':>8}{'after':>8}")
    for k in shown:
        print(f"{k:<14}{before.get(k, float('nan')):>8.3f}{after.get(k, float('nan')):>8.3f}")


def cmd_train(args: argparse.Namespace) -> int:
    from ..models.tuning import distributed
    from ..models.tuning.lit_model import save_adapter

    # Under torchrun (WORLD_SIZE>1) join the process group; a plain run stays single-process.
    rank, _world = distributed.init_from_env(device_name(args))
    try:
        model, result = _train(args, args.data)
        if rank == 0:  # every rank holds the same weights; one writes and talks
            print(result.report)
            _print_recall(result)
            print(f"\nadapter written to {save_adapter(model, args.out)}")
        distributed.barrier()
    finally:
        distributed.shutdown()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded defaults: build a captioned set from scikit-image's photos, LiT-tune the
    text side against the locked EfficientNet-Lite0, print recall before/after and the similarity table."""
    import torch.nn.functional as F

    from ..models.data.dataset import load_dataset, read_image
    from ..models.tuning.demo_data import SKIMAGE_PHOTOS, skimage_captioned_set
    from ..models.tuning.lit_model import save_adapter

    work = args.workdir or os.path.join(tempfile.gettempdir(), "comfyui_lit_demo")
    data = skimage_captioned_set(os.path.join(work, "photos"), crops_per_photo=args.crops)
    print(f"dataset: {load_dataset(data).report()}")
    model, result = _train(args, data)
    print()
    print(result.report)
    _print_recall(result)

    names = [n for n in SKIMAGE_PHOTOS if os.path.exists(os.path.join(data, f"{n}_0.jpg"))]
    images = [read_image(os.path.join(data, f"{n}_0.jpg")) for n in names]
    captions = [SKIMAGE_PHOTOS[n][0] for n in names]
    with torch.no_grad():
        img = torch.cat([model.encode_image(i[None]) for i in images])
        txt = F.normalize(model.encode_text(captions), dim=-1).to(img.device)
    sims = (img @ txt.t()).cpu()
    print("\nimage-text cosine similarity after LiT tuning (rows: photos, columns: their captions)")
    short = [n[:7] for n in names]
    print(f"{'':<22}" + "".join(f"{s:>8}" for s in short))
    for n, row in zip(names, sims, strict=True):
        mark = "".join(f"{float(v):>7.2f}{'*' if j == int(row.argmax()) else ' '}" for j, v in enumerate(row))
        print(f"{n[:20]:<22}{mark}")
    hits = sum(int(row.argmax()) == i for i, row in enumerate(sims))
    print(f"(* = best caption per photo; {hits}/{len(names)} photos pick their own caption)")
    print(f"\nadapter written to {save_adapter(model, os.path.join(work, 'demo_adapter.safetensors'))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: LiT-tune the embedded towers on scikit-image's photos")
    add_tower_args(p)
    _add_train_args(p, steps=150, mode="head")
    p.add_argument("--crops", type=int, default=6, help="random crops per photo (data augmentation)")
    p.add_argument("--workdir", default="", help="where the photo set, cache and adapter go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="tune on a folder of images + .txt captions, or a JSONL/CSV manifest")
    p.add_argument("data", nargs="?", default="", help="folder of images + .txt captions, or a JSONL/CSV manifest")
    p.add_argument("--out", required=True, help="adapter .safetensors to write")
    p.add_argument("--shards", action="append", default=None,
                   help="WebDataset-style tar shards instead of DATA: 'dir/shard-{000..099}.tar', globs; repeatable")
    p.add_argument("--checkpoint-dir", default="", help="folder for resumable training checkpoints (rank 0 writes)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write a checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --checkpoint-dir (starts fresh when there is none)")
    p.add_argument("--sigmoid-ring", action="store_true",
                   help="with --loss sigmoid under torchrun: SigLIP's chunked ring exchange instead of an all-gather")
    add_tower_args(p)
    _add_train_args(p, steps=300, mode="lora")
    p.set_defaults(func=cmd_train)
