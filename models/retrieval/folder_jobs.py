"""Whole-folder jobs shared by the nodes and the CLI: tag a folder, caption a folder, search a folder.

All three read image embeddings through the folder's :class:`SearchIndex` (itself on the embedding cache), so
tagging a folder for training also indexes it for search, and a second job on the same folder costs no forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..common.errors import LitError
from . import spec
from .captioning import caption_images
from .search import SearchIndex, UpdateReport, build_query
from .tagging import Tagger, TagResult, write_caption_files


def folder_embeddings(model, folder: str, *, cache_dir: str | None = None, recursive: bool = True,
                      progress: Callable[[int, int], None] | None = None) -> tuple[SearchIndex, torch.Tensor,
                                                                                     UpdateReport]:
    """The folder's index (updated) and its images' normalised float32 embeddings, in index order."""
    index = SearchIndex(folder, model.image_tower, cache_dir=cache_dir, recursive=recursive)
    report = index.update(progress)
    return index, index.embeddings.float(), report


@dataclass
class FolderResult:
    paths: list[str]
    lines: list[str]  # one tag line / caption per image
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # caption files that existed (overwrite off)
    report: str = ""
    tags: TagResult | None = None
    scores: list[float] = field(default_factory=list)

    def summary(self, what: str) -> str:
        text = f"{what} {len(self.paths)} image(s); {self.report}"
        if self.written or self.kept:
            text += f"\nwrote {len(self.written)} caption file(s)"
            if self.kept:
                text += f"; kept {len(self.kept)} existing file(s) (turn on overwrite to replace them)"
        return text


def tag_folder(model, folder: str, vocabulary: Sequence[str] | str, *, threshold: float = spec.TAG_THRESHOLD.default,
               top_k: int = int(spec.TAG_TOP_K.default), min_tags: int = 0, calibration: str = "auto",
               templates: str | Sequence[str] | None = None, prefix: str = "", write: bool = False,
               overwrite: bool = False, extension: str = ".txt", cache_dir: str | None = None,
               recursive: bool = True, progress: Callable[[int, int], None] | None = None) -> FolderResult:
    """Tags for every image of a folder; with ``write`` a same-name caption file beside each image."""
    tagger = Tagger(model, vocabulary, templates=templates, calibration=calibration)
    index, img, report = folder_embeddings(model, folder, cache_dir=cache_dir, recursive=recursive, progress=progress)
    if len(index) == 0:
        raise LitError(f"no readable images in '{folder}'. {report}", input_name="folder",
                       fix="point it at a folder of .png/.jpg/.webp images.")
    result = tagger.tag(img, threshold=threshold, top_k=top_k, min_tags=min_tags)
    paths = [index.abspath(i) for i in range(len(index))]
    out = FolderResult(paths, result.strings(prefix=prefix), report=str(report), tags=result)
    if write:
        out.written, out.kept = write_caption_files(paths, out.lines, overwrite=overwrite, extension=extension)
    return out


def caption_folder(model, folder: str, candidates: str | Sequence[str], *, vocabulary: str | Sequence[str] = "",
                   threshold: float = spec.TAG_THRESHOLD.default, top_k: int = int(spec.TAG_TOP_K.default),
                   calibration: str = "auto", prefix: str = "", write: bool = False, overwrite: bool = False,
                   extension: str = ".txt", cache_dir: str | None = None, recursive: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> FolderResult:
    """The best candidate caption for every image of a folder (templates filled with the image's own tags)."""
    index, img, report = folder_embeddings(model, folder, cache_dir=cache_dir, recursive=recursive, progress=progress)
    if len(index) == 0:
        raise LitError(f"no readable images in '{folder}'. {report}", input_name="folder",
                       fix="point it at a folder of .png/.jpg/.webp images.")
    tags = None
    if "{tags}" in (candidates if isinstance(candidates, str) else "\n".join(candidates)):
        tagged = Tagger(model, vocabulary, calibration=calibration).tag(img, threshold=threshold, top_k=top_k)
        tags = [[t for t, _ in row] for row in tagged.tags]
    best = caption_images(model, img, candidates, tags)
    lines = [(prefix.strip() + ", " if prefix.strip() else "") + c for c, _ in best]
    paths = [index.abspath(i) for i in range(len(index))]
    out = FolderResult(paths, lines, report=str(report), scores=[s for _, s in best])
    if write:
        out.written, out.kept = write_caption_files(paths, lines, overwrite=overwrite, extension=extension)
    return out


def search_folder(model, folder: str, *, positive: str = "", negative: str = "",
                  positive_images: torch.Tensor | None = None, negative_images: torch.Tensor | None = None,
                  top_k: int = int(spec.SEARCH_TOP_K.default),
                  negative_weight: float = spec.SEARCH_NEGATIVE_WEIGHT.default, cache_dir: str | None = None,
                  recursive: bool = True,
                  progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[float], UpdateReport]:
    """The ``top_k`` images of a folder (absolute paths, best first) for a text and/or image query."""
    q = build_query(model, positive=positive, negative=negative, positive_images=positive_images,
                    negative_images=negative_images, negative_weight=negative_weight)
    index = SearchIndex(folder, model.image_tower, cache_dir=cache_dir, recursive=recursive)
    report = index.update(progress)
    idx, vals = index.top_k(q, top_k)
    return [index.abspath(i) for i in idx], vals, report
