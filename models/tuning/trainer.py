"""Locked-image tuning: train the text side of a :class:`LitModel` against a locked image tower.

Image embeddings come from the on-disk embedding cache (computed once per tower and file), so a training step
costs only the text side. In ``head`` mode the text tower is frozen too, and its features are computed once per
distinct caption, so a step is a single matrix product.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..common.errors import LitError
from ..data.dataset import CaptionedDataset
from ..data.embedding_cache import EmbeddingCache
from . import distributed as dist_
from .lit_model import LitModel
from .metrics import evaluate


@dataclass
class TrainConfig:
    """Settings of one locked-tuning run (optimizer steps; each step sees ``batch_size * grad_accum`` pairs)."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3  # head, temperature/bias and LoRA
    text_lr: float | None = None  # lora/full text-tower params; None: lr for lora, lr/10 for full
    weight_decay: float = 1e-4
    warmup_steps: int | None = None  # None: 5% of the steps
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 0
    val_fraction: float = 0.1
    val_every: int = 50
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    cache_embeddings: bool = True  # False recomputes the image tower every step (the benchmark's baseline)
    embed_batch_size: int = 32
    restore_best: bool = True  # end on the best validated state, not the last one
    # Under torchrun batch_size is PER RANK: the global batch is batch_size * world_size.
    checkpoint_dir: str | None = None  # where --checkpoint-every writes (rank 0, atomically)
    checkpoint_every: int = 0  # 0: no checkpoints
    resume: bool = False  # continue from the latest checkpoint in checkpoint_dir (a fresh start if there is none)
    sigmoid_ring: bool = False  # sigmoid loss under torchrun: SigLIP's chunked ring exchange, not an all-gather

    def validate(self) -> None:
        checks = [("steps", self.steps >= 1, "at least 1"), ("batch_size", self.batch_size >= 2, "at least 2"),
                  ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive number"),
                  ("grad_accum", self.grad_accum >= 1, "at least 1"),
                  ("val_fraction", 0.0 <= self.val_fraction < 0.9, "between 0 and 0.9"),
                  ("val_every", self.val_every >= 1, "at least 1"),
                  ("mixed_precision", self.mixed_precision in ("auto", "bf16", "off"), "auto, bf16 or off"),
                  ("checkpoint_every", self.checkpoint_every >= 0, "0 (off) or more"),
                  ("checkpoint_dir", bool(self.checkpoint_dir) or not (self.checkpoint_every or self.resume),
                   "a folder when checkpoint_every or resume is set")]
        for name, ok, want in checks:
            if not ok:
                raise LitError(f"{name} is {getattr(self, name)!r}.", input_name=name, fix=f"set it to {want}.")


@dataclass
class TrainResult:
    """What a run produced. ``best_state`` is the adapter's trained tensors at ``best_step``."""

    history: list[dict[str, float]] = field(default_factory=list)  # one entry per step: loss, lr, scale
    val_history: list[dict[str, float]] = field(default_factory=list)  # one entry per validation (with "step")
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    before_metrics: dict[str, float] = field(default_factory=dict)
    steps_done: int = 0
    interrupted: bool = False
    cache_stats: dict[str, int] = field(default_factory=dict)
    dataset_report: str = ""
    seconds: float = 0.0
    pairs_per_second: float = 0.0  # global pairs (all ranks) per second of the training loop
    resumed_from: int = 0  # the checkpoint step this run continued from (0: a fresh start)
    world_size: int = 1
    report: str = ""


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return f


def _selection_score(metrics: dict[str, float]) -> float:
    return metrics.get("zero_shot_acc", metrics.get("mean_r@1", 0.0))


def _fmt(metrics: dict[str, float]) -> str:
    keys = ["zero_shot_acc", "i2t_r@1", "i2t_r@5", "t2i_r@1", "t2i_r@5"]
    return ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)


