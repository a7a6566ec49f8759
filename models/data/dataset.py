"""Captioned-image datasets for locked tuning: a folder with same-stem ``.txt`` captions, a JSONL/CSV manifest,
or an in-graph IMAGE batch with a caption list.

Images are indexed eagerly (path, captions, a cheap header check) but decoded lazily: the embedding cache decodes
each file once per tower, so a dataset of thousands of photos never sits in memory.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.errors import LitError
from ..common.validate import check_finite

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


MAX_PIXELS_ENV = "COMFYUI_LIT_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 120_000_000  # a 100 MP camera fits; a 20 KB PNG declaring 12000x12000 does not


def max_pixels() -> int:
    """The largest image (width x height) the pack decodes: ``$COMFYUI_LIT_MAX_PIXELS``, default 120 MP."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        return int(float(raw)) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise LitError(f"{MAX_PIXELS_ENV}={raw!r} is not a number.", input_name=MAX_PIXELS_ENV,
                       fix="set it to a pixel count, e.g. 200000000, or unset it.") from None


def _size_problem(size: tuple[int, int], limit: int | None = None) -> str | None:
    limit = max_pixels() if limit is None else limit
    w, h = size
    if w * h > limit:
        return (f"{w}x{h} ({w * h} pixels), over the limit of {limit} pixels; downscale it, or raise the limit "
                f"with the environment variable {MAX_PIXELS_ENV} (e.g. {MAX_PIXELS_ENV}={2 * w * h})")
    if w < 1 or h < 1:
        return f"{w}x{h} has no pixels"
    return None


def _name(path) -> str:
    return path if isinstance(path, str) else getattr(path, "name", "image data")


def _to_array(im) -> np.ndarray:
    """Pixels as float32 ``[H,W,3]`` 0..1, keeping high bit depths: 16-bit greyscale (mode ``I;16``/``I``) is
    scaled by 65535, not clipped at 255 (which made every 16-bit PNG white)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(im, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=-1)
    if im.mode == "F":
        grey = np.asarray(im, dtype=np.float32)
        if not np.isfinite(grey).all():
            raise ValueError("floating-point image with NaN or infinite pixels")
        grey = grey / 255.0 if grey.max(initial=0) > 1.0 else grey
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparency on white, as image viewers show it, rather than on black garbage.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_image(path, *, limit: int | None = None) -> torch.Tensor:
    """A file (or file-like) as float32 ``[H,W,3]`` 0..1: EXIF orientation applied, alpha/greyscale/palette/16-bit
    converted. Images over :func:`max_pixels` are refused before decoding (their header is enough)."""
    import warnings

    from PIL import Image, ImageOps

    name = _name(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
            with Image.open(path) as im:
                too_big = _size_problem(im.size, limit)
                if too_big:
                    raise LitError(f"image '{name}' is {too_big}.", input_name="image",
                                   fix=f"downscale the image, or set {MAX_PIXELS_ENV} to a larger pixel count.")
                im = ImageOps.exif_transpose(im)
                arr = _to_array(im)
    except LitError:
        raise
    except Image.DecompressionBombError as err:
        raise LitError(f"image '{name}' is too large to decode safely ({err}).", input_name="image",
                       fix="downscale the image.") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        reason = ("a symbolic link loop" if isinstance(err, OSError) and err.errno == errno.ELOOP
                  else f"{type(err).__name__}: {str(err)[:120]}")
        raise LitError(f"could not read image '{name}': {reason}", input_name="dataset",
                       fix="remove or replace the damaged file.") from None
    return torch.from_numpy(arr.copy())


def _check_image_header(path: str) -> str | None:
    """Why ``path`` is not a usable image (None when its header parses and its size is within the limit); cheap,
    no full decode."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                too_big = _size_problem(im.size)
                if too_big:
                    return f"too large: {too_big}"
                im.verify()
    except Image.DecompressionBombError as err:
        return f"too large: {str(err)[:120]}"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "unreadable image (a symbolic link loop)"
        return f"unreadable image ({type(err).__name__}: {str(err)[:80]})"
    except Exception as err:  # noqa: BLE001
        return f"unreadable image ({type(err).__name__}: {str(err)[:80]})"
    return None


class TextDecodeError(ValueError):
    """A text file in an encoding we won't guess (the message says which bytes)."""


