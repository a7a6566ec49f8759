"""Retrieval and zero-shot metrics on L2-normalised embeddings."""

from __future__ import annotations

import torch


def _unique_texts(captions: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """Unique caption strings and the [n_images, n_texts] relevance matrix (image i has caption j)."""
    texts: list[str] = []
    where: dict[str, int] = {}
    for caps in captions:
        for c in caps:
            if c not in where:
                where[c] = len(texts)
                texts.append(c)
    rel = torch.zeros(len(captions), len(texts), dtype=torch.bool)
    for i, caps in enumerate(captions):
        for c in caps:
            rel[i, where[c]] = True
    return texts, rel


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, relevant: torch.Tensor,
                ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways. ``relevant[i, j]`` says text j describes image i (several per image allowed; an
    identical caption shared by several images makes each of them a right answer for it)."""
    sims = image_emb.float() @ text_emb.float().t()
    rel = relevant.to(sims.device)
    out: dict[str, float] = {}
    for k in ks:
        kt = min(k, sims.shape[1])
        top_t = sims.topk(kt, dim=1).indices  # image -> text
        out[f"i2t_r@{k}"] = float(rel.gather(1, top_t).any(1).float().mean())
        ki = min(k, sims.shape[0])
        top_i = sims.t().topk(ki, dim=1).indices  # text -> image
        out[f"t2i_r@{k}"] = float(rel.t().gather(1, top_i).any(1).float().mean())
    return out


def zero_shot_accuracy(image_emb: torch.Tensor, label_emb: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of nearest-label classification; ``targets`` are label indices."""
    pred = (image_emb.float() @ label_emb.float().t()).argmax(1)
    return float((pred.cpu() == targets.cpu()).float().mean())


def evaluate(image_emb: torch.Tensor, captions: list[list[str]], encode_text, *, ks: tuple[int, ...] = (1, 5),
             class_names: list[str] | None = None) -> dict[str, float]:
    """Recall@k both ways for images with their captions, plus zero-shot accuracy when ``class_names`` is given
    (then each image's single caption is its class). ``encode_text(list[str]) -> [N, D]`` normalised."""
    texts, rel = _unique_texts(captions)
    text_emb = encode_text(texts).to(image_emb.device)
    out = recall_at_k(image_emb, text_emb, rel, ks)
    out["mean_r@1"] = 0.5 * (out.get("i2t_r@1", 0.0) + out.get("t2i_r@1", 0.0))
    if class_names:
        idx = {c: i for i, c in enumerate(class_names)}
        targets = torch.tensor([idx[c[0]] for c in captions])
        label_emb = text_emb[[texts.index(c) for c in class_names]] if set(class_names) <= set(texts) else \
            encode_text(class_names).to(image_emb.device)
        out["zero_shot_acc"] = zero_shot_accuracy(image_emb, label_emb, targets)
        out["chance"] = 1.0 / len(class_names)
    return out


@torch.no_grad()
def pair_loss(loss_fn, image_emb: torch.Tensor, captions: list[list[str]], encode_text) -> float:
    """The training loss over a whole held-out set: every image against every distinct caption, each image's own
    captions its positives. Smooth in the weights, so it is a low-noise criterion for keeping the best state."""
    texts, rel = _unique_texts(captions)
    text_emb = encode_text(texts).to(image_emb.device).float()
    # Each text once as a "row": its image is the (first) image it describes.
    owner = rel.float().argmax(0)
    img = image_emb.float()[owner.to(image_emb.device)]
    pos = rel[owner].to(image_emb.device)  # text j's image vs all texts: positives where that image has the text
    return float(loss_fn(img, text_emb, positives=pos))
