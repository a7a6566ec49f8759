"""A folder's images as normalised fp16 embeddings on disk, kept up to date incrementally, and queried by text
and/or example images with plain matrix products.

The index stores only locked-image-tower features, so it survives retraining the adapter: text queries go through
whatever LiT adapter is loaded, since its text side maps into the (fixed) image space. Embeddings come from the
pack's :class:`EmbeddingCache` (content-hash keyed), so a file that moved or was re-saved unchanged costs no
forward, and the index file lives in the cache's own folder, beside its shards.

Scale: a query is one ``[N, D] @ [D]`` product over fp16 rows (N=100k, D=1280: 256 MB, ~0.1-0.3 s on a loaded
2-core CPU). Past a few million rows (memory: N*D*2 bytes) or for many queries per second, a vector index
library (FAISS IVF-PQ/HNSW) is needed; see the README.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from ..common.text import split_prompts
from ..data.dataset import CACHE_DIRNAME, IMAGE_EXTENSIONS, CaptionedDataset, Sample, read_image
from ..data.embedding_cache import EmbeddingCache
from . import spec
from .zero_shot import image_embeddings, text_embeddings

INDEX_FORMAT = "comfyui-lit-search-index"
INDEX_VERSION = 1


def list_images(folder: str, *, recursive: bool = True) -> list[str]:
    """Image files under ``folder`` (relative, ``/``-separated, sorted), hidden folders and links to folders
    skipped (a symlink loop must not hang a scan)."""
    if not folder or not os.path.isdir(folder):
        raise LitError(f"'{folder}' is not a folder.", input_name="folder", fix="give the path of a folder of images.")
    root = os.path.abspath(folder)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for f in filenames:
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


@dataclass
class UpdateReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0

    def __str__(self) -> str:
        text = (f"index: {self.added} added, {self.changed} changed, {self.removed} removed, {self.unchanged} "
                f"unchanged ({self.seconds:.1f} s, {self.forwards} tower batches)")
        if self.unreadable:
            text += f"; skipped {len(self.unreadable)} unreadable: " + "; ".join(
                f"{n} ({why})" for n, why in self.unreadable[:10])
        return text


class SearchIndex:
    """The images of one folder, embedded by one locked image tower."""

    def __init__(self, folder: str, image_tower, *, cache_dir: str | None = None, recursive: bool = True,
                 batch_size: int = 32) -> None:
        if not folder or not os.path.isdir(folder):
            raise LitError(f"'{folder}' is not a folder.", input_name="folder",
                           fix="give the path of a folder of images.")
        self.root = os.path.abspath(folder)
        self.recursive = recursive
        self.cache = EmbeddingCache(image_tower, cache_dir or os.path.join(self.root, CACHE_DIRNAME),
                                    batch_size=batch_size)
        key = hashlib.sha256(f"{self.root}|{recursive}".encode()).hexdigest()[:16]
        self.path = os.path.join(self.cache.dir, f"search-{key}.safetensors")
        self.paths: list[str] = []
        self.stats: list[tuple[int, int]] = []  # (size, mtime_ns) per row: unchanged files are not re-hashed
        self.hashes: list[str] = []
        self.embeddings = torch.zeros(0, image_tower.embed_dim, dtype=torch.float16)
        self._loaded = False

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> str:
        return os.path.join(self.root, *self.paths[i].split("/"))

    # -- persistence ------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Read the saved index (False when there is none or it is unusable: it is then rebuilt)."""
        self._loaded = True
        if not os.path.isfile(self.path):
            return False
        try:
            with safe_open(self.path, framework="pt") as fh:
                meta = fh.metadata() or {}
                rows = json.loads(meta.get("rows", "[]"))
                emb = fh.get_tensor("embeddings")
            ok = (meta.get("format") == INDEX_FORMAT and int(meta.get("version", 0)) == INDEX_VERSION
                  and meta.get("tower") == self.cache.tower.fingerprint and emb.dim() == 2
                  and emb.shape[0] == len(rows) and emb.shape[1] == self.cache.tower.embed_dim
                  and bool(torch.isfinite(emb).all()))
        except Exception:  # noqa: BLE001 - a damaged index is rebuilt from the embedding cache, never fatal
            return False
        if not ok:
            return False
        self.paths = [r[0] for r in rows]
        self.stats = [(int(r[1]), int(r[2])) for r in rows]
        self.hashes = [r[3] for r in rows]
        self.embeddings = emb.to(torch.float16)
        return True

    def save(self) -> None:
        rows = [[p, s, m, h] for p, (s, m), h in zip(self.paths, self.stats, self.hashes, strict=True)]
        meta = {"format": INDEX_FORMAT, "version": str(INDEX_VERSION), "tower": self.cache.tower.fingerprint,
                "root": self.root, "rows": json.dumps(rows)}
        try:
            save_tensors_atomic({"embeddings": self.embeddings.contiguous()}, self.path, metadata=meta)
        except OSError:
            pass  # a read-only folder: the index still works for this session, it is rebuilt from scratch next time

    # -- incremental update ------------------------------------------------------------------------------------
    def update(self, progress: Callable[[int, int], None] | None = None) -> UpdateReport:
        """Bring the index in line with the folder: embed new and changed files, drop removed ones."""
        t0 = time.perf_counter()
        if not self._loaded:
            self.load()
        report = UpdateReport()
        forwards0 = self.cache.stats["forwards"]
        old = {p: i for i, p in enumerate(self.paths)}
        current = list_images(self.root, recursive=self.recursive)
        keep_rows: list[int] = []
        keep_paths: list[str] = []
        todo: list[tuple[str, tuple[int, int]]] = []
        for rel in current:
            try:
                st = os.stat(os.path.join(self.root, *rel.split("/")))
            except OSError as err:
                report.unreadable.append((rel, err.strerror or str(err)))
                continue
            sig = (int(st.st_size), int(st.st_mtime_ns))
            i = old.get(rel)
            if i is not None and self.stats[i] == sig:
                keep_rows.append(i)
                keep_paths.append(rel)
                report.unchanged += 1
            else:
                todo.append((rel, sig))
                if i is None:
                    report.added += 1
                else:
                    report.changed += 1
        report.removed = len(set(old) - set(current))
        new_paths, new_stats, new_hashes, new_emb = [], [], [], []
        if todo:
            ds = CaptionedDataset([Sample(key=rel, captions=[], path=os.path.join(self.root, *rel.split("/")))
                                   for rel, _ in todo], root=self.root, source="folder")
            sigs = {rel: sig for rel, sig in todo}
            try:
                feats, kept = self.cache.embed_dataset(ds, progress)
            except LitError:  # none of the new files is readable
                feats, kept = torch.zeros(0, self.cache.tower.embed_dim), ds.subset([])
                kept.skipped = [(s.key, "unreadable image") for s in ds.samples]
            report.unreadable += [(n, why) for n, why in kept.skipped]
            bad = {n for n, _ in kept.skipped}
            report.added -= sum(1 for rel, _ in todo if rel in bad and rel not in old)
            report.changed -= sum(1 for rel, _ in todo if rel in bad and rel in old)
            check = torch.isfinite(feats).all(dim=-1) if len(feats) else torch.ones(0, dtype=torch.bool)
            for j, s in enumerate(kept.samples):
                if not bool(check[j]):
                    report.unreadable.append((s.key, "the image tower gave NaN/inf"))
                    continue
                new_paths.append(s.key)
                new_stats.append(sigs[s.key])
                new_hashes.append(kept.content_hash(j))
                new_emb.append(feats[j])
        parts = [self.embeddings[keep_rows]]
        if new_emb:
            parts.append(F.normalize(torch.stack(new_emb).float(), dim=-1).to(torch.float16))
        paths = keep_paths + new_paths
        order = sorted(range(len(paths)), key=paths.__getitem__)
        emb = torch.cat(parts)[order] if paths else self.embeddings[:0]
        stats = [self.stats[i] for i in keep_rows] + new_stats
        hashes = [self.hashes[i] for i in keep_rows] + new_hashes
        changed = bool(todo) or report.removed or len(paths) != len(self.paths)
        self.paths = [paths[i] for i in order]
        self.stats = [stats[i] for i in order]
        self.hashes = [hashes[i] for i in order]
        self.embeddings = emb.contiguous()
        if changed or not os.path.isfile(self.path):
            self.save()
        report.forwards = self.cache.stats["forwards"] - forwards0
        report.seconds = time.perf_counter() - t0
        return report

    # -- queries ------------------------------------------------------------------------------------------------
    def scores(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine of every indexed image with a normalised query ``[D]`` (float32 ``[N]``)."""
        if len(self) == 0:
            raise LitError(f"no readable images are indexed in '{self.root}'.", input_name="folder",
                           fix="put images (.png/.jpg/.webp) in the folder.")
        q = query.to(torch.float16).cpu()
        return (self.embeddings @ q).float()

    def top_k(self, query: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
        s = self.scores(query)
        vals, idx = s.topk(min(int(k), s.shape[0]))
        return idx.tolist(), vals.tolist()


def build_query(model, *, positive: str | Sequence[str] = "", negative: str | Sequence[str] = "",
                positive_images: torch.Tensor | list | None = None,
                negative_images: torch.Tensor | list | None = None,
                negative_weight: float = spec.SEARCH_NEGATIVE_WEIGHT.default) -> torch.Tensor:
    """One normalised query vector (Rocchio): mean of the positive prompts/images minus ``negative_weight`` times
    the mean of the negative ones."""
    def mean_of(prompts, images, name_t, name_i) -> torch.Tensor | None:
        vecs = []
        items = split_prompts(prompts) if prompts else []
        if items:
            vecs.append(text_embeddings(model, items).cpu())
        if isinstance(images, list | tuple):  # differently sized examples, one by one
            vecs += [image_embeddings(model, im, input_name=name_i).cpu() for im in images]
        elif images is not None:
            vecs.append(image_embeddings(model, images, input_name=name_i).cpu())
        if not vecs:
            return None
        return F.normalize(torch.cat(vecs).mean(0), dim=-1)

    pos = mean_of(positive, positive_images, "positive", "positive_images")
    neg = mean_of(negative, negative_images, "negative", "negative_images")
    if pos is None:
        raise LitError("nothing to search for.", input_name="positive",
                       fix="write what to look for, or connect example images to 'positive_images'.")
    q = pos if neg is None else pos - float(negative_weight) * neg
    if float(q.norm()) < 1e-6:
        raise LitError("the negatives cancel the positives exactly.", input_name="negative",
                       fix="lower negative_weight or use different negatives.")
    return F.normalize(q, dim=-1)


def load_letterboxed(paths: Sequence[str], size: int) -> torch.Tensor:
    """Images as one ``[B, S, S, 3]`` batch: each fitted inside ``S x S`` (aspect kept) on a black background."""
    out = torch.zeros(len(paths), size, size, 3)
    for n, path in enumerate(paths):
        try:
            im = read_image(path)
        except LitError:
            continue  # removed or damaged since indexing: a black tile, its path still listed
        h, w = im.shape[:2]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = F.interpolate(im.movedim(-1, 0)[None], size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=scale < 1)[0].movedim(0, -1).clamp(0, 1)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[n, top:top + nh, left:left + nw] = x
    return out
