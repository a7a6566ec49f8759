"""Data for one tuning run: the seeded split, the locked tower's cached image embeddings, and (when the text
tower is frozen) the text features of every distinct caption, computed once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from ..data.dataset import CaptionedDataset
from ..data.embedding_cache import EmbeddingCache
from . import distributed as dist_
from .layer_cache import PrefixCache
from .lit_model import LitModel


@dataclass
class Prepared:
    train: CaptionedDataset
    val: CaptionedDataset
    train_feats: torch.Tensor | None  # raw image-tower features [N, D]; None: recomputed every step
    val_feats: torch.Tensor | None
    cache: EmbeddingCache
    class_names: list[str] | None
    report: str
    text_feats: dict[str, torch.Tensor] = field(default_factory=dict)  # caption -> pooled features (frozen tower)
    prefix: PrefixCache | None = None  # lora/full on the top layers: the frozen lower layers' states per caption
    root: str | None = None  # the cache folder (image shards, text features)


def _shared_cache_pass(cache: EmbeddingCache, root: str, parts: list[tuple[CaptionedDataset, bool]],
                       embed_progress: Callable | None) -> EmbeddingCache:
    """torchrun: each rank embeds its strided shard into the shared cache folder (content-keyed shards combine),
    so the job runs one tower forward per image; a fresh cache object then sees the other ranks' shards."""
    world, rank = dist_.world_size(), dist_.rank()
    for part, needed in parts:
        mine = part.subset(list(range(rank, len(part), world)))
        if needed and len(mine):
            try:
                cache.embed_dataset(mine, embed_progress)
            except LitError:
                pass  # an unreadable shard: the full pass below raises the same error on every rank
    dist_.barrier()
    fresh = EmbeddingCache(cache.tower, root, batch_size=cache.batch_size)
    fresh.stats = cache.stats
    return fresh


def prepare(model: LitModel, dataset: CaptionedDataset, *, val_fraction: float, seed: int, cached: bool,
            cache_dir: str | None, embed_batch_size: int, embed_progress: Callable | None = None) -> Prepared:
    if len(dataset) < 2:
        raise LitError(f"the dataset has {len(dataset)} captioned image(s); contrastive tuning needs at least 2.",
                       input_name="dataset", fix="add more captioned images.")
    train_ds, val_ds = dataset.split(val_fraction, seed)
    root = cache_dir or dataset.default_cache_dir()
    cache = EmbeddingCache(model.image_tower, root, batch_size=embed_batch_size)
    if dist_.world_size() > 1 and cache.dir:
        cache = _shared_cache_pass(cache, root, [(train_ds, cached), (val_ds, True)], embed_progress)
    train_feats = None
    if cached:
        train_feats, train_ds = cache.embed_dataset(train_ds, embed_progress)
    val_feats = None
    if len(val_ds):
        val_feats, val_ds = cache.embed_dataset(val_ds, embed_progress)
    n_known = len(dataset.skipped)
    late = [f"{n} ({why})" for part in (train_ds, val_ds) for n, why in part.skipped[n_known:]]
    report = dataset.report() + ("\nUnreadable when decoded, skipped: " + "; ".join(late) if late else "")
    if len(train_ds) < 2:
        raise LitError("fewer than 2 readable training images.", input_name="dataset",
                       fix="add more captioned images or lower the validation fraction.")
    class_names = dataset.class_names()
    if class_names and len(val_ds) and not all(c[0] in class_names for c in val_ds.captions):
        class_names = None
    prep = Prepared(train_ds, val_ds, train_feats, val_feats, cache, class_names, report, root=root)
    texts = sorted({c for part in (train_ds, val_ds) for caps in part.captions for c in caps} | set(class_names or []))
    if model.mode == "head":  # frozen text tower: each distinct caption (train, validation, labels) once
        prep.text_feats = cached_text_features(model.text_tower, texts, root)
    elif model.text_layers:  # only the top layers train: the frozen layers below them run once per caption
        prep.prefix = PrefixCache(model.text_tower, model.text_layers)
        prep.prefix.fill(texts)
    return prep


def cached_text_features(tower, texts: list[str], root: str | None) -> dict[str, torch.Tensor]:
    """Pooled features of ``texts`` from a frozen text tower, each computed once and kept in
    ``<root>/text-<fingerprint>.safetensors`` (the captions in its metadata) so the next run skips the tower."""
    path = os.path.join(root, f"text-{tower.fingerprint}.safetensors") if root else None
    known: dict[str, torch.Tensor] = {}
    if path and os.path.exists(path):
        try:
            with safe_open(path, framework="pt") as fh:
                names = json.loads(fh.metadata()["texts"])
                feats = fh.get_tensor("features")
            if feats.shape[0] == len(names) and bool(torch.isfinite(feats).all()):
                known = dict(zip(names, feats, strict=True))
        except Exception:  # noqa: BLE001 - a damaged text cache is recomputed, never fatal
            known = {}
    todo = [t for t in texts if t not in known]
    if todo:
        known.update(zip(todo, tower.encode(todo).float().cpu(), strict=True))
        if path:
            names = sorted(known)
            try:
                os.makedirs(root, exist_ok=True)
                save_tensors_atomic({"features": torch.stack([known[t] for t in names])}, path,
                                    metadata={"texts": json.dumps(names)}, overwrite=True)
            except OSError:
                pass  # a read-only folder: the features stay in memory for this run
    return {t: known[t] for t in texts}


def base_text_features(model: LitModel, prep: Prepared,
                       part: CaptionedDataset | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (caption, its image index) pair of ``part`` (default: the training images): pooled text features
    from the tower as it is at the start (untuned: LoRA starts as the identity), for the closed-form start of the
    head. Computed once per distinct caption and kept in the same on-disk text cache as head mode's."""
    part = prep.train if part is None else part
    caps = [(c, i) for i, cs in enumerate(part.captions) for c in cs]
    texts = [c for c, _ in caps]
    known = prep.text_feats if prep.text_feats and all(t in prep.text_feats for t in texts) else None
    if known is None:
        with torch.no_grad():
            known = cached_text_features(model.text_tower, sorted(set(texts)), prep.root)
    feats = torch.stack([known[t] for t in texts])
    return feats.float().cpu(), torch.tensor([i for _, i in caps])