def train_locked(model: LitModel, dataset: CaptionedDataset, config: TrainConfig | None = None, *,
                 cache_dir: str | None = None, callback: Callable[[int, int, dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 interrupt_exceptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
                 embed_progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train ``model``'s text side on ``dataset`` with the image tower locked; returns a :class:`TrainResult`.

    - ``cache_dir``: where image embeddings are cached (default ``<dataset folder>/.lit_cache``; in-graph
      datasets keep them in memory).
    - ``callback(step, total, metrics)`` after every optimizer step (metrics: loss, lr, logit_scale, and the
      validation metrics on validation steps). It may raise one of ``interrupt_exceptions`` (e.g. ComfyUI's
      cancel): the run then stops, the best state so far is loaded into the model and returned with
      ``interrupted=True``. ``should_stop()`` returning True does the same without an exception.
    - ``embed_progress(done, total)`` while image embeddings are computed/read before training (the first run's
      slow part); an exception raised there simply propagates (nothing has been trained yet).
    - A NaN/inf loss raises ``LitError`` naming the step; the model keeps its last good state (the bad step is
      never applied) and ``err.result`` holds the partial result.
    """
    config = config or TrainConfig()
    config.validate()
    if len(dataset) < 2:
        raise LitError(f"the dataset has {len(dataset)} captioned image(s); contrastive tuning needs at least 2.",
                       input_name="dataset", fix="add more captioned images.")
    t_start = time.perf_counter()
    device = model.text_tower.device
    model.image_tower.requires_grad_(False)
    result = TrainResult()

    # -- data: split, then image embeddings (cached) ---------------------------------------------------------
    train_ds, val_ds = dataset.split(config.val_fraction, config.seed)
    cache = EmbeddingCache(model.image_tower, cache_dir or dataset.default_cache_dir(),
                           batch_size=config.embed_batch_size)
    world, rank = dist_.world_size(), dist_.rank()
    if config.sigmoid_ring and model.loss_name != "sigmoid":
        raise LitError("the ring exchange is for the sigmoid loss.", input_name="sigmoid_ring",
                       fix="use loss 'sigmoid', or turn the ring off for the softmax loss.")
    result.world_size = world
    if world > 1 and cache.dir:
        # Each rank embeds its strided shard into the shared cache folder (content-keyed shards combine), then
        # every rank reads the whole cache below: one tower forward per image across the job.
        for part, needed in ((train_ds, config.cache_embeddings), (val_ds, True)):
            mine = part.subset(list(range(rank, len(part), world)))
            if needed and len(mine):
                try:
                    cache.embed_dataset(mine, embed_progress)
                except LitError:
                    pass  # an unreadable shard: the full pass below raises the same error on every rank
        dist_.barrier()
        cache._index = None  # re-read the folder: the other ranks' shards are there now
    if config.cache_embeddings:
        train_feats, train_ds = cache.embed_dataset(train_ds, embed_progress)
    else:
        train_feats = None
    val_feats = None
    if len(val_ds):
        val_feats, val_ds = cache.embed_dataset(val_ds, embed_progress)
    n_known = len(dataset.skipped)
    late = [f"{n} ({why})" for part in (train_ds, val_ds) for n, why in part.skipped[n_known:]]
    result.dataset_report = dataset.report() + ("\nUnreadable when decoded, skipped: " + "; ".join(late)
                                                if late else "")
    if len(train_ds) < 2:
        raise LitError("fewer than 2 readable training images.", input_name="dataset",
                       fix="add more captioned images or lower the validation fraction.")
    class_names = dataset.class_names()
    if class_names and len(val_ds) and not all(c[0] in class_names for c in val_ds.captions):
        class_names = None

    # -- text: in head mode the tower is frozen, so each distinct caption is encoded once -------------------
    text_cache: dict[str, torch.Tensor] = {}
    if model.mode == "head":
        uniq = sorted({c for caps in train_ds.captions for c in caps})
        feats = model.text_tower.encode(uniq)
        text_cache = dict(zip(uniq, feats, strict=True))

    def text_embed(texts: list[str]) -> torch.Tensor:
        if text_cache and all(t in text_cache for t in texts):
            feats = torch.stack([text_cache[t] for t in texts])
        else:
            feats = model.text_features(texts)
        return model.project_text(feats)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        if val_feats is None:
            return {}
        img = model.normalize_image_features(val_feats.to(device))
        return evaluate(img, val_ds.captions, lambda t: model.encode_text(t).to(device), class_names=class_names)

    # -- optimizer ----------------------------------------------------------------------------------------
    adapter_params = list(model.adapter.parameters())
    text_params = [p for p in model.trainable_parameters() if all(p is not q for q in adapter_params)]
    image_ids = {id(p) for p in model.image_tower.parameters()}
    if any(id(p) in image_ids for p in model.trainable_parameters()):  # pragma: no cover - a bug, not user error
        raise RuntimeError("image tower parameters must never be optimised")
    text_lr = config.text_lr if config.text_lr is not None else (config.lr if model.mode == "lora" else config.lr / 10)
    loss_params = list(model.adapter.loss.parameters())
    head_params = list(model.adapter.head.parameters())
    groups = [{"params": head_params, "lr": config.lr, "weight_decay": config.weight_decay},
              {"params": loss_params, "lr": config.lr, "weight_decay": 0.0}]
    if text_params:
        groups.append({"params": text_params, "lr": text_lr, "weight_decay": config.weight_decay})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6)
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, int(0.05 * config.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(max(1, warmup), config.steps))
    use_bf16 = device.type == "cuda" and config.mixed_precision in ("auto", "bf16") or (
        config.mixed_precision == "bf16" and device.type == "cpu")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    # -- sampling: seeded epochs over the training images, one caption per image per step ------------------
    gen = torch.Generator().manual_seed(int(config.seed))
    n_train = len(train_ds)
    train_caps = train_ds.captions
    if n_train < 2 * world:
        raise LitError(f"{n_train} training images for {world} processes.", input_name="dataset",
                       fix="use fewer processes or more data (at least 2 images per process).")
    # Every rank draws the same GLOBAL batch from the same seeded generator and takes its slice, so the run does
    # not depend on the world size: W ranks x batch b == 1 process x batch b*W.
    bs = min(config.batch_size * world, n_train)
    order: list[int] = []

    def next_batch() -> list[int]:
        nonlocal order
        if len(order) < bs:
            order = order + torch.randperm(n_train, generator=gen).tolist()
        batch, order = order[:bs], order[bs:]
        # an image must not meet itself as a negative when an epoch boundary falls inside the batch
        seen: set[int] = set()
        out = []
        for i in batch:
            if i not in seen:
                seen.add(i)
                out.append(i)
        return out

    def image_features(idx: list[int]) -> torch.Tensor:
        if train_feats is not None:
            return train_feats[idx].to(device)
        # The usual way: decode and run the (locked) image tower on every step.
        return cache._encode([train_ds.load_image(i) for i in idx]).to(device)

    # Dropout stays off (eval mode throughout): small-data tuning doesn't need it, and it keeps runs
    # reproducible and cheaper. LoRA's own dropout is 0.
    model.eval()
    ckpt = None
    if config.resume:
        path = dist_.latest_checkpoint(config.checkpoint_dir)
        if path:
            ckpt = dist_.load_checkpoint(path)
            _check_compatible(ckpt[1], model, config, bs, n_train, path)
    run_info = {"global_batch": bs, "n_train": n_train, "mode": model.mode, "loss": model.loss_name,
                "seed": config.seed, "steps": config.steps, "world_size": world}
    if ckpt is None:
        result.before_metrics = validate()
        if result.before_metrics:
            result.val_history.append({"step": 0, **result.before_metrics})
        best_score = _selection_score(result.before_metrics) if result.before_metrics else -math.inf
        result.best_state = model.trainable_state_dict()
        result.best_metrics = dict(result.before_metrics)
        start = 1
    else:
        tensors, meta = ckpt
        model.load_trainable_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        dist_.restore_optimizer(opt, tensors, meta["optimizer"])
        sched.load_state_dict(meta["scheduler"])
        gen.set_state(tensors["sampler.gen"])
        order = tensors["sampler.order"].tolist()
        result.history, result.val_history = meta["history"], meta["val_history"]
        result.before_metrics, result.best_metrics = meta["before_metrics"], meta["best_metrics"]
        result.best_step, best_score = meta["best_step"], float(meta["best_score"])
        result.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        result.resumed_from = result.steps_done = meta["step"]
        start = meta["step"] + 1

    def save_checkpoint(step: int) -> None:
        tensors = {f"model.{k}": v for k, v in model.trainable_state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in result.best_state.items()})
        opt_tensors, opt_meta = dist_.flatten_optimizer(opt)
        tensors.update(opt_tensors)
        tensors["sampler.gen"] = gen.get_state()
        tensors["sampler.order"] = torch.tensor(order, dtype=torch.int64)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"step": step, **run_info, "optimizer": opt_meta, "scheduler": sched.state_dict(),
                "history": result.history, "val_history": result.val_history,
                "before_metrics": result.before_metrics, "best_metrics": result.best_metrics,
                "best_step": result.best_step, "best_score": best_score}
        dist_.save_checkpoint(config.checkpoint_dir, step, tensors, meta)

    pairs = 0
    t_loop = time.perf_counter()
    step = 0
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    # Seeded global RNG (forked, so the caller's stream is untouched) for anything random we don't own.
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(int(config.seed))
        if ckpt is not None:
            torch.set_rng_state(ckpt[0]["rng.torch"])
        try:
            for step in range(start, config.steps + 1):
                if should_stop is not None and should_stop():
                    result.interrupted = True
                    step -= 1
                    break
                opt.zero_grad(set_to_none=True)
                total_loss = 0.0
                for _ in range(config.grad_accum):
                    idx = next_batch()
                    caps = [train_caps[i][int(torch.randint(len(train_caps[i]), (1,), generator=gen))] for i in idx]
                    pos = torch.tensor([[a == b for b in caps] for a in caps], device=device)
                    if world == 1:
                        img = model.normalize_image_features(image_features(idx))
                        with autocast():
                            txt = text_embed(caps)
                        loss = model.adapter.loss(img, txt.float(), positives=pos)
                        global_loss = loss.detach()
                    else:
                        # This rank's slice of the global batch; the loss is over the global similarity matrix
                        # (embeddings all-gathered with gradients), each rank computing its own rows.
                        sizes = dist_.split_sizes(len(idx), world)
                        lo = sum(sizes[:rank])
                        hi = lo + sizes[rank]
                        img = model.normalize_image_features(image_features(idx[lo:hi]))
                        with autocast():
                            txt = text_embed(caps[lo:hi])
                        if config.sigmoid_ring:
                            lf = model.adapter.loss
                            loss = dist_.sigmoid_ring_loss(img, txt.float(), lf.logit_scale, lf.logit_bias, pos, sizes)
                        else:
                            img_all = dist_.all_gather_with_grad(img, sizes)
                            txt_all = dist_.all_gather_with_grad(txt.float(), sizes)
                            loss = model.adapter.loss(img_all, txt_all, positives=pos, rows=(lo, hi))
                        global_loss = dist_.sum_scalar(loss)  # every rank sees the same value: no rank diverges
                    if not torch.isfinite(global_loss):
                        err = LitError(f"the loss became {float(global_loss)} at step {step}; training stopped "
                                       f"and the model keeps its state from step {step - 1}.", input_name="lr",
                                       fix="lower the learning rate (or use loss 'sigmoid'/mode 'head').")
                        result.steps_done = step - 1
                        result.report = _report(model, result, config, cache, train_ds, val_ds, t_start)
                        err.result = result  # type: ignore[attr-defined]
                        raise err
                    (loss / config.grad_accum).backward()
                    total_loss += float(global_loss) / config.grad_accum
                    pairs += len(idx)
                params = [p for g in groups for p in g["params"]]
                # The per-rank losses sum to the global loss, so SUMMED gradients are its exact gradient. An
                # explicit all-reduce of the (small) trainable set instead of DDP: no module wrapping, and the
                # frozen towers and cached features stay out of any bucket.
                dist_.all_reduce_sum_([p.grad for p in params if p.grad is not None])
                norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                if not torch.isfinite(norm):
                    err = LitError(f"the gradients became {float(norm)} at step {step}; training stopped and the model "
                                   f"keeps its state from step {step - 1}.", input_name="lr",
                                   fix="lower the learning rate.")
                    result.steps_done = step - 1
                    err.result = result  # type: ignore[attr-defined]
                    raise err
                opt.step()
                sched.step()
                entry = {"step": step, "loss": total_loss, "lr": opt.param_groups[0]["lr"],
                         "logit_scale": float(model.logit_scale.detach()),
                         "logit_bias": float(model.logit_bias.detach())}
                result.history.append(entry)
                result.steps_done = step
                metrics = dict(entry)
                if val_feats is not None and (step % config.val_every == 0 or step == config.steps):
                    vm = validate()
                    result.val_history.append({"step": step, **vm})
                    metrics.update({f"val_{k}": v for k, v in vm.items()})
                    if _selection_score(vm) > best_score:
                        best_score = _selection_score(vm)
                        result.best_state, result.best_step = model.trainable_state_dict(), step
                        result.best_metrics = vm
                if config.checkpoint_every and (step % config.checkpoint_every == 0 or step == config.steps):
                    save_checkpoint(step)
                if callback is not None:
                    callback(step, config.steps, metrics)
        except interrupt_exceptions:
            result.interrupted = True
    loop_s = time.perf_counter() - t_loop
    result.pairs_per_second = pairs / loop_s if loop_s > 0 else 0.0
    if (result.interrupted and val_feats is not None and result.steps_done > 0
            and result.val_history[-1]["step"] != result.steps_done):
        # A cancel between two validations must not throw away the steps since the last one: judge them too.
        vm = validate()
        result.val_history.append({"step": result.steps_done, **vm})
        if _selection_score(vm) > best_score:
            result.best_state, result.best_step = model.trainable_state_dict(), result.steps_done
            result.best_metrics = vm
    if val_feats is None:  # nothing to select on: the last state is the best we know
        result.best_state, result.best_step = model.trainable_state_dict(), result.steps_done
    elif config.restore_best or result.interrupted:
        model.load_trainable_state_dict(result.best_state)
    model.eval()
    result.cache_stats = dict(cache.stats)
    result.seconds = time.perf_counter() - t_start
    info = {"steps": result.steps_done, "best_step": result.best_step, "dataset_size": len(dataset),
            "train_size": len(train_ds), "val_size": len(val_ds), "seed": config.seed, "batch_size": config.batch_size,
            "lr": config.lr, "metrics": result.best_metrics, "metrics_before": result.before_metrics,
            "interrupted": result.interrupted}
    if world > 1 or result.resumed_from:  # batch_size above is per process
        info.update({"world_size": world, "global_batch": bs, "resumed_from": result.resumed_from})
    model.training_info = info
    result.report = _report(model, result, config, cache, train_ds, val_ds, t_start)
    return result


def _check_compatible(meta: dict, model: LitModel, config: TrainConfig, global_batch: int, n_train: int,
                      path: str) -> None:
    want = {"global_batch": global_batch, "n_train": n_train, "mode": model.mode, "loss": model.loss_name,
            "seed": config.seed, "steps": config.steps}
    diff = [f"{k} {meta.get(k)!r} -> {v!r}" for k, v in want.items() if meta.get(k) != v]
    if diff:
        raise LitError(f"checkpoint '{path}' was written by a different run ({'; '.join(diff)}).",
                       input_name="resume", fix="resume with the same data and settings (global batch = "
                       "batch size x processes), or use a fresh --checkpoint-dir.")


def _report(model: LitModel, result: TrainResult, config: TrainConfig, cache: EmbeddingCache,
            train_ds: CaptionedDataset, val_ds: CaptionedDataset, t_start: float) -> str:
    lines = [f"LiT locked tuning: mode {model.mode}, loss {model.loss_name}, {result.steps_done}/{config.steps} steps"
             + (" (interrupted)" if result.interrupted else "")
             + (f" (resumed from step {result.resumed_from})" if result.resumed_from else "")
             + (f" on {result.world_size} processes" if result.world_size > 1 else "")
             + f" in {time.perf_counter() - t_start:.1f}s.",
             f"Image tower '{model.image_tower.name}' locked; text tower '{model.text_tower.name}'.",
             f"Data: {len(train_ds)} train / {len(val_ds)} validation images. {result.dataset_report}",
             f"Embedding cache: {cache.stats['hits']} hits, {cache.stats['misses']} computed "
             f"({cache.stats['forwards']} tower forwards)"
             + (f" on rank {dist_.rank()} of {result.world_size}" if result.world_size > 1 else "")
             + f" {cache.location()}.",
             f"Speed: {result.pairs_per_second:.0f} pairs/s. "
             f"Final temperature scale {float(model.logit_scale.detach()):.2f}."]
    if result.history:
        lines.append(f"Loss: {result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}.")
    if result.before_metrics:
        lines.append(f"Validation before: {_fmt(result.before_metrics)}")
        lines.append(f"Validation best (step {result.best_step}): {_fmt(result.best_metrics)}")
        if "chance" in result.best_metrics:
            lines.append(f"(zero-shot chance level {result.best_metrics['chance']:.3f})")
    else:
        lines.append("No validation set (dataset too small or val_fraction 0): the last state is kept.")
    return "\n".join(lines)


def count_forwards(module: nn.Module) -> dict[str, int]:
    """Attach a counter of ``module`` forward calls (for tests and benchmarks); returns the live dict."""
    counter = {"calls": 0, "items": 0}

    def hook(_mod: nn.Module, args: tuple, _out: Any) -> None:
        counter["calls"] += 1
        counter["items"] += int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else 0

    module.register_forward_hook(hook)
    return counter
