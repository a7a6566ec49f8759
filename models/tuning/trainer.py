"""Locked-image tuning: train the text side of a :class:`LitModel` against a locked image tower.

The recipe (measured on held-out Flickr8k photos, ``bench/lit_quality.py``):

1. image embeddings come from the on-disk cache, centred on the training set's mean and whitened (PCA to k dims,
   unit variance): fixed statistics, saved with the adapter; the tower itself is never trained;
2. the head starts from the closed-form ridge map text -> whitened image (``init='ridge'``; k and the ridge
   strength picked on the validation split), so step 0 is already a strong closed-form map;
3. it is then fine-tuned with the contrastive loss over very large batches (the whole cached set in ``head`` mode,
   where each distinct caption's features are computed once and a step is a matrix product), with weight decay
   toward that start rather than toward zero;
4. the state with the highest validation recall (R@1/5/10 both ways over every validation caption) is kept, and
   the run stops early once ``patience`` validations in a row have not improved on it;
5. with ``keep='refit'`` (the default) the settings validation chose (whitening size, ridge strength, number of
   steps) are then fitted again on every image, the validation share included, as a closed-form baseline is
   refitted on all its data once its hyper-parameters are picked.

Reads top to bottom: prepare the data, build the optimizer, (resume), loop, finish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from transformers import get_cosine_schedule_with_warmup

from ..common.errors import LitError
from ..data.dataset import CaptionedDataset
from . import checkpoints as ckpts
from . import distributed as dist_
from . import spec
from .closed_form import ridge_map, whitening, whitening_dims
from .lit_model import LitModel
from .metrics import evaluate, pair_loss
from .objectives import make_objective
from .prepare import Prepared, base_text_features, prepare
from .report import format_report


@dataclass
class TrainConfig:
    """Settings of one run. ``None`` means the mode's measured default (``spec.MODE_DEFAULTS``)."""

    steps: int | None = None
    batch_size: int | None = None  # under torchrun PER RANK: the global batch is batch_size * world_size
    lr: float | None = None  # head, temperature/bias and LoRA
    text_lr: float | None = None  # lora/full text-tower params; None: lr for lora, lr/10 for full
    weight_decay: float | None = None  # toward the initial weights (the ridge map under init='ridge')
    warmup_steps: int | None = None  # None: 5% of the steps
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = spec.default("seed")
    val_fraction: float = spec.default("val_fraction")
    val_every: int = spec.default("val_every")
    init: str = spec.default("init")
    ridge_alpha: float = 10.0  # ridge strength relative to the text features' mean eigenvalue (also tries 1/3 of it)
    whiten: int = spec.default("whiten")  # -1: choose the size on validation; 0: off; k: k dims
    patience: int = spec.default("patience")  # validations without improvement before stopping; 0: never
    center_images: bool = True  # centre image embeddings on the training mean (a statistic, not training)
    keep: str = spec.default("keep")  # "best" validated state or the "last" one
    restore_best: bool = True  # older spelling of keep: False == keep "last"
    mixed_precision: str = "auto"  # "auto" (bf16 on CUDA), "bf16", "off"
    cache_embeddings: bool = True  # False recomputes the image tower every step (the benchmark's baseline)
    embed_batch_size: int = 32
    checkpoint_dir: str | None = None  # where checkpoint_every writes (rank 0, atomically)
    checkpoint_every: int = 0  # 0: no checkpoints
    resume: bool = False  # continue from the newest intact checkpoint in checkpoint_dir (fresh when none)
    sigmoid_ring: bool = False  # sigmoid loss under torchrun: SigLIP's chunked ring exchange, not an all-gather

    def resolved(self, mode: str) -> TrainConfig:
        """A copy with every ``None`` replaced by ``mode``'s default."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("steps", "batch_size", "lr", "weight_decay"):
            if values[name] is None:
                values[name] = spec.default(name, mode)
        if not self.restore_best:
            values["keep"] = "last"
        return TrainConfig(**values)

    def validate(self) -> None:
        checks = [("steps", self.steps is None or self.steps >= 1, "at least 1"),
                  ("batch_size", self.batch_size is None or self.batch_size >= 2, "at least 2"),
                  ("lr", self.lr is None or (self.lr > 0 and math.isfinite(self.lr)), "a positive number"),
                  ("weight_decay", self.weight_decay is None or self.weight_decay >= 0, "0 or more"),
                  ("grad_accum", self.grad_accum >= 1, "at least 1"),
                  ("val_fraction", 0.0 <= self.val_fraction < 0.9, "between 0 and 0.9"),
                  ("val_every", self.val_every >= 1, "at least 1"),
                  ("patience", self.patience >= 0, "0 (never stop early) or more"),
                  ("whiten", self.whiten >= -1, "-1 (auto), 0 (off) or a number of dims"),
                  ("init", self.init in spec.INITS, " or ".join(spec.INITS)),
                  ("keep", self.keep in spec.KEEP, " or ".join(spec.KEEP)),
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
    kept: str = "best"  # which state the model ended on: "best" (validated), "last" or "refit"
    closed_form: dict[str, float] = field(default_factory=dict)  # what validation chose: whiten (dims), ridge_alpha
    refit: str = ""  # what the refit on every image did ("" when it did not run)
    train_size: int = 0  # images trained on (the validation share excluded)
    steps_done: int = 0
    steps_total: int = 0  # the steps the run was set to (steps_done < steps_total: stopped early)
    interrupted: bool = False
    stopped: str = ""  # why the run ended early: "" / "interrupted" / "early stop: ..." / the divergence message
    start: str = ""  # how the head started (the closed-form choice)
    cache_stats: dict[str, int] = field(default_factory=dict)
    dataset_report: str = ""
    seconds: float = 0.0
    pairs_per_second: float = 0.0  # global pairs (all ranks) per second of the optimizer steps alone
    resumed_from: int = 0  # the checkpoint step this run continued from (0: a fresh start)
    resume_notes: list[str] = field(default_factory=list)
    world_size: int = 1
    report: str = ""


class TrainingDiverged(LitError):
    """The loss or gradients became NaN/inf. The model was reset to the best validated state (finite), which
    ``result`` holds with the rest of the run, so a caller can still save it."""

    def __init__(self, message: str, result: TrainResult, *, fix: str) -> None:
        super().__init__(message, input_name="learning_rate", fix=fix)
        self.result = result


def _selection_score(metrics: dict[str, float]) -> float:
    """Higher is better: the mean validation recall (R@1/5/10 both ways, over every validation caption). The
    validation loss was tried first and is a poor judge here: from the closed-form start it falls for a few
    steps while the temperature settles, as recall already drops (bench/README.md, 2026-12-02)."""
    return _recall_score(metrics)


def _recall_score(metrics: dict[str, float]) -> float:
    """Mean of R@1/5/10 both ways: the closed-form candidates' criterion (six recalls are less noisy than one)."""
    return sum(metrics.get(f"{d}_r@{k}", 0.0) for d in ("i2t", "t2i") for k in (1, 5, 10)) / 6


