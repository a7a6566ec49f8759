"""Zero-shot classification, scoring and ranking with any dual encoder that has ``encode_image``,
``encode_text`` and ``logit_scale`` (a :class:`LitModel`, or a pretrained CLIP wrapped the same way)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..common.errors import LitError
from ..common.text import split_prompts
from ..common.validate import check_finite, check_image_batch
from .spec import ZERO_SHOT_TEMPLATES

DEFAULT_TEMPLATES = ZERO_SHOT_TEMPLATES


def parse_lines(text: str | Sequence[str]) -> list[str]:
    """Prompts/labels from a widget or a command line (one per line or ``;``-separated; quote-aware)."""
    return split_prompts(text)


def parse_templates(templates: str | Sequence[str] | None) -> list[str]:
    """Templates (one per line or ``;``-separated), each with a ``{}`` where the label goes; None/empty gives the
    spec's defaults."""
    items = split_prompts(templates) if templates else []
    if not items:
        return list(ZERO_SHOT_TEMPLATES)
    bad = [t for t in items if "{}" not in t]
    if bad:
        raise LitError(f"prompt template '{bad[0]}' has no '{{}}' where the label goes.", input_name="templates",
                       fix="write templates like 'a photo of a {}.', one per line.")
    return items


def _checked(emb: torch.Tensor, input_name: str, what: str) -> torch.Tensor:
    return check_finite(emb, input_name=input_name, what=what,
                        fix="the model gives NaN/inf embeddings: reload the adapter/encoders (their weights may be "
                            "damaged) or retrain it.")


@torch.no_grad()
def text_embeddings(model, prompts: Sequence[str]) -> torch.Tensor:
    """Normalised float32 ``[N, D]`` embeddings of prompts, refusing non-finite output."""
    emb = F.normalize(model.encode_text(list(prompts)).float(), dim=-1)
    return _checked(emb, "lit_model", "text embedding values")


@torch.no_grad()
def label_embeddings(model, labels: Sequence[str] | str, templates: Sequence[str] | str | None = None) -> torch.Tensor:
    """One normalised embedding per label: the renormalised mean of its normalised template prompts
    (CLIP's prompt ensembling)."""
    labels = split_prompts(labels)
    if not labels:
        raise LitError("no labels given.", input_name="labels", fix="write one label per line.")
    templates = parse_templates(templates)
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    emb = text_embeddings(model, prompts).view(len(labels), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor, batch_size: int = 16, input_name: str = "image") -> torch.Tensor:
    """Normalised float32 ``[B, D]`` image embeddings, in batches; an empty or non-finite batch is refused."""
    images = check_image_batch(images, input_name=input_name)
    outs = [F.normalize(model.encode_image(images[i:i + batch_size]).float(), dim=-1)
            for i in range(0, images.shape[0], batch_size)]
    return _checked(torch.cat(outs), "lit_model", "image embedding values")


_image_embeddings = image_embeddings  # older name


def probabilities(model, img: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
    """Softmax over labels of ``logit_scale * cosine`` for precomputed normalised embeddings."""
    logits = float(model.logit_scale.detach()) * img @ lab.to(img.device).t()
    return logits.softmax(-1)


def classify(model, images: torch.Tensor, labels: Sequence[str] | str,
             templates: Sequence[str] | str | None = None) -> torch.Tensor:
    """Probabilities ``[B, L]`` over ``labels`` (softmax of logit_scale * cosine; rows sum to 1)."""
    lab = label_embeddings(model, labels, templates)
    return probabilities(model, image_embeddings(model, images), lab)


def score(model, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
    """Cosine similarity matrix ``[B, P]`` between images and prompts (in -1..1)."""
    prompts = split_prompts(prompts)
    if not prompts:
        raise LitError("no prompts given.", input_name="prompts", fix="write one prompt per line.")
    img = image_embeddings(model, images)
    return img @ text_embeddings(model, prompts).to(img.device).t()


def rank(model, images: torch.Tensor, prompt: str, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (best first) and cosine scores of the ``top_k`` images of the batch most similar to ``prompt``."""
    if not str(prompt).strip():
        raise LitError("the prompt is empty.", input_name="prompt", fix="describe the images to keep.")
    if int(top_k) < 1:
        raise LitError(f"top_k must be at least 1, got {top_k}.", input_name="top_k", fix="keep at least 1 image.")
    img = image_embeddings(model, images)
    sims = (img @ text_embeddings(model, [str(prompt).strip()]).to(img.device).t())[:, 0]
    k = min(int(top_k), sims.shape[0])
    vals, idx = sims.topk(k)
    return idx.cpu(), vals.cpu()
