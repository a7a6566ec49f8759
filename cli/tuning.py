"""``demo`` (the main job), ``train`` and ``evaluate``: locked-image tuning from the command line.

Every training option, its default and its help come from ``models/tuning/spec.py`` (the node reads the same).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

from ..models.common.errors import LitError
from ..models.common.text import split_prompts
from ..models.tuning import spec
from .common import add_tower_args, device_name, towers

_TYPES = {"int": int, "float": float}


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The spec's parameters as options; numeric defaults left None resolve to the chosen mode's default."""
    for name in ("mode", "loss", "steps", "batch_size", "lr", "text_lr", "weight_decay", "warmup_steps", "init",
                 "lora_rank", "lora_alpha", "text_layers", "val_fraction", "val_every", "patience", "whiten", "keep",
                 "seed"):
        prm = spec.PARAMS[name]
        per_mode = any(name in d for d in spec.MODE_DEFAULTS.values())
        shown = ("default: per mode, " + ", ".join(f"{m} {d[name]}" for m, d in spec.MODE_DEFAULTS.items())
                 if per_mode else f"default: {prm.default}")
        kw = {"choices": list(prm.choices)} if prm.kind == "choice" else {"type": _TYPES[prm.kind]}
        p.add_argument(prm.flag, dest=name, default=None if per_mode else prm.default,
                       help=f"{prm.help} ({shown})".replace("%", "%%"), **kw)
    p.add_argument("--cache-dir", default="", help="image-embedding cache (default: DATA/.lit_cache)")


def _config(args: argparse.Namespace):
    from ..models.tuning.trainer import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                       text_lr=args.text_lr or None, weight_decay=args.weight_decay,
                       warmup_steps=None if args.warmup_steps < 0 else args.warmup_steps, init=args.init,
                       val_fraction=args.val_fraction, val_every=args.val_every, keep=args.keep,
                       patience=args.patience, whiten=args.whiten,
                       checkpoint_dir=getattr(args, "checkpoint_dir", "") or None,
                       checkpoint_every=getattr(args, "checkpoint_every", 0),
                       resume=getattr(args, "resume", False), sigmoid_ring=getattr(args, "sigmoid_ring", False))


def _progress(every: int):
    """Print a line per validation and a loss line every ``every`` steps, as the run goes (rank 0 only)."""
    from ..models.tuning import distributed

    def on_step(step: int, total: int, metrics: dict) -> None:
        if not distributed.is_main():
            return
        if "val_loss" in metrics:
            print(f"step {step:>6}/{total}  loss {metrics['loss']:.4f}  val loss {metrics['val_loss']:.4f}  "
                  f"val R@5 i2t {metrics.get('val_i2t_r@5', 0):.3f} t2i {metrics.get('val_t2i_r@5', 0):.3f}",
                  flush=True)
        elif step % every == 0 or step == total:
            print(f"step {step:>6}/{total}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}", flush=True)

    return on_step