class _Sampler:
    """Seeded epochs over the training images, one caption per image per step. Every rank draws the same GLOBAL
    batch from the same generator and takes its slice, so a run does not depend on the world size."""

    def __init__(self, n: int, batch: int, seed: int) -> None:
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(int(seed))
        self.order: list[int] = []

    def next(self, captions: list[list[str]]) -> tuple[list[int], list[str]]:
        if len(self.order) < self.batch:
            self.order = self.order + torch.randperm(self.n, generator=self.gen).tolist()
        batch, self.order = self.order[:self.batch], self.order[self.batch:]
        idx = list(dict.fromkeys(batch))  # an image never meets itself as a negative across an epoch boundary
        caps = [captions[i][int(torch.randint(len(captions[i]), (1,), generator=self.gen))] for i in idx]
        return idx, caps


# Partial whitening, 1/sqrt(var + 5 * mean var): mostly a projection onto the top PCA directions, with the weak ones
# lifted a little. Chosen on dev splits of the benchmark's 600 training photos (10 seeds, 480 fitted / 120 dev; the
# held-out 200 unused) once the embedded tower ran as trained (2026-12-03): dev mean R@5 / zero-shot for shrink 0.3
# 65.9 / 65.1%, 1: 66.5 / 66.1%, 2: 66.7 / 66.7%, 3: 65.9 / 67.2%, 5: 66.2 / 67.2%; ridge 64.1 / 67.0%. Strong
# whitening (0.3, chosen on the earlier, broken tower) lifts caption-level retrieval little and costs zero-shot:
# short prompts do not predict the weak directions it amplifies.
WHITEN_SHRINK = 5.0


