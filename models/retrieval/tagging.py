"""Multi-label tagging from the user's own vocabulary, with calibrated probabilities, and caption files.

Contrastive (softmax) models give cosines whose absolute level means little: a threshold of 0.25 keeps every
tag on one image and none on another. We therefore compare each tag with a set of *background* prompts that
name nothing in particular: ``p(tag | image) = sigmoid(s * cos(image, tag) - logmeanexp_b(s * cos(image, b)))``
with ``s`` the model's logit scale, so 0.5 means "describes this image better than a generic 'a photo.'". A
sigmoid-loss adapter (SigLIP-style) already learns a per-pair probability, ``sigmoid(s * cos + b)``, which we
use as is.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..common.errors import LitError
from ..common.text import split_prompts
from . import spec
from .zero_shot import label_embeddings, text_embeddings


def parse_vocabulary(text: str | Sequence[str], *, input_name: str = "vocabulary") -> list[str]:
    """Tags one per line (or ``;``-separated); ``#`` comment lines are ignored, duplicates dropped, order kept."""
    lines = [t for t in split_prompts(text) if not t.startswith("#")]
    seen: set[str] = set()
    out = [t for t in lines if not (t.lower() in seen or seen.add(t.lower()))]
    if not out:
        raise LitError("the tag vocabulary is empty.", input_name=input_name,
                       fix="write the tags you want, one per line (or choose a vocabulary file in models/lit/).")
    return out


def read_vocabulary_file(path: str, *, input_name: str = "vocabulary_file") -> list[str]:
    """A vocabulary ``.txt`` (UTF-8, one tag per line)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8 << 20)
    except OSError as err:
        raise LitError(f"cannot read the vocabulary file '{path}': {err.strerror or err}.", input_name=input_name,
                       fix="choose an existing .txt file with one tag per line.") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LitError(f"the vocabulary file '{path}' is not UTF-8 text.", input_name=input_name,
                       fix="save it as UTF-8 (one tag per line).") from None
    return parse_vocabulary(text, input_name=input_name)


def resolve_calibration(model, calibration: str) -> str:
    if calibration not in spec.CALIBRATIONS:
        raise LitError(f"unknown calibration '{calibration}'.", input_name="calibration",
                       fix=f"use one of {', '.join(spec.CALIBRATIONS)}.")
    if calibration == "auto":
        return "sigmoid" if getattr(model, "loss_name", "softmax") == "sigmoid" else "background"
    return calibration


@dataclass
class TagResult:
    vocabulary: list[str]
    probs: torch.Tensor  # [B, T] calibrated probabilities (cosines for calibration "none")
    tags: list[list[tuple[str, float]]]  # per image: the kept tags, best first
    calibration: str

    def strings(self, separator: str = spec.TAG_SEPARATOR, prefix: str = "") -> list[str]:
        """One comma-separated tag line per image (the caption format LoRA trainers read)."""
        head = [p for p in split_prompts(prefix.replace(",", ";"))] if prefix else []
        return [separator.join(head + [t for t, _ in row]) for row in self.tags]

    def as_json(self) -> dict:
        return {"vocabulary": self.vocabulary, "calibration": self.calibration,
                "images": [[{"tag": t, "p": _finite(p)} for t, p in row] for row in self.tags]}


def _finite(x: float) -> float:
    # JSON.parse in the browser throws on bare NaN/Infinity; every number we emit is checked finite upstream,
    # and this keeps that promise even for a value the checks could not see.
    return round(float(x), 6) if math.isfinite(float(x)) else 0.0


class Tagger:
    """Embeds a vocabulary (and the background prompts) once; tags any number of image embeddings."""

    def __init__(self, model, vocabulary: Sequence[str] | str, *, templates: Sequence[str] | str | None = None,
                 calibration: str = "auto", background: Sequence[str] | None = None) -> None:
        self.vocabulary = parse_vocabulary(vocabulary) if isinstance(vocabulary, str) else list(vocabulary)
        if not self.vocabulary:
            raise LitError("the tag vocabulary is empty.", input_name="vocabulary", fix="write one tag per line.")
        self.calibration = resolve_calibration(model, calibration)
        self.tag_emb = label_embeddings(model, self.vocabulary, templates)
        self.bg_emb = text_embeddings(model, list(background or spec.BACKGROUND_PROMPTS))
        self.scale = float(model.logit_scale.detach())
        bias = getattr(model, "logit_bias", None)
        self.bias = float(bias.detach()) if torch.is_tensor(bias) else 0.0

    def probabilities(self, img: torch.Tensor) -> torch.Tensor:
        """Calibrated ``[B, T]`` from normalised image embeddings ``[B, D]``."""
        cos = img.float() @ self.tag_emb.to(img.device).t()
        if self.calibration == "none":
            return cos
        if self.calibration == "sigmoid":
            return torch.sigmoid(self.scale * cos + self.bias)
        bg = self.scale * (img.float() @ self.bg_emb.to(img.device).t())
        ref = torch.logsumexp(bg, dim=-1, keepdim=True) - math.log(bg.shape[-1])
        return torch.sigmoid(self.scale * cos - ref)

    def tag(self, img: torch.Tensor, *, threshold: float = spec.TAG_THRESHOLD.default,
            top_k: int = int(spec.TAG_TOP_K.default), min_tags: int = 0) -> TagResult:
        if int(top_k) < 1:
            raise LitError(f"top_k must be at least 1, got {top_k}.", input_name="top_k", fix="set it to 1 or more.")
        if not math.isfinite(float(threshold)):
            raise LitError("the threshold is not a number.", input_name="threshold", fix="set it between 0 and 1.")
        probs = self.probabilities(img).cpu()
        k = min(int(top_k), probs.shape[1])
        vals, idx = probs.topk(k, dim=1)
        rows = []
        for v_row, i_row in zip(vals.tolist(), idx.tolist(), strict=True):
            rows.append([(self.vocabulary[i], v) for n, (v, i) in enumerate(zip(v_row, i_row, strict=True))
                         if v >= threshold or n < int(min_tags)])
        return TagResult(self.vocabulary, probs, rows, self.calibration)


# -- caption files next to images --------------------------------------------------------------------------------

def caption_path(image_path: str, extension: str = ".txt") -> str:
    return os.path.splitext(image_path)[0] + extension


def write_text_file(path: str, text: str, *, overwrite: bool = False) -> bool:
    """Write ``text`` under a temporary name, fsync, then publish it at ``path``; False when ``path`` exists and
    ``overwrite`` is off. Without overwrite the publish is a hard link, which fails if the name appeared
    meanwhile, so two writers never clobber each other (the same pattern as ``models/common/atomic.py``)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not overwrite and os.path.lexists(path):
        return False
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".txt", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: fall back to a checked rename
                if os.path.lexists(path):
                    return False
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def write_caption_files(image_paths: Sequence[str], texts: Sequence[str], *, overwrite: bool = False,
                        extension: str = ".txt") -> tuple[list[str], list[str]]:
    """Same-name caption files beside the images: (written, kept-because-they-existed)."""
    written, kept = [], []
    for path, text in zip(image_paths, texts, strict=True):
        target = caption_path(path, extension)
        try:
            ok = write_text_file(target, text, overwrite=overwrite)
        except OSError as err:
            raise LitError(f"cannot write '{target}': {err.strerror or err}.", input_name="folder",
                           fix="check that the folder is writable (or tag into the graph only).") from None
        (written if ok else kept).append(target)
    return written, kept
