"""Captioned-image datasets for locked tuning: a folder with same-stem ``.txt`` captions, a JSONL/CSV manifest,
or an in-graph IMAGE batch with a caption list.

Images are indexed eagerly (path, captions, a cheap header check) but decoded lazily: the embedding cache decodes
each file once per tower, so a dataset of thousands of photos never sits in memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.errors import LitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_DIRNAME = ".lit_cache"


@dataclass
class Sample:
    """One image and its captions (several captions = alternatives; training samples one per step)."""

    key: str  # relative path, or "batch:<i>" for in-graph images
    captions: list[str]
    path: str | None = None
    image: torch.Tensor | None = None  # [H,W,3] float 0..1, for in-graph samples


@dataclass
class CaptionedDataset:
    """A list of captioned images plus what was skipped while reading it (name, reason)."""

    samples: list[Sample]
    root: str | None = None
    source: str = "folder"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    _hashes: dict[int, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def captions(self) -> list[list[str]]:
        return [s.captions for s in self.samples]

    def default_cache_dir(self) -> str | None:
        """``<dataset folder>/.lit_cache`` for file datasets; None for in-graph batches (no natural home)."""
        return os.path.join(self.root, CACHE_DIRNAME) if self.root else None

    def load_image(self, i: int) -> torch.Tensor:
        """Decode image ``i`` as float32 ``[H,W,3]`` in 0..1 (EXIF-rotated; RGBA/greyscale made RGB).

        Raises ``LitError`` when the file can't be decoded; callers that index many files catch it and skip.
        """
        s = self.samples[i]
        if s.image is not None:
            return s.image
        return read_image(s.path)

    def content_hash(self, i: int) -> str:
        """SHA-256 of the file bytes (or of the in-graph pixels): the cache key that survives renames."""
        if i not in self._hashes:
            s = self.samples[i]
            h = hashlib.sha256()
            if s.image is not None:
                t = s.image.detach().float().cpu().contiguous()
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
            else:
                with open(s.path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            self._hashes[i] = h.hexdigest()
        return self._hashes[i]

    def subset(self, indices: list[int]) -> CaptionedDataset:
        """A dataset of the given samples (sharing the skip report and known hashes)."""
        out = CaptionedDataset([self.samples[i] for i in indices], root=self.root, source=self.source,
                               skipped=list(self.skipped))
        out._hashes = {j: self._hashes[i] for j, i in enumerate(indices) if i in self._hashes}
        return out

    def without(self, bad: list[int], reasons: list[str]) -> CaptionedDataset:
        """This dataset minus samples found unreadable later (at decode time), recorded in the report."""
        keep = [i for i in range(len(self)) if i not in set(bad)]
        out = self.subset(keep)
        out.skipped += [(self.samples[i].key, r) for i, r in zip(bad, reasons, strict=True)]
        return out

    def split(self, val_fraction: float = 0.1, seed: int = 0,
              min_val: int = 2) -> tuple[CaptionedDataset, CaptionedDataset]:
        """Deterministic train/validation split by ``seed`` (the same seed always gives the same split).

        Validation is empty when the dataset is too small to spare ``min_val`` images and still train.
        """
        n = len(self)
        n_val = int(round(n * val_fraction)) if val_fraction > 0 else 0
        if n_val and n_val < min_val:
            n_val = min_val
        if n - n_val < 2:
            n_val = 0
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        return self.subset(train_idx), self.subset(val_idx)

    def report(self) -> str:
        """One paragraph: how many images/captions were used and which files were skipped and why."""
        n_caps = sum(len(s.captions) for s in self.samples)
        lines = [f"{len(self)} images, {n_caps} captions ({self.source}"
                 + (f": {self.root}" if self.root else "") + ")."]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} file(s):")
            lines += [f"  - {name}: {why}" for name, why in self.skipped[:50]]
            if len(self.skipped) > 50:
                lines.append(f"  ... and {len(self.skipped) - 50} more")
        return "\n".join(lines)

    def class_names(self) -> list[str] | None:
        """The label set when the captions are class names (one short caption per image, repeated across
        images), else None. Zero-shot accuracy is only meaningful then."""
        if len(self) < 2 or any(len(s.captions) != 1 for s in self.samples):
            return None
        names = sorted({s.captions[0] for s in self.samples})
        if 2 <= len(names) <= max(2, len(self) // 2):
            return names
        return None


def read_image(path: str) -> torch.Tensor:
    """A file as float32 ``[H,W,3]`` 0..1: EXIF orientation applied, alpha/greyscale/palette converted."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Composite transparency on white, as image viewers show it, rather than on black garbage.
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise LitError(f"could not read image '{path}': {err}", input_name="dataset",
                       fix="remove or replace the damaged file.") from None
    return torch.from_numpy(arr.copy())