def _closed_form_start(model: LitModel, prep: Prepared, cfg: TrainConfig) -> tuple[str, dict[str, float]]:
    """Centre (and whiten) the locked image embeddings and start the head from the ridge map text -> image; the
    whitening size and ridge strength are picked on the validation split among a few closed-form fits (each a
    solve of the text features' size, so all of them cost well under a second). Returns what was chosen, in
    words and as ``{"whiten": k, "ridge_alpha": alpha}`` (empty for a random start)."""
    if prep.train_feats is None and cfg.init != "ridge":
        return "random start", {}  # uncached: no pass over the images before step 1
    feats = prep.train_feats if prep.train_feats is not None else _encode_images(model, prep.train,
                                                                                 range(len(prep.train)))
    if cfg.center_images:
        model.set_image_center(feats.mean(0))
    if cfg.init != "ridge":
        return "random start", {}
    text, owner = base_text_features(model, prep)
    auto = whitening_dims(len(prep.train), feats.shape[1])
    if cfg.whiten >= 0 or prep.val_feats is None:  # nothing to choose on: the given size, or the middle one
        dims = [cfg.whiten] if cfg.whiten >= 0 else [auto[len(auto) // 2]]
    else:
        dims = [0] + auto
    evecs, inv_std = whitening(feats, max(dims), WHITEN_SHRINK) if max(dims) > 0 else (None, None)
    alphas = [cfg.ridge_alpha] if cfg.whiten >= 0 or prep.val_feats is None else [cfg.ridge_alpha / 3, cfg.ridge_alpha]
    val_text = (base_text_features(model, prep, part=prep.val)[0]
                if prep.val_feats is not None and len(alphas) * len(dims) > 1 else None)
    best = None
    for k in dims if val_text is not None else dims[-1:]:
        model.set_image_whitening(*((evecs[:, :k], inv_std[:k]) if k else (None, None)))
        # regress onto the whitened coordinates themselves, not their unit vectors (3 points better on a dev split)
        x = feats.float() - model.adapter.image_center
        target = (((x @ evecs[:, :k]) * inv_std[:k]) @ evecs[:, :k].t() if k else x)[owner]
        for alpha in alphas:
            w, b = ridge_map(text, target.cpu(), alpha)
            score = _closed_form_score(model, prep, val_text, w, b) if val_text is not None else 0.0
            if best is None or score > best[0]:
                best = (score, k, alpha, w, b)
    _, k, alpha, w, b = best
    model.set_image_whitening(*((evecs[:, :k], inv_std[:k]) if k else (None, None)))
    with torch.no_grad():
        model.adapter.head.weight.copy_(w.t())
        model.adapter.head.bias.copy_(b)
    note = f"ridge start (alpha {alpha:g}), " + (f"images whitened to {k} dims" if k else "no whitening")
    return note, {"whiten": k, "ridge_alpha": alpha}


@torch.no_grad()
def _closed_form_score(model: LitModel, prep: Prepared, val_text: torch.Tensor, w: torch.Tensor,
                       b: torch.Tensor) -> float:
    """Validation recall of the head ``text @ w + b`` (val_text: every validation caption's base features)."""
    from .metrics import _unique_texts, recall_at_k

    texts, rel = _unique_texts(prep.val.captions)
    first = {}
    for i, c in enumerate(c for cs in prep.val.captions for c in cs):
        first.setdefault(c, i)
    txt = val_text[[first[t] for t in texts]] @ w + b
    basis = model.adapter.image_basis
    txt = F.normalize(txt @ basis, dim=-1) @ basis.t() if basis.shape[1] else F.normalize(txt, dim=-1)
    img = model.normalize_image_features(prep.val_feats)
    return _recall_score(recall_at_k(img, txt, rel, ks=(1, 5, 10)))


def _encode_images(model: LitModel, ds: CaptionedDataset, idx) -> torch.Tensor:
    """The usual way without the cache: decode and run the locked tower (images differ in size)."""
    tower = model.image_tower
    with torch.no_grad():
        return tower(torch.cat([tower.preprocess(ds.load_image(i)[None]) for i in idx])).float()


def _optimizer(model: LitModel, cfg: TrainConfig):
    """AdamW without its own decay; the decay pulls toward the starting weights (``anchors``) instead."""
    adapter = list(model.adapter.parameters())
    text = [p for p in model.trainable_parameters() if all(p is not q for q in adapter)]
    image_ids = {id(p) for p in model.image_tower.parameters()}
    if any(id(p) in image_ids for p in model.trainable_parameters()):  # pragma: no cover - a bug, not user error
        raise RuntimeError("image tower parameters must never be optimised")
    text_lr = cfg.text_lr or (cfg.lr if model.mode == "lora" else cfg.lr / 10)
    groups = [{"params": list(model.adapter.head.parameters()), "lr": cfg.lr, "decay": cfg.weight_decay},
              {"params": list(model.adapter.loss.parameters()), "lr": cfg.lr, "decay": 0.0}]
    if text:
        groups.append({"params": text, "lr": text_lr, "decay": cfg.weight_decay})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    anchors = [[p.detach().clone() for p in g["params"]] for g in groups]
    return opt, anchors


def _decay_toward(opt: torch.optim.Optimizer, anchors: list[list[torch.Tensor]]) -> None:
    """Decoupled weight decay (AdamW's form) toward the initial weights."""
    with torch.no_grad():
        for g, anchor in zip(opt.param_groups, anchors, strict=True):
            if g["decay"]:
                for p, a in zip(g["params"], anchor, strict=True):
                    p.sub_(g["lr"] * g["decay"] * (p - a))


class _Validator:
    """Validation loss and recall on the held-out images; frozen text towers use the cached caption features."""

    def __init__(self, model: LitModel, prep: Prepared) -> None:
        self.model, self.prep = model, prep

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return _text_embed(self.model, self.prep, texts, chunk=256)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        if self.prep.val_feats is None:
            return {}
        m = self.model
        img = m.normalize_image_features(self.prep.val_feats.to(m.device))
        out = evaluate(img, self.prep.val.captions, lambda t: self.encode_text(t).to(m.device), ks=(1, 5, 10),
                       class_names=self.prep.class_names)
        out["loss"] = pair_loss(m.adapter.loss, img, self.prep.val.captions, lambda t: self.encode_text(t).to(m.device))
        return out


class _Run:
    """The state the loop carries: the result, the best validated state so far, its score, and how many
    validations have passed without improving on it (early stopping)."""

    def __init__(self, model: LitModel, validator: _Validator, patience: int = 0) -> None:
        self.model, self.validate, self.result = model, validator, TrainResult()
        self.best_score, self.patience, self.since_best = -math.inf, patience, 0

    def judge(self, step: int) -> dict[str, float]:
        vm = self.validate()
        if not vm:
            return {}
        self.result.val_history.append({"step": step, **vm})
        if step == 0:
            self.result.before_metrics = dict(vm)
        if _selection_score(vm) > self.best_score:
            self.best_score, self.since_best = _selection_score(vm), 0
            self.result.best_state, self.result.best_step = self.model.trainable_state_dict(), step
            self.result.best_metrics = dict(vm)
        else:
            self.since_best += 1
        return vm

    def out_of_patience(self) -> bool:
        if self.patience and self.since_best >= self.patience:
            self.result.stopped = (f"early stop: validation did not improve in {self.since_best} validations "
                                   f"after step {self.result.best_step}")
            return True
        return False


def train_locked(model: LitModel, dataset: CaptionedDataset, config: TrainConfig | None = None, *,
                 cache_dir: str | None = None, callback: Callable[[int, int, dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 interrupt_exceptions: tuple[type[BaseException], ...] = (KeyboardInterrupt,),
                 embed_progress: Callable[[int, int], None] | None = None,
                 on_start: Callable[[int, dict], None] | None = None,
                 on_refit: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train ``model``'s text side on ``dataset`` with the image tower locked; returns a :class:`TrainResult`.

    - ``cache_dir``: where image embeddings are cached (default ``<dataset folder>/.lit_cache``).
    - ``callback(step, total, metrics)`` after every optimizer step (``val_*`` keys on validation steps). It may
      raise one of ``interrupt_exceptions`` (e.g. ComfyUI's cancel): the run stops and ends on the best validated
      state, ``interrupted=True``. ``should_stop()`` returning True does the same without an exception.
    - ``on_start(total, val_metrics)`` once before the first step: the starting point (step 0) of a chart.
    - ``embed_progress(done, total)`` while image embeddings are computed/read before training.
    - A NaN/inf loss or gradient raises :class:`TrainingDiverged`; the model is then on its best validated state.
    - ``keep='refit'``: once the validated run has chosen its settings, ``on_refit(step, total)`` is called after
      every step of the refit on all images (it may raise, like ``callback``: the model then goes back to the
      best validated state, ``interrupted=True``).
    The caller decides whether autograd may run (nodes lift inference mode with ``host.trainable_node``)."""
    cfg = _resolve(config, model)
    if cfg.keep != "refit":
        return _train(model, dataset, cfg, cache_dir, callback, should_stop, interrupt_exceptions, embed_progress,
                      on_start)[0]
    start_state = model.trainable_state_dict()  # the refit starts where the validated run started
    result, prep = _train(model, dataset, replace(cfg, keep="best"), cache_dir, callback, should_stop,
                          interrupt_exceptions, embed_progress, on_start)
    if result.kept != "best" or result.interrupted or not result.closed_form:
        return result  # no validation (nothing was chosen) or stopped by the user: keep what the run kept
    return _refit(model, dataset, cfg, result, prep, start_state, cache_dir, should_stop, interrupt_exceptions,
                  on_refit)


def _refit(model: LitModel, dataset: CaptionedDataset, cfg: TrainConfig, result: TrainResult, prep: Prepared,
           start_state: dict[str, torch.Tensor], cache_dir: str | None, should_stop, interrupt_exceptions,
           on_refit: Callable[[int, int], None] | None) -> TrainResult:
    """The validated run's choices, trained again from the same start on every image (no validation share).

    On 600 Flickr8k photos this lifted held-out mean R@5 from 0.150 to 0.168 and zero-shot from 22% to 28%
    (bench/lit_quality.py): the validation share is 15% of the data, and the baselines are refitted on all of it."""
    steps = result.best_step
    again = replace(cfg, keep="last", val_fraction=0.0, whiten=int(result.closed_form["whiten"]),
                     ridge_alpha=float(result.closed_form["ridge_alpha"]), steps=steps,
                     warmup_steps=max(1, steps // 20), patience=0, checkpoint_every=0, resume=False)
    best_state, info = result.best_state, dict(model.training_info)
    model.load_trainable_state_dict(start_state)
    step_hook = (lambda step, total, metrics: on_refit(step, total)) if on_refit is not None else None
    try:
        second, _ = _train(model, dataset, again, cache_dir, step_hook, should_stop, interrupt_exceptions, None, None)
    except TrainingDiverged as err:
        second = err.result
        second.interrupted, second.stopped = True, str(err)
    except BaseException:
        model.load_trainable_state_dict(best_state)  # e.g. ComfyUI's cancel: never leave a half-refitted model
        raise
    if second.interrupted:
        model.load_trainable_state_dict(best_state)
        model.training_info = info
        result.interrupted = True
        result.stopped = (f"The refit on every image was stopped ({second.stopped or 'interrupted'}): the best "
                          "validated state is kept")
        result.report = format_report(model, result, prep)
        return result
    result.kept, result.best_state = "refit", model.trainable_state_dict()
    result.refit = (f"fitted again on all {second.train_size} images (the validation ones included) for "
                    f"{steps} steps, with the whitening ({again.whiten} dims) and ridge strength "
                    f"({again.ridge_alpha:g}) validation chose")
    result.seconds += second.seconds
    info.update({"kept": "refit", "refit_steps": steps, "train_size": second.train_size, "val_size": 0})
    model.training_info = info
    result.report = format_report(model, result, prep)
    return result


def _train(model: LitModel, dataset: CaptionedDataset, cfg: TrainConfig, cache_dir: str | None, callback,
           should_stop, interrupt_exceptions, embed_progress, on_start) -> tuple[TrainResult, Prepared]:
    """One run with validation, early stopping and the kept state of ``cfg.keep`` (best or last), and its prepared
    data (the refit's report describes the validated run's split)."""
    t_start, device = time.perf_counter(), model.text_tower.device
    world, rank = dist_.world_size(), dist_.rank()

    # -- data and the closed-form start ----------------------------------------------------------------------
    prep = prepare(model, dataset, val_fraction=cfg.val_fraction, seed=cfg.seed, cached=cfg.cache_embeddings,
                   cache_dir=cache_dir, embed_batch_size=cfg.embed_batch_size, embed_progress=embed_progress)
    if len(prep.train) < 2 * world:
        raise LitError(f"{len(prep.train)} training images for {world} processes.", input_name="dataset",
                       fix="use fewer processes or more data (at least 2 images per process).")
    sampler = _Sampler(len(prep.train), min(cfg.batch_size * world, len(prep.train)), cfg.seed)
    checkpoint, ckpt_path, notes = (ckpts.find_resumable(cfg.checkpoint_dir, cfg.steps) if cfg.resume
                                    else (None, None, []))
    # A resume loads the weights and the decay's anchors (the start) from the checkpoint; one written before
    # anchors were stored gets the same (deterministic) start computed again here.
    fresh = checkpoint is None or not any(k.startswith("anchor.") for k in checkpoint[0])
    start_note, chosen = _closed_form_start(model, prep, cfg) if fresh else ("", {})

    # -- optimizer, schedule, objective ----------------------------------------------------------------------
    opt, anchors = _optimizer(model, cfg)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    objective = make_objective(model.adapter.loss, world=world, rank=rank, ring=cfg.sigmoid_ring)
    autocast = _autocast(device, cfg)
    run = _Run(model, _Validator(model, prep), cfg.patience if prep.val_feats is not None else 0)
    result = run.result
    result.world_size, result.dataset_report, result.resume_notes = world, prep.report, notes
    result.steps_total, result.start, result.closed_form = cfg.steps, start_note, chosen
    result.train_size = len(prep.train)
    run_info = _run_info(model, cfg, sampler.batch, len(prep.train), world)

    model.eval()  # dropout off throughout: small-data tuning doesn't need it and runs stay reproducible
    if checkpoint is not None:
        start = _resume(model, run, checkpoint, ckpt_path, run_info, opt, sched, sampler, anchors)
    else:
        start, before = 1, run.judge(0)
        result.best_state = result.best_state or model.trainable_state_dict()
        if on_start is not None:
            on_start(cfg.steps, before)

    # -- the loop --------------------------------------------------------------------------------------------
    pairs, step_s = 0, 0.0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(int(cfg.seed))  # seeded, and the caller's stream is untouched
        if checkpoint is not None:
            torch.set_rng_state(checkpoint[0]["rng.torch"])
        try:
            for step in range(start, cfg.steps + 1):
                if should_stop is not None and should_stop():
                    result.interrupted = True
                    break
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss_sum = 0.0
                for _ in range(cfg.grad_accum):
                    idx, caps = sampler.next(prep.train.captions)
                    pos = _same_caption(caps).to(device)
                    lo, hi = objective.slice(len(idx))
                    feats = (prep.train_feats[idx[lo:hi]] if prep.train_feats is not None
                             else _encode_images(model, prep.train, idx[lo:hi]))
                    img = model.normalize_image_features(feats.to(device))
                    with autocast():
                        txt = _text_embed(model, prep, caps[lo:hi])
                    loss, global_loss = objective(img, txt.float(), pos)
                    if not torch.isfinite(global_loss):
                        raise _diverged(run, step, f"the loss became {float(global_loss)}")
                    (loss / cfg.grad_accum).backward()
                    loss_sum += float(global_loss) / cfg.grad_accum
                    pairs += len(idx)
                _apply_gradients(opt, anchors, sched, cfg, run, step)
                step_s += time.perf_counter() - t0
                metrics = _log(run, step, loss_sum, opt)
                if prep.val_feats is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                    metrics.update({f"val_{k}": v for k, v in run.judge(step).items()})
                if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    _save_checkpoint(cfg.checkpoint_dir, step, model, run, run_info, opt, sched, sampler, anchors)
                if callback is not None:
                    callback(step, cfg.steps, metrics)
                if run.out_of_patience():
                    break
        except interrupt_exceptions:
            result.interrupted = True
    result.pairs_per_second = pairs / step_s if step_s > 0 else 0.0
    _finish(model, run, cfg, prep, t_start)
    return result, prep


def _resolve(config: TrainConfig | None, model: LitModel) -> TrainConfig:
    config = config or TrainConfig()
    config.validate()
    if config.sigmoid_ring and model.loss_name != "sigmoid":
        raise LitError("the ring exchange is for the sigmoid loss.", input_name="sigmoid_ring",
                       fix="use loss 'sigmoid', or turn the ring off for the softmax loss.")
    cfg = config.resolved(model.mode)
    if cfg.warmup_steps is None or cfg.warmup_steps < 0:
        cfg.warmup_steps = max(1, cfg.steps // 20)
    return cfg


def _autocast(device: torch.device, cfg: TrainConfig) -> Callable:
    bf16 = (device.type == "cuda" and cfg.mixed_precision in ("auto", "bf16")) or cfg.mixed_precision == "bf16"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext


def _run_info(model: LitModel, cfg: TrainConfig, global_batch: int, n_train: int, world: int) -> dict:
    """What a checkpoint must agree on to be resumed (lr, text_lr, weight decay may change, and are said so)."""
    return {"global_batch": global_batch, "n_train": n_train, "mode": model.mode, "loss": model.loss_name,
            "seed": cfg.seed, "steps": cfg.steps, "world_size": world, "lora_rank": model.lora_rank,
            "image_tower": model.image_tower.fingerprint, "text_tower": model.text_tower.fingerprint,
            "lr": cfg.lr, "text_lr": cfg.text_lr, "weight_decay": cfg.weight_decay}


def _apply_gradients(opt, anchors: list[list[torch.Tensor]], sched, cfg: TrainConfig, run: _Run, step: int) -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    # Per-rank losses sum to the global loss, so SUMMED gradients are its exact gradient (no DDP wrapping: the
    # frozen towers and cached features stay out of any bucket).
    dist_.all_reduce_sum_([p.grad for p in params if p.grad is not None])
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if not torch.isfinite(norm):
        raise _diverged(run, step, f"the gradients became {float(norm)}")
    opt.step()
    _decay_toward(opt, anchors)
    sched.step()


def _log(run: _Run, step: int, loss: float, opt) -> dict[str, float]:
    model, result = run.model, run.result
    entry = {"step": step, "loss": loss, "lr": opt.param_groups[0]["lr"],
             "logit_scale": float(model.logit_scale.detach()), "logit_bias": float(model.logit_bias.detach())}
    result.history.append(entry)
    result.steps_done = step
    return dict(entry)


def _same_caption(caps: list[str]) -> torch.Tensor:
    """``[B, B]`` True where two captions of the batch are the same text (both are then positives)."""
    ids = torch.tensor([hash(c) for c in caps])
    return ids[:, None] == ids[None, :]


def _text_embed(model: LitModel, prep: Prepared, texts: list[str], chunk: int | None = None) -> torch.Tensor:
    """Captions -> normalised text embeddings the cheapest way the mode allows (training and validation alike);
    ``chunk`` bounds the captions run through the tower at once (validation encodes hundreds)."""
    feats = prep.text_feats
    if feats and all(t in feats for t in texts):  # head mode: the frozen tower's features, once per caption
        return model.project_text(torch.stack([feats[t] for t in texts]))
    if prep.prefix is not None:  # top layers only: the frozen lower layers' states are cached per caption
        run = lambda part: model.project_text(prep.prefix.features(part))  # noqa: E731
    else:
        run = lambda part: model.project_text(model.text_features(part))  # noqa: E731
    step = chunk or max(1, len(texts))
    return torch.cat([run(texts[i:i + step]) for i in range(0, len(texts), step)]) if texts else \
        torch.zeros(0, model.embed_dim, device=model.device)


def _diverged(run: _Run, step: int, what: str) -> TrainingDiverged:
    """Stop on a non-finite loss or gradient: back to the best validated state (never the NaN one)."""
    result = run.result
    result.steps_done, result.stopped = step - 1, f"{what} at step {step}"
    if run.validate.prep.val_feats is None:  # nothing validated: the last good state (the bad step never applied)
        result.best_state, result.best_step, result.kept = run.model.trainable_state_dict(), step - 1, "last"
        where = f"its last good state (step {step - 1})"
    else:
        run.model.load_trainable_state_dict(result.best_state)
        result.kept, where = "best", f"its best validated state (step {result.best_step})"
    result.report = format_report(run.model, result, run.validate.prep)
    return TrainingDiverged(f"{what} at step {step}; training stopped and the model was reset to {where}.", result,
                            fix="lower the learning rate, or check the data for broken captions.")


def _finish(model: LitModel, run: _Run, cfg: TrainConfig, prep: Prepared, t_start: float) -> None:
    result = run.result
    if result.interrupted:
        result.stopped = "interrupted"
        if prep.val_feats is not None and result.steps_done > 0 and \
                result.val_history[-1]["step"] != result.steps_done:
            run.judge(result.steps_done)  # a cancel between validations: judge the steps since the last one
    if prep.val_feats is None or cfg.keep == "last":
        result.kept = "last"
        if prep.val_feats is None:
            result.best_state, result.best_step = model.trainable_state_dict(), result.steps_done
    else:
        result.kept = "best"
        model.load_trainable_state_dict(result.best_state)
    model.eval()
    result.cache_stats = dict(prep.cache.stats)
    result.seconds = time.perf_counter() - t_start
    info = {"steps": result.steps_done, "best_step": result.best_step, "kept": result.kept,
            "dataset_size": len(prep.train) + len(prep.val), "train_size": len(prep.train),
            "val_size": len(prep.val), "seed": cfg.seed, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "metrics": result.best_metrics if result.kept == "best" else (result.val_history or [{}])[-1],
            "metrics_before": result.before_metrics, "interrupted": result.interrupted}
    if result.world_size > 1 or result.resumed_from:  # batch_size above is per process
        info.update({"world_size": result.world_size, "resumed_from": result.resumed_from})
    model.training_info = info
    result.report = format_report(model, result, prep)


def _save_checkpoint(folder: str, step: int, model: LitModel, run: _Run, run_info: dict, opt, sched,
                     sampler: _Sampler, anchors: list[list[torch.Tensor]]) -> None:
    result = run.result
    tensors = {f"model.{k}": v for k, v in model.trainable_state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in result.best_state.items()})
    opt_tensors, opt_meta = ckpts.flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["sampler.gen"] = sampler.gen.get_state()
    tensors["sampler.order"] = torch.tensor(sampler.order, dtype=torch.int64)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"anchor.{gi}.{pi}": a for gi, group in enumerate(anchors) for pi, a in enumerate(group)})
    meta = {"step": step, **run_info, "optimizer": opt_meta, "scheduler": sched.state_dict(),
            "history": result.history, "val_history": result.val_history,
            "before_metrics": result.before_metrics, "best_metrics": result.best_metrics,
            "best_step": result.best_step, "best_score": run.best_score, "closed_form": result.closed_form}
    ckpts.save_checkpoint(folder, step, tensors, meta)


def _resume(model: LitModel, run: _Run, checkpoint, path: str, run_info: dict, opt, sched,
            sampler: _Sampler, anchors: list[list[torch.Tensor]]) -> int:
    """Continue from ``checkpoint``; a changed learning rate is applied from here on (and said so)."""
    tensors, meta = checkpoint
    fixed = {k: v for k, v in run_info.items() if k not in ("lr", "text_lr", "weight_decay")}
    ckpts.check_compatible(meta, fixed, path)
    if any(k.startswith("anchor.") for k in tensors):  # the weights the decay pulls toward (the run's start)
        for gi, group in enumerate(anchors):
            for pi, a in enumerate(group):
                name = f"anchor.{gi}.{pi}"
                if name not in tensors or tensors[name].shape != a.shape:
                    raise LitError(f"checkpoint '{path}' holds decay anchors of another model ({name}).",
                                   input_name="checkpoint_dir",
                                   fix="resume with the same mode and towers, or use a fresh --checkpoint-dir.")
                a.copy_(tensors[name])
    else:
        run.result.resume_notes.append("the checkpoint predates stored decay anchors: they were recomputed "
                                       "from the initialisation")
    model.load_trainable_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ckpts.restore_optimizer(opt, tensors, meta["optimizer"])
    sched.load_state_dict(meta["scheduler"])
    changed = [k for k in ("lr", "text_lr", "weight_decay") if k in meta and meta[k] != run_info[k]]
    if changed:
        # The schedule multiplies each group's base lr; re-basing it applies the new value from this step on.
        for g, base in zip(opt.param_groups, _base_lrs(run_info, model.mode), strict=False):
            g["initial_lr"] = base
        sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
        # The current lr from the new bases at the restored position (the schedule's own closed form; the
        # deprecated ``sched.step(epoch)`` would also move the position).
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for g, lr in zip(opt.param_groups, lrs, strict=True):
            g["lr"] = lr
        sched._last_lr = lrs
        run.result.resume_notes.append("changed on resume and applied from here on: " + ", ".join(
            f"{k} {meta[k]} -> {run_info[k]}" for k in changed))
    sampler.gen.set_state(tensors["sampler.gen"])
    sampler.order = tensors["sampler.order"].tolist()
    r = run.result
    r.history, r.val_history = meta["history"], meta["val_history"]
    r.before_metrics, r.best_metrics = meta["before_metrics"], meta["best_metrics"]
    r.best_step, run.best_score = meta["best_step"], float(meta["best_score"])
    r.closed_form = dict(meta.get("closed_form") or {})  # older checkpoints: unknown, so no refit after them
    r.best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    r.resumed_from = r.steps_done = meta["step"]
    return meta["step"] + 1


def _base_lrs(run_info: dict, mode: str) -> list[float]:
    lr = run_info["lr"]
    text_lr = run_info["text_lr"] or (lr if mode == "lora" else lr / 10)
    return [lr, lr, text_lr]
