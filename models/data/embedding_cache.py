"""Image embeddings computed once and kept on disk: LiT's economy.

The image tower is locked, so an image's embedding never changes for a given (tower, file, preprocessing).
We key each embedding by the tower fingerprint + preprocessing id (the cache sub-folder) and the file's content
hash (the tensor name), and store them in safetensors shards written under a temporary name and renamed, so an
interrupted run never leaves a half-written shard. A second run over the same data does no tower forward at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import torch
from safetensors import safe_open

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from .dataset import CaptionedDataset


class EmbeddingCache:
    """Disk cache of a locked tower's embeddings. ``cache_dir=None`` keeps them in memory only."""

    def __init__(self, tower, cache_dir: str | None, *, batch_size: int = 32) -> None:
        self.tower = tower
        self.batch_size = max(1, int(batch_size))
        pre = hashlib.sha256(str(tower.preprocess_id).encode()).hexdigest()[:12]
        self.dir = os.path.join(cache_dir, f"{tower.fingerprint}-{pre}") if cache_dir else None
        self._index: dict[str, str] | None = None  # content hash -> shard path
        self._memory: dict[str, torch.Tensor] = {}
        # Counted so tests and the report can prove the second run does no forward.
        self.stats = {"forwards": 0, "images_encoded": 0, "hits": 0, "misses": 0, "unreadable": 0}

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
                            for k in fh.keys():
                                self._index[k] = path
                    except Exception:  # noqa: BLE001 - a damaged shard is recomputed, never fatal
                        continue
        return self._index

    def get(self, hashes: list[str]) -> dict[str, torch.Tensor]:
        """The cached embeddings among ``hashes``."""
        index = self._load_index()
        out = {h: self._memory[h] for h in hashes if h in self._memory}
        by_shard: dict[str, list[str]] = {}
        for h in hashes:
            if h not in out and h in index:
                by_shard.setdefault(index[h], []).append(h)
        for path, keys in by_shard.items():
            try:
                with safe_open(path, framework="pt") as fh:
                    for k in keys:
                        out[k] = fh.get_tensor(k)
            except Exception:  # noqa: BLE001 - treat as a miss
                continue
        return out

    def put(self, new: dict[str, torch.Tensor]) -> None:
        """Store embeddings (a new shard on disk when the cache has a folder)."""
        if not new:
            return
        self._memory.update({k: v.detach().float().cpu() for k, v in new.items()})
        if self.dir is None:
            return
        shard = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:16]
        path = os.path.join(self.dir, f"shard-{shard}.safetensors")
        try:
            save_tensors_atomic(new, path, metadata={"tower": self.tower.fingerprint,
                                                     "preprocess": str(self.tower.preprocess_id)})
        except OSError:
            # A read-only dataset folder must not stop training: the embeddings stay in memory for this run.
            return
        index = self._load_index()
        for k in new:
            index[k] = path

    @torch.no_grad()
    def _encode(self, images: list[torch.Tensor]) -> torch.Tensor:
        # Images differ in size: preprocess one by one to [1,3,S,S], then run the tower on the whole batch.
        pixels = torch.cat([self.tower.preprocess(im.unsqueeze(0)) for im in images])
        self.stats["forwards"] += 1
        self.stats["images_encoded"] += len(images)
        return self.tower(pixels).float().cpu()

    def embed_dataset(self, dataset: CaptionedDataset,
                      progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, CaptionedDataset]:
        """Embeddings ``[N, D]`` (float32, CPU, not normalised) of every readable image, and the dataset of
        those images (unreadable ones dropped and listed in its report). Only cache misses are decoded."""
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
        if progress:
            progress(done, len(dataset))
        pending: list[tuple[str, torch.Tensor]] = []
        new: dict[str, torch.Tensor] = {}
        bad_set = set(bad)

        def flush() -> None:
            if pending:
                embs = self._encode([im for _, im in pending])
                for (h, _), e in zip(pending, embs, strict=True):
                    new[h] = e.clone()
                    found[h] = new[h]
                pending.clear()

        for i in todo:
            if hashes[i] in found:  # duplicate file content already encoded in this run
                continue
            try:
                pending.append((hashes[i], dataset.load_image(i)))
            except LitError as err:
                bad.append(i)
                bad_set.add(i)
                reasons.append(err.message.split(": ", 1)[-1][:120])
                self.stats["unreadable"] += 1
            if len(pending) >= self.batch_size:
                flush()
                done += self.batch_size
                if progress:
                    progress(min(done, len(dataset)), len(dataset))
                # Shards every few batches: an interrupted first run still keeps most of its work.
                if len(new) >= 1024:
                    self.put(new)
                    new = {}
        flush()
        self.put(new)
        if progress:
            progress(len(dataset), len(dataset))
        good = [i for i in range(len(dataset)) if i not in bad_set]
        if not good:
            raise LitError("none of the dataset's images could be read.\n" + dataset.without(bad, reasons).report(),
                           input_name="dataset", fix="check that the image files are not damaged.")
        kept = dataset.without(bad, reasons) if bad else dataset
        return torch.stack([found[hashes[i]] for i in good]), kept