def _check_image_header(path: str) -> str | None:
    """Why ``path`` is not a usable image (None when its header parses); cheap, no full decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # noqa: BLE001
        return f"unreadable image ({type(err).__name__}: {str(err)[:80]})"
    return None


def _read_captions(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return [line.strip() for line in fh.read().splitlines() if line.strip()]


def load_folder(folder: str, *, recursive: bool = True, check_images: bool = True) -> CaptionedDataset:
    """Images with same-stem ``.txt`` captions (one caption per line) in ``folder`` (recursive by default).

    Images without a caption file, empty captions and unreadable images are skipped and listed in the report.
    """
    if not folder or not os.path.isdir(folder):
        raise LitError(f"'{folder}' is not a folder.", input_name="folder",
                       fix="give the path of a folder of images with same-name .txt caption files.")
    root = os.path.abspath(folder)
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    n_images = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for f in sorted(filenames):
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            n_images += 1
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            txt = os.path.splitext(path)[0] + ".txt"
            if not os.path.isfile(txt):
                skipped.append((rel, "no caption file"))
                continue
            caps = _read_captions(txt)
            if not caps:
                skipped.append((rel, "empty caption file"))
                continue
            why = _check_image_header(path) if check_images else None
            if why:
                skipped.append((rel, why))
                continue
            samples.append(Sample(key=rel, captions=caps, path=path))
    ds = CaptionedDataset(samples, root=root, source="folder", skipped=skipped)
    if not samples:
        if n_images == 0:
            raise LitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in '{folder}'.", input_name="folder",
                           fix="point it at the folder that holds the images.")
        raise LitError(f"none of the {n_images} images in '{folder}' has a usable caption.\n{ds.report()}",
                       input_name="folder",
                       fix="put a caption in a .txt file with the same name as each image (one caption per line).")
    return ds


def _manifest_rows(path: str) -> list[dict]:
    ext = os.path.splitext(path)[1].lower()
    rows: list[dict] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        if ext in (".jsonl", ".ndjson"):
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise LitError(f"line {n} of '{path}' is not valid JSON ({err}).", input_name="manifest",
                                   fix='write one object per line: {"image": "a.jpg", "text": "a caption"}.') from None
                if not isinstance(row, dict):
                    raise LitError(f"line {n} of '{path}' is not a JSON object.", input_name="manifest",
                                   fix='write one object per line: {"image": "a.jpg", "text": "a caption"}.')
                rows.append(row)
        elif ext in (".csv", ".tsv"):
            reader = csv.DictReader(fh, delimiter="\t" if ext == ".tsv" else ",")
            rows = [dict(r) for r in reader]
        else:
            raise LitError(f"'{os.path.basename(path)}' is not a .jsonl or .csv manifest.", input_name="manifest",
                           fix="use a .jsonl or .csv file with 'image' and 'text' columns.")
    return rows


def load_manifest(path: str, *, check_images: bool = True) -> CaptionedDataset:
    """A JSONL or CSV manifest with ``image`` and ``text`` columns; relative image paths are resolved against the
    manifest's folder. Rows naming the same image are merged (its captions become alternatives). ``text`` may
    also be a JSON list of captions."""
    if not os.path.isfile(path):
        raise LitError(f"manifest '{path}' does not exist.", input_name="manifest", fix="check the path.")
    base = os.path.dirname(os.path.abspath(path))
    rows = _manifest_rows(path)
    if rows and not ({"image", "text"} <= set(rows[0])):
        raise LitError(f"manifest '{os.path.basename(path)}' has columns {sorted(rows[0])}; it needs 'image' and "
                       "'text'.", input_name="manifest", fix="rename the columns to 'image' and 'text'.")
    by_image: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for row in rows:
        img = str(row.get("image") or "").strip()
        text = row.get("text")
        caps = [str(t).strip() for t in text] if isinstance(text, list) else [
            line.strip() for line in str(text or "").splitlines()]
        caps = [c for c in caps if c]
        if not img:
            skipped.append(("(row without image)", "no image path"))
            continue
        if not caps:
            skipped.append((img, "empty caption"))
            continue
        by_image.setdefault(img, []).extend(c for c in caps if c not in by_image.get(img, []))
    samples: list[Sample] = []
    for img, caps in by_image.items():
        full = img if os.path.isabs(img) else os.path.normpath(os.path.join(base, img))
        if not os.path.isfile(full):
            skipped.append((img, "file not found"))
            continue
        why = _check_image_header(full) if check_images else None
        if why:
            skipped.append((img, why))
            continue
        samples.append(Sample(key=img, captions=caps, path=full))
    ds = CaptionedDataset(samples, root=base, source="manifest", skipped=skipped)
    if not samples:
        raise LitError(f"manifest '{os.path.basename(path)}' gives no usable captioned image.\n{ds.report()}",
                       input_name="manifest", fix="check the 'image' paths and that the 'text' column is filled.")
    return ds


def from_images(images: torch.Tensor, captions: list[str] | str) -> CaptionedDataset:
    """An in-graph IMAGE batch ``[B,H,W,C]`` with one caption per image (a list, or a multiline string: one line
    per image; ``a | b`` on a line gives that image several captions)."""
    if not torch.is_tensor(images) or images.dim() not in (3, 4):
        raise LitError("expected an IMAGE batch [B,H,W,C].", input_name="images", fix="connect an IMAGE output.")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    lines = captions.splitlines() if isinstance(captions, str) else list(captions)
    lines = [str(c).strip() for c in lines if str(c).strip()]
    if not lines:
        raise LitError("no captions given.", input_name="captions", fix="write one caption per line, one per image.")
    if len(lines) != images.shape[0]:
        raise LitError(f"{images.shape[0]} images but {len(lines)} caption lines.", input_name="captions",
                       fix="write exactly one caption line per image, in batch order.")
    c = images.shape[-1]
    if c not in (1, 3, 4):
        raise LitError(f"images have {c} channels.", input_name="images", fix="connect an RGB IMAGE.")
    # Nodes run under inference mode; a normal tensor copy can later feed autograd (e.g. guidance) safely.
    with torch.inference_mode(False):
        imgs = images.detach().float().cpu()
        if c == 1:
            imgs = imgs.expand(*imgs.shape[:-1], 3)
        elif c == 4:
            imgs = imgs[..., :3]
        imgs = imgs.clone().contiguous()
        views = list(imgs.unbind(0))
    samples = [Sample(key=f"batch:{i}", captions=[p.strip() for p in line.split("|") if p.strip()], image=views[i])
               for i, line in enumerate(lines)]
    return CaptionedDataset(samples, root=None, source="images")


def load_dataset(source: str, **kwargs) -> CaptionedDataset:
    """A folder or a manifest file, by what ``source`` is."""
    if os.path.isdir(source):
        return load_folder(source, **kwargs)
    if os.path.isfile(source):
        return load_manifest(source, **kwargs)
    raise LitError(f"'{source}' is neither a folder nor a manifest file.", input_name="dataset",
                   fix="give a folder of captioned images or a .jsonl/.csv manifest.")
