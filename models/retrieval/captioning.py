"""Caption by retrieval: for each image, the candidate caption its embedding is closest to.

Candidates are the user's captions and templates filled with the image's own tags: ``a photo of {tags}`` becomes
``a photo of dog``, ``a photo of dog, grass``, ... (its best 1..k tags), and every filling competes, so the
caption names as many tags as actually raise the match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..common.errors import LitError
from ..common.text import split_prompts
from . import spec
from .zero_shot import text_embeddings


def split_candidates(text: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """(fixed captions, templates with ``{tags}``)."""
    items = split_prompts(text)
    return [c for c in items if "{tags}" not in c], [c for c in items if "{tags}" in c]


def fill_templates(templates: Sequence[str], tags: Sequence[str], separator: str = spec.TAG_SEPARATOR) -> list[str]:
    """Every template filled with the best 1..len(tags) tags (nothing when there are no tags)."""
    return [t.replace("{tags}", separator.join(tags[:n])) for t in templates for n in range(1, len(tags) + 1)]


@torch.no_grad()
def caption_images(model, img: torch.Tensor, candidates: str | Sequence[str],
                   tags: Sequence[Sequence[str]] | None = None, *, batch_size: int = 256) -> list[tuple[str, float]]:
    """The best caption and its cosine for each normalised image embedding in ``img`` ``[B, D]``.

    Fixed candidates are encoded once for the whole batch; tag-filled ones per image (each distinct text once).
    """
    fixed, templates = split_candidates(candidates)
    if not fixed and not templates:
        raise LitError("no candidate captions.", input_name="candidates",
                       fix="write captions one per line, or a template such as 'a photo of {tags}'.")
    if templates and tags is None:
        raise LitError("a '{tags}' template needs tags.", input_name="tags",
                       fix="connect the tags output of LiT Tag Images (or use captions without '{tags}').")
    per_image = [list(fixed) + (fill_templates(templates, list(tags[i])) if templates else [])
                 for i in range(img.shape[0])]
    if any(not c for c in per_image):
        raise LitError("an image got no candidate caption (no tags and no fixed captions).", input_name="candidates",
                       fix="add a fixed caption as a fallback, or lower the tag threshold.")
    texts = sorted({c for cands in per_image for c in cands})
    pos = {t: i for i, t in enumerate(texts)}
    emb = torch.cat([text_embeddings(model, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    sims = img.float() @ emb.to(img.device).t()
    out = []
    for i, cands in enumerate(per_image):
        cols = torch.tensor([pos[c] for c in cands], device=sims.device)
        s = sims[i, cols]
        j = int(s.argmax())
        out.append((cands[j], float(s[j])))
    return out
