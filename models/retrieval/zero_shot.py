"""Zero-shot classification, scoring and ranking with any dual encoder that has ``encode_image``,
``encode_text`` and ``logit_scale`` (a :class:`LitModel`, or a pretrained CLIP wrapped the same way)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..common.errors import LitError

DEFAULT_TEMPLATES = ("{}",)


def parse_lines(text: str | Sequence[str]) -> list[str]:
    """Non-empty stripped lines of a multiline widget value (or a list)."""
    items = text.splitlines() if isinstance(text, str) else list(text)
    return [str(t).strip() for t in items if str(t).strip()]


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images) or images.dim() not in (3, 4) or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise LitError(f"expected an IMAGE batch [B,H,W,C], got {shape}.", input_name="image",
                       fix="connect an IMAGE output.")
    return images if images.dim() == 4 else images.unsqueeze(0)


@torch.no_grad()
def label_embeddings(model, labels: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
    """One normalised embedding per label: the renormalised mean of its normalised template prompts
    (CLIP's prompt ensembling)."""
    labels = parse_lines(labels)
    if not labels:
        raise LitError("no labels given.", input_name="labels", fix="write one label per line.")
    templates = parse_lines(templates) if templates else list(DEFAULT_TEMPLATES)
    if not templates:
        templates = list(DEFAULT_TEMPLATES)
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise LitError(f"prompt template '{bad[0]}' has no '{{}}' where the label goes.", input_name="templates",
                       fix="write templates like 'a photo of a {}.', one per line.")
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    emb = F.normalize(model.encode_text(prompts).float(), dim=-1).view(len(labels), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def _image_embeddings(model, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    images = _check_images(images)
    with torch.no_grad():
        outs = [F.normalize(model.encode_image(images[i:i + batch_size]).float(), dim=-1)
                for i in range(0, images.shape[0], batch_size)]
    return torch.cat(outs)


def classify(model, images: torch.Tensor, labels: Sequence[str] | str,
             templates: Sequence[str] | str | None = None) -> torch.Tensor:
    """Probabilities ``[B, L]`` over ``labels`` (softmax of logit_scale * cosine; rows sum to 1)."""
    lab = label_embeddings(model, labels, templates)
    img = _image_embeddings(model, images)
    logits = float(model.logit_scale.detach()) * img @ lab.to(img.device).t()
    return logits.softmax(-1)


def score(model, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
    """Cosine similarity matrix ``[B, P]`` between images and prompts (in -1..1)."""
    prompts = parse_lines(prompts)
    if not prompts:
        raise LitError("no prompts given.", input_name="prompts", fix="write one prompt per line.")
    img = _image_embeddings(model, images)
    with torch.no_grad():
        txt = F.normalize(model.encode_text(prompts).float(), dim=-1)
    return img @ txt.to(img.device).t()


def rank(model, images: torch.Tensor, prompt: str, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (best first) and cosine scores of the ``top_k`` images of the batch most similar to ``prompt``."""
    if not str(prompt).strip():
        raise LitError("the prompt is empty.", input_name="prompt", fix="describe the images to keep.")
    if int(top_k) < 1:
        raise LitError(f"top_k must be at least 1, got {top_k}.", input_name="top_k", fix="keep at least 1 image.")
    sims = score(model, images, [str(prompt).strip()])[:, 0]
    k = min(int(top_k), sims.shape[0])
    vals, idx = sims.topk(k)
    return idx.cpu(), vals.cpu()
