"""Search index speed on synthetic embeddings, and tag quality on real held-out photos.

1. Index build (normalise + fp16 + atomic safetensors write), load, and query latency (one fp16 matrix-vector
   product + top-k) at 1k / 10k / 100k synthetic 1280-d embeddings (EfficientNet-Lite0's width), beside the same
   query on a float32 matrix.
2. Tagging on ``../shared/data/flickr8k-train800`` (800 real Flickr8k photos with 5 human captions each): a seeded
   split, a LiT ``head`` adapter trained on the training part with the pack's trainer, then tags for the held-out
   images against keywords read from their captions (a tag is true when any of the 5 captions names it).
   Compared in the same run: the pack's tagger (background-calibrated, threshold 0.5, top-3) and the zero-shot
   classifier (its best label per image, the other way to get a label out of the same model).

    python bench/search.py [--quick] [--images 800] [--size 224] [--steps 200]

``--quick`` runs the whole index sweep and the tag comparison on 240 photos. Embeddings are cached in
~/.cache/comfyui_lit/flickr-embeddings (never in the repository).
Ends with ``tag_micro_f1: <value> (<ratio>x vs zero-shot classifier)``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("LIT_SHARED_DIR") or os.path.normpath(os.path.join(ROOT, "..", "shared"))

# Tag -> the caption words that mean it (plurals and near-synonyms), for ground truth from human captions.
KEYWORDS = {
    "dog": ["dog", "dogs", "puppy"], "man": ["man", "men"], "woman": ["woman", "women"],
    "child": ["child", "children", "kid", "kids", "boy", "girl", "boys", "girls"],
    "water": ["water", "lake", "river", "pool", "ocean", "sea"], "grass": ["grass", "grassy", "field"],
    "snow": ["snow", "snowy"], "beach": ["beach", "sand", "sandy"], "ball": ["ball"],
    "bicycle": ["bike", "bicycle", "biker", "cyclist"], "street": ["street", "road", "sidewalk"],
    "rock": ["rock", "rocks", "rocky", "cliff"], "mountain": ["mountain", "mountains", "hill"],
    "crowd": ["crowd", "people"],
}


def keyword_truth(captions: list[str]) -> set[str]:
    words = set(re.findall(r"[a-z]+", " ".join(captions).lower()))
    return {tag for tag, forms in KEYWORDS.items() if words & set(forms)}


def prf(pred: list[set[str]], truth: list[set[str]]) -> tuple[float, float, float]:
    tp = sum(len(p & t) for p, t in zip(pred, truth, strict=True))
    n_pred, n_true = sum(map(len, pred)), sum(map(len, truth))
    p, r = tp / max(n_pred, 1), tp / max(n_true, 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def mean_auc(scores, truth: list[set[str]], vocab: list[str]) -> float:
    import numpy as np

    aucs = []
    for j, tag in enumerate(vocab):
        y = np.array([tag in t for t in truth])
        if 0 < y.sum() < len(y):
            s = scores[:, j]
            pos, neg = s[y], s[~y]
            aucs.append(float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()))
    return float(np.mean(aucs)) if aucs else float("nan")


def flickr_split(n: int, seed: int = 0, held_out: float = 0.25):
    import torch

    from comfyui_lit.models.data.dataset import load_folder

    ds = load_folder(os.path.join(SHARED, "data", "flickr8k-train800"))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()[:n]
    n_train = int(round(n * (1 - held_out)))
    return ds.subset(sorted(order[:n_train])), ds.subset(sorted(order[n_train:]))


def sized_tower(size: int):
    from comfyui_lit.models.towers.image_tower import ImageTower, load_image_tower

    base = load_image_tower()
    if size == base.input_size:
        return base
    # The same locked weights at a smaller input: a fully convolutional tower with global pooling takes any size.
    return ImageTower(base.backbone, embed_dim=base.embed_dim, input_size=size, mean=base.mean.flatten().tolist(),
                      std=base.std.flatten().tolist(), name=f"{base.name}@{size}", kind=base.kind, crop=base.crop)


def bench_index(sizes: list[int], dim: int, queries: int) -> list[tuple]:
    import torch
    import torch.nn.functional as F
    from safetensors import safe_open

    from comfyui_lit.models.common.atomic import save_tensors_atomic

    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        raw = torch.randn(n, dim, generator=g)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.safetensors")
            t0 = time.perf_counter()
            emb = F.normalize(raw, dim=-1).to(torch.float16).contiguous()
            save_tensors_atomic({"embeddings": emb}, path)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            with safe_open(path, framework="pt") as fh:
                emb = fh.get_tensor("embeddings")
            load = time.perf_counter() - t0
        f32 = emb.float()
        qs = F.normalize(torch.randn(queries, dim, generator=g), dim=-1)
        lat16, lat32 = [], []
        for q in qs:
            t0 = time.perf_counter()
            (emb @ q.half()).float().topk(16)
            lat16.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (f32 @ q).topk(16)
            lat32.append(time.perf_counter() - t0)
        agree = len(set((emb @ qs[0].half()).float().topk(16).indices.tolist())
                    & set((f32 @ qs[0]).topk(16).indices.tolist())) / 16
        rows.append((n, build, load, statistics.median(lat16) * 1e3, max(lat16) * 1e3,
                     statistics.median(lat32) * 1e3, emb.numel() * 2 / 2**20, agree))
    return rows


def bench_tags(n: int, size: int, steps: int, threshold: float, top_k: int) -> dict:
    import torch

    from comfyui_lit.models.data.embedding_cache import EmbeddingCache
    from comfyui_lit.models.retrieval.tagging import Tagger
    from comfyui_lit.models.retrieval.zero_shot import label_embeddings, probabilities
    from comfyui_lit.models.towers.text_tower import load_text_tower
    from comfyui_lit.models.tuning.lit_model import LitModel
    from comfyui_lit.models.tuning.trainer import TrainConfig, train_locked

    cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "comfyui_lit", "flickr-embeddings")
    train, test = flickr_split(n)
    tower = sized_tower(size)
    model = LitModel(tower, load_text_tower(), mode="head")
    t0 = time.perf_counter()
    train_locked(model, train, TrainConfig(steps=steps, batch_size=64, lr=3e-3, val_fraction=0.0),
                 cache_dir=cache_dir)
    t_train = time.perf_counter() - t0
    feats, test = EmbeddingCache(tower, cache_dir).embed_dataset(test)
    img = model.normalize_image_features(feats)
    truth = [keyword_truth(c) for c in test.captions]
    vocab = list(KEYWORDS)
    out = {"train_images": len(train), "held_out": len(test), "train_s": t_train,
           "positives": sum(map(len, truth)), "base_rate": sum(map(len, truth)) / (len(test) * len(vocab))}
    t0 = time.perf_counter()
    with torch.no_grad():
        for cal in ("background", "none"):
            tagger = Tagger(model, vocab, calibration=cal)
            thr = threshold if cal != "none" else 0.3
            res = tagger.tag(img, threshold=thr, top_k=top_k)
            pred = [{t for t, _ in row} for row in res.tags]
            out[f"tagger_{cal}"] = (*prf(pred, truth), mean_auc(res.probs.numpy(), truth, vocab),
                                    sum(map(len, pred)) / len(pred), thr)
        probs = probabilities(model, img, label_embeddings(model, vocab))
        best = [{vocab[int(i)]} for i in probs.argmax(1)]
        out["zero_shot"] = (*prf(best, truth), mean_auc(probs.numpy(), truth, vocab), 1.0, None)
        freq = sorted(vocab, key=lambda t: -sum(t in s for s in truth))[:top_k]  # an oracle-ish prior
        out["prior"] = (*prf([set(freq)] * len(truth), truth), 0.5, float(top_k), None)
    out["tag_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="240 photos (minutes once their embeddings are cached)")
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--size", type=int, default=224, help="image tower input size")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args(argv)
    if args.quick:
        args.images = min(args.images, 240)
    from _package import import_package  # bench/ is on sys.path when run as a script; tests import this file

    import_package()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print("\n## Index: build, load, query (1280-d, top-16)")
    print("| images | build s | load s | query ms fp16 (median / max) | query ms fp32 | index MB | top-16 fp16=fp32 |")
    print("|---|---|---|---|---|---|---|")
    for n, build, load, med, worst, f32, mb, agree in bench_index([1000, 10000, 100000], 1280, args.queries):
        print(f"| {n:,} | {build:.3f} | {load:.3f} | {med:.1f} / {worst:.1f} | {f32:.1f} | {mb:.0f} | {agree:.2f} |")
    if not os.path.isdir(os.path.join(SHARED, "data", "flickr8k-train800")):
        print(f"\n{SHARED}/data/flickr8k-train800 is absent: no tag-quality run.")
        return 1
    r = bench_tags(args.images, args.size, args.steps, args.threshold, args.top_k)
    print(f"\n## Tags on held-out Flickr8k photos ({r['train_images']} train / {r['held_out']} held-out, "
          f"{args.size} px, head adapter {args.steps} steps in {r['train_s']:.0f} s; {len(KEYWORDS)} keyword tags, "
          f"{r['positives']} true tags, base rate {r['base_rate']:.3f})")
    print("| method | precision | recall | F1 | mean per-tag AUC | tags/image |")
    print("|---|---|---|---|---|---|")
    names = {"tagger_background": f"LiT Tag Images (background-calibrated, p>={args.threshold}, top-{args.top_k})",
             "tagger_none": f"LiT Tag Images (raw cosine>=0.3, top-{args.top_k})",
             "zero_shot": "zero-shot classifier (best label)",
             "prior": f"prior: the {args.top_k} most frequent tags on every image (uses the truth)"}
    for key, name in names.items():
        p, rec, f1, auc, per, _ = r[key]
        print(f"| {name} | {p:.3f} | {rec:.3f} | {f1:.3f} | {auc:.3f} | {per:.2f} |")
    f1, base = r["tagger_background"][2], r["zero_shot"][2]
    print(f"tag_micro_f1: {f1:.3f} ({f1 / max(base, 1e-9):.2f}x vs zero-shot classifier)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
