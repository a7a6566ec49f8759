"""Image embeddings computed once and kept on disk: LiT's economy.

The image tower is locked, so an image's embedding never changes for a given (tower, file, preprocessing).
We key each embedding by the tower fingerprint + preprocessing id (the cache sub-folder) and the file's content
hash (the tensor name), and store them in safetensors shards written atomically (temp, fsync, rename).

The disk is not trusted: each shard's header carries a SHA-256 of its tensors, checked when it is read, and every
embedding is checked for the tower's dimension and for finiteness. A shard that fails is dropped (deleted when
possible) with one warning and its images are recomputed. Shards are written every few seconds and when the pass
is interrupted (Ctrl+C, Cancel, SIGTERM turned into an exception), so a stopped first run keeps what it encoded;
after a finished pass, many small shards are merged into few large ones (see :meth:`EmbeddingCache.compact`).
Decoding is bounded: each image is decoded, preprocessed to the tower's input size and dropped before the next one,
so memory holds one full-resolution image and one batch of tower inputs, whatever the photos' size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable

import torch
from safetensors import safe_open

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from .dataset import CaptionedDataset

log = logging.getLogger("comfyui_lit")

CACHE_FORMAT = "lit-embedding-cache/2"
FLUSH_SECONDS = 5.0  # write a shard at least this often during a long first pass
FLUSH_ITEMS = 1024  # ... and whenever this many new embeddings are waiting
COMPACT_SHARDS = 16  # more small shards than this (frequent flushes, many short runs) are merged after a pass
COMPACT_ITEMS = 8192  # embeddings per merged shard


def shard_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the shard's tensors (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class EmbeddingCache:
    """Disk cache of a locked tower's embeddings. ``cache_dir=None`` keeps them in memory only."""

    def __init__(self, tower, cache_dir: str | None, *, batch_size: int = 32) -> None:
        self.tower = tower
        self.batch_size = max(1, int(batch_size))
        pre = hashlib.sha256(str(tower.preprocess_id).encode()).hexdigest()[:12]
        self.dir = os.path.join(cache_dir, f"{tower.fingerprint}-{pre}") if cache_dir else None
        self.dim = getattr(tower, "embed_dim", None)
        self._index: dict[str, str] | None = None  # content hash -> shard path
        self._shard_sizes: dict[str, int] = {}  # every readable shard -> its entry count (duplicates included)
        self._memory: dict[str, torch.Tensor] = {}
        self._verified: set[str] = set()
        self.write_error: str | None = None  # why the cache folder could not be written (reported, not hidden)
        self.bad_shards: list[tuple[str, str]] = []  # (shard, why) dropped this run
        # Counted so tests and the report can prove the second run does no forward.
        self.stats = {"forwards": 0, "images_encoded": 0, "hits": 0, "misses": 0, "unreadable": 0,
                      "shards_written": 0, "bad_shards": 0, "shards_compacted": 0}

    # -- reading -------------------------------------------------------------------------------------------
    def _drop_shard(self, path: str, why: str) -> None:
        self.bad_shards.append((os.path.basename(path), why))
        self.stats["bad_shards"] += 1
        self._shard_sizes.pop(path, None)
        log.warning("LiT embedding cache: shard %s is damaged (%s); it is dropped and its images recomputed.",
                    path, why)
        try:
            os.remove(path)
        except OSError:
            pass
        if self._index is not None:
            for k in [k for k, p in self._index.items() if p == path]:
                del self._index[k]

    def _load_index(self) -> dict[str, str]:
        if self._index is None:
            self._index = {}
            if self.dir and os.path.isdir(self.dir):
                for f in sorted(os.listdir(self.dir)):
                    if not (f.startswith("shard-") and f.endswith(".safetensors")):
                        continue
                    path = os.path.join(self.dir, f)
                    try:
                        with safe_open(path, framework="pt") as fh:
                            meta = fh.metadata() or {}
                            keys = list(fh.keys())
                    except Exception as err:  # noqa: BLE001 - a damaged header: recompute, never fatal
                        self._drop_shard(path, f"unreadable header: {type(err).__name__}")
                        continue
                    if meta.get("format") != CACHE_FORMAT or "sha256" not in meta:
                        continue  # written by an older version without checksums: recompute, silently
                    self._shard_sizes[path] = len(keys)
                    for k in keys:
                        self._index[k] = path
        return self._index

    def _check(self, k: str, t: torch.Tensor) -> str | None:
        if t.dim() != 1 or (self.dim is not None and t.shape[0] != self.dim):
            return f"embedding {k[:12]} has shape {tuple(t.shape)}, the tower gives ({self.dim},)"
        if not torch.isfinite(t).all():
            return f"embedding {k[:12]} holds NaN or infinite values"
        return None

    def _read_shard(self, path: str) -> dict[str, torch.Tensor] | None:
        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # noqa: BLE001
            self._drop_shard(path, f"unreadable: {type(err).__name__}")
            return None
        if path not in self._verified:
            if shard_checksum(tensors) != meta.get("sha256"):
                self._drop_shard(path, "checksum mismatch: its bytes changed on disk")
                return None
            for k, t in tensors.items():
                why = self._check(k, t)
                if why:
                    self._drop_shard(path, why)
                    return None
            self._verified.add(path)
        return tensors

    def get(self, hashes: list[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``hashes`` (verified: a damaged shard is dropped, its keys missing)."""
        index = self._load_index()
        out = {h: self._memory[h] for h in hashes if h in self._memory}
        by_shard: dict[str, list[str]] = {}
        for h in hashes:
            if h not in out and h in index:
                by_shard.setdefault(index[h], []).append(h)
        for path, keys in by_shard.items():
            tensors = self._read_shard(path)
            if tensors is None:
                continue
            out.update({k: tensors[k] for k in keys if k in tensors})
        return out

    # -- writing -------------------------------------------------------------------------------------------
    def put(self, new: dict[str, torch.Tensor]) -> bool:
        """Store embeddings (a new shard on disk when the cache has a folder); False when the disk refused
        (``write_error`` says why; the embeddings stay in memory for this run)."""
        if not new:
            return True
        new = {k: v.detach().float().cpu().contiguous() for k, v in new.items()}
        self._memory.update(new)
        if self.dir is None or self.write_error:
            return self.dir is None
        return self._write_shard(new) is not None

    def _write_shard(self, new: dict[str, torch.Tensor]) -> str | None:
        shard = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:16]
        path = os.path.join(self.dir, f"shard-{shard}.safetensors")
        meta = {"format": CACHE_FORMAT, "sha256": shard_checksum(new), "tower": self.tower.fingerprint,
                "preprocess": str(self.tower.preprocess_id)}
        try:
            save_tensors_atomic(new, path, metadata=meta)
        except (OSError, LitError) as err:
            # A read-only dataset folder must not stop training, but the report says the cache was not kept.
            self.write_error = f"{type(err).__name__}: {getattr(err, 'strerror', None) or err}"
            log.warning("LiT embedding cache: can't write to %s (%s); embeddings are kept in memory for this run "
                        "only.", self.dir, self.write_error)
            return None
        self.stats["shards_written"] += 1
        self._verified.add(path)
        index = self._load_index()
        self._shard_sizes[path] = len(new)
        for k in new:
            index[k] = path
        return path

    def compact(self) -> int:
        """Merge the folder's small shards (a long first pass flushes every few seconds) into few large ones, so
        later runs open a handful of files; returns how many shards were merged away. The merged shards are
        written (checksummed, atomically) before the small ones are deleted: a crash in between leaves
        duplicates, never a gap, and damaged shards met on the way are dropped as on any read."""
        if self.dir is None or self.write_error or not os.path.isdir(self.dir):
            return 0
        self._load_index()
        small = sorted(p for p, n in self._shard_sizes.items() if n < COMPACT_ITEMS)
        if len(small) <= COMPACT_SHARDS:
            return 0
        written: set[str] = set()
        batch: dict[str, torch.Tensor] = {}
        for i, path in enumerate(small):
            tensors = self._read_shard(path)
            if tensors:
                batch.update(tensors)
            if batch and (len(batch) >= COMPACT_ITEMS or i == len(small) - 1):
                out = self._write_shard(batch)
                if out is None:
                    return 0  # the disk refused: the small shards stay, still valid
                written.add(out)
                batch = {}
        for path in small:
            if path not in written:
                try:
                    os.remove(path)
                except OSError:
                    continue  # still on disk (and valid): counted again next time
                self._verified.discard(path)
                self._shard_sizes.pop(path, None)
        self.stats["shards_compacted"] += len(small)
        return len(small)

    def location(self) -> str:
        """Where the embeddings live, honestly: the folder, memory only, or memory because the folder failed."""
        if self.dir is None:
            return "in memory"
        if self.write_error:
            return f"in memory only: could not write to {self.dir} ({self.write_error})"
        return f"in {self.dir}"

    # -- computing -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Embeddings of ``[H,W,3]`` images (the trainer's uncached baseline calls this every step)."""
        return self._forward([self.tower.preprocess(im.unsqueeze(0)) for im in images])

    @torch.no_grad()
    def _forward(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        self.stats["forwards"] += 1
        self.stats["images_encoded"] += len(pixels)
        out = self.tower(torch.cat(pixels)).float().cpu()
        bad = (~torch.isfinite(out)).any(dim=-1)
        if bool(bad.any()):
            raise LitError(f"the image tower gave NaN or infinite embeddings for {int(bad.sum())} of {len(pixels)} "
                           "images.", input_name="image_tower",
                           fix="reload the image encoder (its weights may be damaged) or use another dtype (fp32).")
        return out

    def embed_dataset(self, dataset: CaptionedDataset, progress: Callable[[int, int], None] | None = None, *,
                      interrupt: Callable[[], None] | None = None) -> tuple[torch.Tensor, CaptionedDataset]:
        """Embeddings ``[N, D]`` (float32, CPU, not normalised) of every readable image, and the dataset of
        those images (unreadable ones dropped and listed in its report). Only cache misses are decoded.

        ``progress(done, total)`` and ``interrupt()`` are called between images; either may raise (Cancel) and
        everything encoded so far is written to the cache before the exception propagates."""
        hashes = []
        bad: list[int] = []
        reasons: list[str] = []
        for i in range(len(dataset)):
            try:
                hashes.append(dataset.content_hash(i))
            except OSError as err:
                hashes.append("")
                bad.append(i)
                reasons.append(f"unreadable ({err.strerror or err})")
        found = self.get([h for h in hashes if h])
        self.stats["hits"] += sum(1 for h in hashes if h in found)
        todo = [i for i, h in enumerate(hashes) if h and h not in found]
        self.stats["misses"] += len(todo)
        done = len(dataset) - len(todo)
        total = len(dataset)
        if progress:
            progress(done, total)
        pending: list[tuple[str, torch.Tensor]] = []  # (hash, preprocessed [1,3,S,S]): small, whatever the photo
        new: dict[str, torch.Tensor] = {}
        bad_set = set(bad)
        last_write = time.monotonic()

        def flush() -> None:
            if pending:
                embs = self._forward([px for _, px in pending])
                for (h, _), e in zip(pending, embs, strict=True):
                    new[h] = e.clone()
                    found[h] = new[h]
                pending.clear()

        try:
            for i in todo:
                if interrupt:
                    interrupt()
                if hashes[i] in found or any(h == hashes[i] for h, _ in pending):
                    done += 1  # duplicate file content already encoded in this run
                    continue
                try:
                    image = dataset.load_image(i)
                    pending.append((hashes[i], self.tower.preprocess(image.unsqueeze(0))))
                    del image
                except LitError as err:
                    bad.append(i)
                    bad_set.add(i)
                    reasons.append(err.message.split(": ", 1)[-1][:160])
                    self.stats["unreadable"] += 1
                if len(pending) >= self.batch_size:
                    done += len(pending)
                    flush()
                    if new and (len(new) >= FLUSH_ITEMS or time.monotonic() - last_write >= FLUSH_SECONDS):
                        self.put(new)
                        new = {}
                        last_write = time.monotonic()
                if progress:
                    progress(min(done, total), total)
            done += len(pending)
            flush()
        finally:
            # Also on Ctrl+C / Cancel / an error: what was encoded is kept for the next run.
            self.put(new)
        self.compact()  # only after a finished pass: an interrupted one exits above with its shards as written
        if progress:
            progress(total, total)
        good = [i for i in range(len(dataset)) if i not in bad_set]
        if not good:
            raise LitError("none of the dataset's images could be read.\n" + dataset.without(bad, reasons).report(),
                           input_name="dataset", fix="check that the image files are not damaged.")
        kept = dataset.without(bad, reasons) if bad else dataset
        dims = {tuple(found[hashes[i]].shape) for i in good}
        if len(dims) > 1:  # can't happen after the checks above; a clear error beats a torch.stack crash
            raise LitError(f"cached embeddings have different sizes {sorted(dims)}.", input_name="cache_dir",
                           fix="delete the cache folder (.lit_cache) and run again.")
        return torch.stack([found[hashes[i]] for i in good]), kept
