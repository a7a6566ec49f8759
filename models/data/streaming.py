"""WebDataset-style tar shards (``key.jpg`` + ``key.txt`` per sample) as a captioned dataset.

Shards are read sequentially (one streaming pass, by the ``webdataset`` package when installed, else Python's
``tarfile`` in stream mode) to index the samples: key, captions and the SHA-256 of the image bytes, which is the
embedding-cache key. No image is kept in memory; the embedding cache decodes a cache miss by seeking to its tar
member (plain tar: the offset is known; the index of a shard is read once per process).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ..common.errors import LitError
from .dataset import ENCODING_FIX, CaptionedDataset, Sample, TextDecodeError, decode_text, read_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp")
CAPTION_KEYS = ("txt", "caption", "json")


def expand_shards(specs: str | list[str]) -> list[str]:
    """Shard paths from brace patterns (``data-{000..099}.tar``, WebDataset's syntax), globs and lists."""
    try:
        from braceexpand import braceexpand  # webdataset's own dependency
    except ImportError:
        def braceexpand(pattern: str) -> list[str]:
            if "{" in pattern:
                raise LitError(f"'{pattern}' needs brace expansion.", input_name="shards",
                               fix="pip install webdataset (it brings braceexpand), or use a glob like 'data/*.tar'.")
            return [pattern]

    specs = [specs] if isinstance(specs, str) else list(specs)
    out: list[str] = []
    for spec in specs:
        for s in (p.strip() for part in spec.split("::") for p in braceexpand(part)):
            matches = sorted(glob.glob(s)) if any(c in s for c in "*?[") else [s]
            out += matches
    missing = [s for s in out if not os.path.isfile(s)]
    if not out or missing:
        raise LitError(f"tar shard(s) not found: {', '.join(missing[:5]) or specs}.", input_name="shards",
                       fix="give existing .tar files, e.g. 'data/shard-{000..009}.tar' or 'data/*.tar'.")
    return out


def _split_name(name: str) -> tuple[str, str]:
    # WebDataset convention: the key is everything up to the first dot of the basename.
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _iter_tarfile(url: str) -> Iterator[dict]:
    current: dict | None = None
    with tarfile.open(url, mode="r|*") as tar:  # stream mode: strictly sequential, works on pipes
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = tar.extractfile(member).read()
    if current is not None:
        yield current


class ShardReadError(Exception):
    """A shard that stopped being readable part-way (truncated, not a tar, damaged); the samples before it stand."""

    def __init__(self, url: str, err: BaseException) -> None:
        super().__init__(f"{type(err).__name__}: {err}")
        self.url = url


def _iter_one(url: str, wds) -> Iterator[dict]:
    if wds is not None:
        # Every rank indexes all shards (the index is small); the trainer shards the work itself, so webdataset's
        # node splitter, which refuses multi-rank runs by default, is replaced by the identity.
        yield from wds.WebDataset([url], shardshuffle=False, nodesplitter=lambda src: src, empty_check=False)
    else:
        yield from _iter_tarfile(url)


def iter_samples(urls: list[str], *, use_webdataset: bool = True,
                 errors: list[tuple[str, str]] | None = None) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", "<ext>": bytes, ...}`` of ``urls`` in order, read sequentially.

    A shard that is truncated or not a tar at all keeps the samples read before the damage; with ``errors`` given,
    ``(shard, reason)`` is appended there and reading goes on with the next shard, else ``ShardReadError``."""
    try:
        import webdataset as wds
    except ImportError:
        wds = None
    if not use_webdataset:
        wds = None
    for url in urls:
        try:
            # Samples are grouped by key and yielded when the next key starts, so one cut short by the damage is
            # never yielded; every sample before it is.
            yield from _iter_one(url, wds)
        except Exception as err:  # noqa: BLE001 - tarfile/webdataset raise many types for damaged archives
            if errors is None:
                raise ShardReadError(url, err) from err
            errors.append((url, f"{type(err).__name__}: {str(err)[:120]}"))


def _decode_caption(raw) -> str:
    if not isinstance(raw, bytes):
        return str(raw)
    return decode_text(raw)


def _captions(sample: dict) -> list[str]:
    """Caption lines of a sample; raises ``TextDecodeError`` when the caption isn't UTF-8/UTF-16 text."""
    for k in CAPTION_KEYS:
        if k in sample:
            text = _decode_caption(sample[k])
            if k == "json":
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError:
                    return []
                val = obj.get("caption", obj.get("text", "")) if isinstance(obj, dict) else ""
                caps = val if isinstance(val, list) else str(val).splitlines()
                return [str(c).strip() for c in caps if str(c).strip()]
            return [line.strip() for line in text.splitlines() if line.strip()]
    return []


@dataclass
class ShardDataset(CaptionedDataset):
    """A :class:`CaptionedDataset` whose images live in tar shards: ``members[i] = (shard, member name)``."""

    members: list[tuple[str, str]] = field(default_factory=list)
    _tars: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict, repr=False)  # shard -> members

    def _read_member(self, url: str, name: str) -> bytes:
        # The member table is read once per shard in stream mode, tolerating damage after the last good member,
        # so the samples a truncated shard kept stay readable (random-access tarfile refuses the whole file).
        index = self._tars.get(url)
        if index is None:
            index = {}
            try:
                with tarfile.open(url, mode="r|*") as tar:
                    for member in tar:
                        if member.isfile():
                            index[member.name] = (member.offset_data, member.size)
            except Exception:  # noqa: BLE001 - damage: keep the members listed before it
                pass
            self._tars[url] = index
        if name not in index:
            raise KeyError(name)
        offset, size = index[name]
        with open(url, "rb") as fh:
            magic = fh.read(6)
            if not (magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00"):
                fh.seek(offset)
                data = fh.read(size)
                if len(data) == size:
                    return data
                raise EOFError("unexpected end of data")
        with tarfile.open(url, mode="r|*") as tar:  # compressed: offsets are in the decompressed stream
            for member in tar:
                if member.name == name:
                    return tar.extractfile(member).read()
        raise KeyError(name)

    def load_image(self, i: int) -> torch.Tensor:
        url, name = self.members[i]
        try:
            data = self._read_member(url, name)
        except (OSError, KeyError, EOFError, tarfile.TarError, AttributeError) as err:
            raise LitError(f"could not read '{name}' from '{url}': {err}", input_name="shards",
                           fix="check that the shard is a complete tar file.") from None
        try:
            return read_image(io.BytesIO(data))
        except LitError:
            raise LitError(f"could not read image '{name}' in '{url}'.", input_name="shards",
                           fix="remove or replace the damaged sample.") from None

    def subset(self, indices: list[int]) -> ShardDataset:
        base = super().subset(indices)
        out = ShardDataset(base.samples, root=self.root, source=self.source, skipped=base.skipped,
                           members=[self.members[i] for i in indices])
        out._hashes = base._hashes
        out._tars = self._tars
        return out


def load_shards(specs: str | list[str], *, use_webdataset: bool = True) -> ShardDataset:
    """Index tar shards into a dataset (one sequential pass). Samples without an image or a caption are skipped
    and listed in the report; several images in one sample: the first image extension of ``IMAGE_KEYS`` wins."""
    urls = expand_shards(specs)
    samples: list[Sample] = []
    members: list[tuple[str, str]] = []
    hashes: dict[int, str] = {}
    skipped: list[tuple[str, str]] = []
    shard_errors: list[tuple[str, str]] = []
    for raw in iter_samples(urls, use_webdataset=use_webdataset, errors=shard_errors):
        key, url = raw["__key__"], raw["__url__"]
        name = f"{os.path.basename(url)}:{key}"
        ext = next((k for k in IMAGE_KEYS if k in raw), None)
        try:
            caps = _captions(raw)
        except TextDecodeError as err:
            skipped.append((name, f"caption is not text we can decode ({err}); {ENCODING_FIX}"))
            continue
        if ext is None:
            skipped.append((name, "no image"))
            continue
        if not caps:
            skipped.append((name, "no caption"))
            continue
        hashes[len(samples)] = hashlib.sha256(raw[ext]).hexdigest()  # same key as the file's bytes on disk
        samples.append(Sample(key=name, captions=caps))
        members.append((url, f"{key}.{ext}"))
    for url, why in shard_errors:
        skipped.append((os.path.basename(url), f"shard unreadable from here on, samples before it kept ({why})"))
    root = os.path.dirname(os.path.abspath(urls[0]))
    ds = ShardDataset(samples, root=root, source="tar shards", skipped=skipped, members=members)
    ds._hashes = hashes
    if not samples:
        if shard_errors and len(shard_errors) == len(urls):
            raise LitError(f"none of the {len(urls)} tar shard(s) could be read (truncated, damaged or not tar "
                           f"files).\n{ds.report()}", input_name="shards",
                           fix="check that the files are complete .tar archives (tar -tf <file>).")
        raise LitError(f"the {len(urls)} tar shard(s) hold no captioned image.\n{ds.report()}", input_name="shards",
                       fix="each sample needs an image (key.jpg/png/...) and a caption (key.txt) with the same key.")
    return ds