def _train(args: argparse.Namespace, data: str):
    from ..models.data.dataset import load_dataset
    from ..models.data.streaming import load_shards
    from ..models.tuning.lit_model import LitModel
    from ..models.tuning.trainer import TrainingDiverged, train_locked

    shards = getattr(args, "shards", None)
    if bool(data) == bool(shards):
        raise LitError("give either DATA (a folder or manifest) or --shards (tar files), not both or neither.",
                       input_name="data", fix="e.g. 'train my_folder --out a.safetensors' or "
                       "'train --shards \"data/shard-{000..009}.tar\" --out a.safetensors'.")
    config = _config(args)
    config.validate()
    image, text = towers(args)
    dataset = load_shards(shards) if shards else load_dataset(data)
    model = LitModel(image, text, mode=args.mode, loss=args.loss, lora_rank=args.lora_rank,
                     lora_alpha=args.lora_alpha, seed=args.seed, text_layers=args.text_layers)
    kept = "best validated" if config.keep == "refit" else config.keep
    print(f"training {args.mode} + {args.loss} on {len(dataset)} images (Ctrl-C or SIGTERM: stop and keep the "
          f"{kept} state)", flush=True)
    try:
        result = train_locked(model, dataset, config, cache_dir=args.cache_dir or None,
                              callback=_progress(max(1, (config.resolved(args.mode).steps or 100) // 20)),
                              interrupt_exceptions=(KeyboardInterrupt, _Terminated), on_refit=_refit_progress())
    except TrainingDiverged as err:  # the model is back on its best finite state: the caller may still save it
        print(f"error: {err}", file=sys.stderr)
        return model, err.result, 1
    return model, result, 0


def _refit_progress():
    """Says when the refit on every image starts and ends (keep 'refit'): a lora run's refit takes a while."""
    from ..models.tuning import distributed

    def report(step: int, total: int) -> None:
        if not distributed.is_main():
            return
        if step == 1:
            print(f"refit on every image (validation ones included): {total} steps", flush=True)
        if step == total:
            print(f"refit done ({total} steps)", flush=True)
    return report


class _Terminated(Exception):
    """SIGTERM (schedulers, ComfyUI's shutdown): stop like Ctrl-C and save the kept state."""


def _on_sigterm(_signum, _frame) -> None:
    raise _Terminated()


def _check_out(path: str) -> str:
    """Refuse an unusable --out before any training is spent."""
    if not path.lower().endswith((".safetensors", ".sft")):
        path += ".safetensors"
    if not os.path.basename(path).rsplit(".", 1)[0].strip(". "):  # '.safetensors', '....': a hidden, nameless file
        raise LitError(f"--out '{path}' has no file name.", input_name="out",
                       fix="give one, e.g. my_adapter.safetensors.")
    if os.path.isdir(path):
        raise LitError(f"--out '{path}' is a directory.", input_name="out",
                       fix="give a file name, e.g. out.safetensors.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise LitError(f"cannot write into '{folder}'.", input_name="out",
                       fix="create the folder first, or choose a writable one.")
    return path


def _print_recall(result) -> None:
    from ..models.tuning.report import validation_table

    table = validation_table(result)
    if table:
        print("\nvalidation history")
        print(table)


def cmd_train(args: argparse.Namespace) -> int:
    from ..models.tuning import distributed
    from ..models.tuning.lit_model import save_adapter

    out = _check_out(args.out)
    rank, _world = distributed.init_from_env(device_name(args))
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            model, result, code = _train(args, args.data)
        except (KeyboardInterrupt, _Terminated) as err:  # before the first step (training itself keeps its state)
            print("stopped before training began: no adapter written; the image embeddings computed so far are "
                  "kept in the cache, so running again continues from there.", file=sys.stderr)
            return 130 if isinstance(err, KeyboardInterrupt) else 143
        if rank == 0:  # every rank holds the same weights; one writes and talks
            print()
            print(result.report)
            _print_recall(result)
            which = {"best": f"the best validated state, step {result.best_step}",
                     "refit": f"the refit on every image, {result.best_step} steps as validation chose"}.get(
                result.kept, f"the last state, step {result.steps_done}")
            print(f"\nadapter written to {save_adapter(model, out)} ({which})")
        distributed.barrier()
    finally:
        signal.signal(signal.SIGTERM, old)
        distributed.shutdown()
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Recall (and, given labels, zero-shot accuracy) of a saved adapter on a separate captioned folder."""
    import torch

    from ..models.data.dataset import load_dataset
    from ..models.data.embedding_cache import EmbeddingCache
    from ..models.tuning.lit_model import load_adapter
    from ..models.tuning.metrics import evaluate

    image, text = towers(args)
    model = load_adapter(args.adapter, image, text, force=args.force)
    ds = load_dataset(args.folder)
    cache = EmbeddingCache(image, args.cache_dir or ds.default_cache_dir())
    feats, ds = cache.embed_dataset(ds)
    with torch.no_grad():
        img = model.normalize_image_features(feats.to(model.device))
        metrics = evaluate(img, ds.captions, model.encode_text, ks=(1, 5, 10))
    print(f"{len(ds)} images, {sum(len(c) for c in ds.captions)} captions in {args.folder}")
    for k in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10"):
        print(f"{k:<10}{metrics[k]:.3f}")
    if args.labels:
        labels = split_prompts(args.labels, input_name="labels")
        words = [lab.lower() for lab in labels]
        # an image's class: the one label its captions name (images naming none or several are left out)
        keep, target = [], []
        for i, caps in enumerate(ds.captions):
            text_all = " ".join(caps).lower()
            hit = [j for j, w in enumerate(words) if w in text_all]
            if len(hit) == 1:
                keep.append(i)
                target.append(hit[0])
        if keep:
            lab = model.encode_text([args.template.format(x) for x in labels]).to(img.device)
            pred = (img[keep] @ lab.t()).argmax(1).cpu()
            acc = float((pred == torch.tensor(target)).float().mean())
            print(f"zero-shot accuracy {acc:.3f} on {len(keep)} images whose captions name exactly one of "
                  f"{len(labels)} labels (chance {1 / len(labels):.3f})")
        else:
            print("zero-shot: no image's captions name exactly one label")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded defaults: LiT-tune the head against the locked EfficientNet-Lite0 on part of
    scikit-image's photos and measure on photos it never saw (other photos, not crops of the training ones)."""
    from ..models.data.dataset import load_dataset
    from ..models.tuning.demo_data import skimage_captioned_set
    from ..models.tuning.lit_model import save_adapter

    work = args.workdir or os.path.join(tempfile.gettempdir(), "comfyui_lit_demo")
    data = skimage_captioned_set(os.path.join(work, "photos"), crops_per_photo=args.crops)
    print(f"dataset: {load_dataset(data).report()}")
    print("The validation numbers below are on a seeded held-out split of this folder. Crops of one photo can "
          "fall on both sides, so they partly measure recognising a photo seen in training; for generalisation "
          "to unseen photos see bench/lit_quality.py (held-out Flickr8k photos).")
    model, result, _ = _train(args, data)
    print()
    print(result.report)
    _print_recall(result)
    print(f"\nadapter written to {save_adapter(model, os.path.join(work, 'demo_adapter.safetensors'))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: LiT-tune the embedded towers on scikit-image's photos")
    add_tower_args(p)
    _add_train_args(p)
    p.add_argument("--crops", type=int, default=6, help="random crops per photo (data augmentation)")
    p.add_argument("--workdir", default="", help="where the photo set, cache and adapter go")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="tune on a folder of images + .txt captions, or a JSONL/CSV manifest",
                       description="Locked-image tuning: the image encoder stays frozen (its embeddings are cached); "
                       "the text side learns to meet it. Prints progress and validation as it runs.")
    p.add_argument("data", nargs="?", default="", help="folder of images + .txt captions, or a JSONL/CSV manifest")
    p.add_argument("--out", required=True, help="adapter .safetensors to write (checked before training)")
    p.add_argument("--shards", action="append", default=None,
                   help="WebDataset-style tar shards instead of DATA: 'dir/shard-{000..099}.tar', globs; repeatable")
    p.add_argument("--checkpoint-dir", default="", help="folder for resumable training checkpoints (rank 0 writes)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="write a checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest intact checkpoint in --checkpoint-dir (fresh when there is none); "
                        "a new --lr/--text-lr/--weight-decay is applied from there on")
    p.add_argument("--sigmoid-ring", action="store_true",
                   help="with --loss sigmoid under torchrun: SigLIP's chunked ring exchange instead of an all-gather")
    add_tower_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="recall (and zero-shot accuracy) of an adapter on a separate captioned folder")
    p.add_argument("folder", help="folder of images + .txt captions (or a manifest) not used in training")
    p.add_argument("--adapter", required=True, help="a .safetensors adapter")
    p.add_argument("--labels", default="", help="class words, one per line or ';'-separated: accuracy on the images "
                                                "whose captions name exactly one")
    p.add_argument("--template", default="a photo of a {}.", help="prompt template for --labels")
    p.add_argument("--force", action="store_true", help="load even if the encoders' fingerprints differ")
    p.add_argument("--cache-dir", default="", help="image-embedding cache (default: FOLDER/.lit_cache)")
    add_tower_args(p)
    p.set_defaults(func=cmd_evaluate)