def decode_text(data: bytes) -> str:
    """Bytes of a caption or manifest as text: UTF-8 (with or without BOM) or UTF-16/32 with a BOM (what Windows
    Notepad writes as "Unicode"). Anything else is refused rather than decoded into garbage: Latin-1 and other
    legacy code pages can't be told apart reliably."""
    import codecs

    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
                     (codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                     (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(enc)
            except UnicodeDecodeError as err:
                raise TextDecodeError(f"starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()} "
                                      f"(byte {err.start})") from None
    if b"\x00" in data:
        raise TextDecodeError("holds NUL bytes: looks like UTF-16 without a byte-order mark")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start:err.start + 1].hex()
        raise TextDecodeError(f"is not UTF-8 (byte 0x{bad} at position {err.start}; Latin-1/Windows-1252 text?)"
                              ) from None


ENCODING_FIX = "save the file as UTF-8 (in most editors: 'Save as' > encoding UTF-8)."


def _read_captions(path: str) -> list[str]:
    """Caption lines of a ``.txt``; raises :class:`TextDecodeError` for an encoding we won't guess."""
    with open(path, "rb") as fh:
        text = decode_text(fh.read())
    return [line.strip() for line in text.splitlines() if line.strip()]


def _explain_path(path: str, input_name: str) -> LitError:
    """The right complaint for a path that is neither a readable folder nor a file."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return LitError(f"'{path}' is a symbolic link loop (it points, directly or not, at itself).",
                            input_name=input_name, fix="fix or remove the link, or give the real folder.")
        if os.path.islink(path):
            return LitError(f"'{path}' is a broken symbolic link (its target {os.readlink(path)!r} does not exist).",
                            input_name=input_name, fix="fix the link, or give the real folder.")
        if err.errno == errno.EACCES:
            return LitError(f"'{path}' can't be read (permission denied).", input_name=input_name,
                            fix="give ComfyUI read access to it.")
        return LitError(f"'{path}' does not exist.", input_name=input_name, fix="check the path.")
    return LitError(f"'{path}' is not a folder.", input_name=input_name,
                    fix="give the path of a folder of images with same-name .txt caption files.")


def _walk(root: str, recursive: bool):
    """``os.walk`` that follows symlinked sub-folders once each (a loop can't recurse) and skips hidden folders
    such as ``.lit_cache``."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        yield dirpath, dirnames, filenames


def _none_usable(n_images: int, folder: str, ds: CaptionedDataset, input_name: str) -> LitError:
    """Name the main reason nothing was usable: unreadable images, captions, encodings or sizes."""
    reasons = [why for _, why in ds.skipped]
    kinds = {"unreadable": sum(r.startswith("unreadable") for r in reasons),
             "too large": sum(r.startswith("too large") for r in reasons),
             "encoding": sum(r.startswith("caption file is") for r in reasons)}
    n = len(reasons) or 1
    if kinds["unreadable"] == n:
        return LitError(f"none of the {n_images} images in '{folder}' could be read: they are damaged or not "
                        f"images.\n{ds.report()}", input_name=input_name, fix="replace the damaged files.")
    if kinds["too large"] == n:
        return LitError(f"all {n_images} images in '{folder}' are over the size limit.\n{ds.report()}",
                        input_name=input_name, fix=f"downscale them, or raise {MAX_PIXELS_ENV}.")
    if kinds["encoding"] == n:
        return LitError(f"none of the caption files in '{folder}' could be decoded.\n{ds.report()}",
                        input_name=input_name, fix=ENCODING_FIX)
    captions = sum(r in ("no caption file", "empty caption file") for r in reasons) == n
    return LitError(f"none of the {n_images} images in '{folder}' has a usable caption"
                    + ("" if captions else " and a readable image") + f".\n{ds.report()}", input_name=input_name,
                    fix="put a caption in a .txt file with the same name as each image (one caption per line).")


def load_folder(folder: str, *, recursive: bool = True, check_images: bool = True) -> CaptionedDataset:
    """Images with same-stem ``.txt`` captions (one caption per line) in ``folder`` (recursive by default).

    Images without a caption file, empty captions and unreadable images are skipped and listed in the report.
    """
    if not folder or not os.path.isdir(folder):
        if not folder:
            raise LitError("no folder given.", input_name="folder",
                           fix="give the path of a folder of images with same-name .txt caption files.")
        raise _explain_path(folder, "folder")
    root = os.path.abspath(folder)
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    n_images = 0
    for dirpath, _dirnames, filenames in _walk(root, recursive):
        for f in sorted(filenames):
            if not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            n_images += 1
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            txt = os.path.splitext(path)[0] + ".txt"
            why = _check_image_header(path) if check_images else None
            if why:
                skipped.append((rel, why))
                continue
            if not os.path.isfile(txt):
                skipped.append((rel, "no caption file"))
                continue
            try:
                caps = _read_captions(txt)
            except (TextDecodeError, OSError) as err:
                skipped.append((rel, f"caption file is unreadable: {os.path.basename(txt)} {err}; {ENCODING_FIX}"
                                if isinstance(err, OSError) else
                                f"caption file is not text we can decode: {os.path.basename(txt)} {err}; "
                                f"{ENCODING_FIX}"))
                continue
            if not caps:
                skipped.append((rel, "empty caption file"))
                continue
            samples.append(Sample(key=rel, captions=caps, path=path))
    ds = CaptionedDataset(samples, root=root, source="folder", skipped=skipped)
    if not samples:
        if n_images == 0:
            raise LitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in '{folder}'.", input_name="folder",
                           fix="point it at the folder that holds the images.")
        raise _none_usable(n_images, folder, ds, "folder")
    return ds


def _manifest_rows(path: str) -> list[dict]:
    ext = os.path.splitext(path)[1].lower()
    rows: list[dict] = []
    if ext not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise LitError(f"'{os.path.basename(path)}' is not a .jsonl or .csv manifest.", input_name="manifest",
                       fix="use a .jsonl or .csv file with 'image' and 'text' columns.")
    try:
        with open(path, "rb") as raw:
            text = decode_text(raw.read())
    except TextDecodeError as err:
        raise LitError(f"manifest '{os.path.basename(path)}' {err}.", input_name="manifest", fix=ENCODING_FIX) from None
    except OSError as err:
        raise LitError(f"manifest '{path}' can't be read ({err.strerror or err}).", input_name="manifest",
                       fix="check the path and its permissions.") from None
    with io.StringIO(text, newline="") as fh:
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
        else:
            try:
                reader = csv.DictReader(fh, delimiter="\t" if ext == ".tsv" else ",")
                rows = [dict(r) for r in reader]
            except csv.Error as err:
                raise LitError(f"'{os.path.basename(path)}' is not a valid CSV file ({err}).", input_name="manifest",
                               fix="write a header line 'image,text' and one row per image.") from None
    return rows


def load_manifest(path: str, *, check_images: bool = True) -> CaptionedDataset:
    """A JSONL or CSV manifest with ``image`` and ``text`` columns; relative image paths are resolved against the
    manifest's folder. Rows naming the same image are merged (its captions become alternatives). ``text`` may
    also be a JSON list of captions."""
    if not os.path.isfile(path):
        raise _explain_path(path, "manifest")
    base = os.path.dirname(os.path.abspath(path))
    rows = _manifest_rows(path)
    if rows and not ({"image", "text"} <= set(rows[0])):
        raise LitError(f"manifest '{os.path.basename(path)}' has columns {sorted(rows[0])}; it needs 'image' and "
                       "'text'.", input_name="manifest", fix="rename the columns to 'image' and 'text'.")
    by_image: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for row in rows:
        img = str(row.get("image") or "").strip() if not isinstance(row.get("image"), (list, dict)) else ""
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
            skipped.append((img, "a symbolic link loop" if os.path.islink(full) and _is_loop(full)
                             else "file not found"))
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
    if images.shape[0] == 0:
        raise LitError("the image batch is empty.", input_name="images",
                       fix="check the node that makes the batch (an empty folder or a filter that kept nothing).")
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
    check_finite(imgs, input_name="images", what="pixel values",
                 fix="an upstream node produced NaN or infinite pixels; fix or replace it before tuning.")
    samples = [Sample(key=f"batch:{i}", captions=[p.strip() for p in line.split("|") if p.strip()], image=views[i])
               for i, line in enumerate(lines)]
    return CaptionedDataset(samples, root=None, source="images")


def load_dataset(source: str, **kwargs) -> CaptionedDataset:
    """A folder or a manifest file, by what ``source`` is."""
    if os.path.isdir(source):
        return load_folder(source, **kwargs)
    if os.path.isfile(source):
        return load_manifest(source, **kwargs)
    if not source:
        raise LitError("no dataset path given.", input_name="dataset",
                       fix="give a folder of captioned images or a .jsonl/.csv manifest.")
    err = _explain_path(source, "dataset")
    if "is not a folder" not in err.message:
        raise err  # a loop, a broken link, no permission, or simply missing: say which
    raise LitError(f"'{source}' is neither a folder nor a manifest file.", input_name="dataset",
                   fix="give a folder of captioned images or a .jsonl/.csv manifest.")


def _is_loop(path: str) -> bool:
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def dataset_signature(path: str, *, recursive: bool = True, max_entries: int = 20000) -> str:
    """A cheap fingerprint of what's under ``path`` for a node's ``IS_CHANGED``: the name, size and mtime of the
    image, caption and manifest files, from one ``scandir`` walk that stops after ``max_entries`` directory entries
    (ComfyUI calls this on every queue; a path like ``/`` must not cost a full disk walk). Hidden folders such as
    the embedding cache are skipped, so caching embeddings doesn't look like a changed dataset."""
    h = hashlib.sha256()
    try:
        st = os.stat(path)
    except OSError as err:
        return f"missing:{path}:{err.errno}"
    if not os.path.isdir(path):
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"
    wanted = (*IMAGE_EXTENSIONS, ".txt", ".jsonl", ".csv", ".tsv", ".json")
    stack, seen, n = [path], set(), 0
    while stack and n < max_entries:
        d = stack.pop()
        try:
            dst = os.stat(d)
            if (dst.st_dev, dst.st_ino) in seen:
                continue
            seen.add((dst.st_dev, dst.st_ino))
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        # Folder names, not their mtimes: writing the hidden embedding cache touches the dataset folder's mtime.
        h.update(f"D{os.path.relpath(d, path)}\n".encode())
        for e in entries:
            n += 1
            if n > max_entries:
                h.update(b"...truncated")
                break
            try:
                if e.is_dir():
                    if recursive and not e.name.startswith("."):
                        stack.append(e.path)
                elif e.name.lower().endswith(wanted):
                    est = e.stat()
                    h.update(f"F{e.name}:{est.st_size}:{est.st_mtime_ns}\n".encode())
            except OSError:
                continue
    return h.hexdigest()
