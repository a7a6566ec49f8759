"""Locked-tuning quality on real held-out photos, side by side with the closed-form maps a user could fit instead.

Data: ``../shared/data/flickr8k-train800/`` (800 real Flickr8k photos, 5 human captions each; research-use, read
in place, never copied). A fixed seeded split: 600 images to train on (the trainer holds out its own validation
share of those), 200 held out, never seen by any method. Towers: the embedded defaults (locked
EfficientNet-Lite0 + all-MiniLM-L6-v2). Baselines on the same frozen features, fitted on the same 600 images:

- ridge: centred ridge regression text features -> image embeddings (closed form);
- CCA: regularised canonical correlation, both sides projected to k dims (it moves the image side, which LiT may
  not; a strong bar).
Their hyper-parameters are picked on a validation share of the 600 training images, as the trainer's are.

Metrics on the 200 held-out images and their 1000 captions: i2t / t2i recall@1/5/10, zero-shot accuracy on
keyword classes built from the held-out captions (images whose five captions name exactly one of the keywords),
wall time and training pairs/s. Image embeddings are cached on disk outside the repo (``--cache``).

    nice -n 5 python bench/lit_quality.py [--quick] [--modes head,lora] [--losses softmax,sigmoid]

``--quick``: the default mode and loss plus the baselines. Last line:
``heldout_mean_R@5: <value> (<ratio>x vs CCA)`` for the default mode.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from _package import import_package as _import_package  # noqa: E402
from torchvision_cpu import import_torchvision_on_cpu_torch  # noqa: E402 - transformers' image utils need it

DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "flickr8k-train800"))
# keyword -> the words that name it in a caption
KEYWORDS = {"dog": ("dog", "dogs", "puppy"), "child": ("child", "children", "kid", "kids"), "water": ("water",),
            "snow": ("snow", "snowy"), "bicycle": ("bicycle", "bike", "bikes", "bicycles", "biker", "cyclist"),
            "ball": ("ball",), "rock": ("rock", "rocks", "rocky"), "grass": ("grass", "grassy"),
            "beach": ("beach",), "street": ("street", "road")}
PROMPT = "a photo of a {}."


def keyword_classes(captions: list[list[str]]) -> tuple[list[int], list[int], list[str]]:
    """(image index, class index) of the images whose captions name exactly one keyword, and the keywords used."""
    names = list(KEYWORDS)
    images, labels = [], []
    for i, caps in enumerate(captions):
        words = set(re.findall(r"[a-z]+", " ".join(caps).lower()))
        hit = [k for k in names if words & set(KEYWORDS[k])]
        if len(hit) == 1:
            images.append(i)
            labels.append(names.index(hit[0]))
    used = sorted(set(labels))
    return images, [used.index(lab) for lab in labels], [names[u] for u in used]


def recalls(img, txt, captions: list[list[str]]) -> dict[str, float]:
    from comfyui_lit.models.tuning.metrics import _unique_texts, recall_at_k

    texts, rel = _unique_texts(captions)
    return recall_at_k(img, txt, rel, ks=(1, 5, 10))


class Bench:
    def __init__(self, args) -> None:
        import torch

        from comfyui_lit.models.data.dataset import load_folder
        from comfyui_lit.models.data.embedding_cache import EmbeddingCache
        from comfyui_lit.models.towers.image_tower import load_image_tower
        from comfyui_lit.models.towers.text_tower import load_text_tower

        t0 = time.perf_counter()
        ds = load_folder(args.data)
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed)).tolist()
        self.train = ds.subset(sorted(order[:args.train]))
        self.test = ds.subset(sorted(order[args.train:]))
        self.image_tower, self.text_tower = load_image_tower(views=args.image_views), load_text_tower()
        self.cache_dir = args.cache
        cache = EmbeddingCache(self.image_tower, self.cache_dir)
        self.train_img, self.train = cache.embed_dataset(self.train)
        self.test_img, self.test = cache.embed_dataset(self.test)
        self.test_texts = sorted({c for cs in self.test.captions for c in cs})
        self.setup_s = time.perf_counter() - t0
        self.zs_images, self.zs_labels, self.zs_names = keyword_classes(self.test.captions)
        self.text_cache: dict[str, torch.Tensor] = {}

    def text_feats(self, texts: list[str]):
        """Frozen MiniLM features, each distinct text once (disk-cached, the cache the trainer uses too)."""
        import torch

        from comfyui_lit.models.tuning.prepare import cached_text_features

        todo = sorted(set(texts) - set(self.text_cache))
        if todo:
            self.text_cache.update(cached_text_features(self.text_tower, todo, self.cache_dir))
        return torch.stack([self.text_cache[t] for t in texts])

    def score(self, img, encode_text) -> dict[str, float]:
        """Held-out metrics for normalised image embeddings and a text encoder into the same space."""
        import torch

        from comfyui_lit.models.tuning.metrics import _unique_texts

        texts, _ = _unique_texts(self.test.captions)
        out = recalls(img, encode_text(texts), self.test.captions)
        labels = encode_text([PROMPT.format(k) for k in self.zs_names])
        pred = (img[self.zs_images] @ labels.t()).argmax(1)
        out["zero_shot"] = float((pred == torch.tensor(self.zs_labels)).float().mean())
        out["mean_r@5"] = 0.5 * (out["i2t_r@5"] + out["t2i_r@5"])
        return out


def _pairs(bench: Bench, ds, feats):
    import torch

    caps = [(c, i) for i, cs in enumerate(ds.captions) for c in cs]
    return bench.text_feats([c for c, _ in caps]), feats[torch.tensor([i for _, i in caps])]


def baselines(bench: Bench) -> dict[str, dict[str, float]]:
    """Ridge and CCA, hyper-parameters picked on a validation share of the training images, refitted on all."""
    import torch
    import torch.nn.functional as F

    from comfyui_lit.models.tuning.closed_form import cca_maps, ridge_map

    n = len(bench.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    fit_idx, val_idx = sorted(perm[n // 6:]), sorted(perm[:n // 6])
    fit_ds, val_ds = bench.train.subset(fit_idx), bench.train.subset(val_idx)

    def val_r5(make):
        x, y = _pairs(bench, fit_ds, bench.train_img[fit_idx])
        img_fn, txt_fn = make(x, y)
        val_caps = val_ds.captions
        from comfyui_lit.models.tuning.metrics import _unique_texts

        texts, _ = _unique_texts(val_caps)
        r = recalls(img_fn(bench.train_img[val_idx]), txt_fn(bench.text_feats(texts)), val_caps)
        return 0.5 * (r["i2t_r@5"] + r["t2i_r@5"])

    def ridge(alpha):
        def make(x, y):
            my = y.mean(0)
            w, b = ridge_map(x, y - my, alpha)
            return (lambda im: F.normalize(im - my, dim=-1)), (lambda t: F.normalize(t @ w + b, dim=-1))
        return make

    fitted: dict = {}

    def cca(k, reg):
        def make(x, y):
            key = (x.shape[0], reg)  # one decomposition per data and reg; the top-k columns are its prefix
            if key not in fitted:
                fitted[key] = cca_maps(x, y, 64, reg)
            wt, wi, mt, mi = fitted[key]
            wt, wi = wt[:, :k], wi[:, :k]
            return (lambda im: F.normalize((im - mi) @ wi, dim=-1)), (lambda t: F.normalize((t - mt) @ wt, dim=-1))
        return make

    out = {}
    for name, grid in (("ridge", [ridge(a) for a in (0.01, 0.1, 1.0, 10.0)]),
                       ("CCA", [cca(k, r) for k in (16, 32, 64) for r in (1e-1, 1.0)])):
        t0 = time.perf_counter()
        best = max(grid, key=val_r5)
        x, y = _pairs(bench, bench.train, bench.train_img)
        img_fn, txt_fn = best(x, y)
        res = bench.score(img_fn(bench.test_img), lambda texts, f=txt_fn: f(bench.text_feats(texts)))
        res["seconds"] = time.perf_counter() - t0
        out[name] = res
    return out


def train_mode(bench: Bench, mode: str, loss: str, steps: int | None) -> dict[str, float]:
    import torch

    from comfyui_lit.models.tuning.lit_model import LitModel
    from comfyui_lit.models.tuning.trainer import TrainConfig, train_locked

    t0 = time.perf_counter()
    model = LitModel(bench.image_tower, bench.text_tower, mode=mode, loss=loss, seed=0, text_layers=bench.text_layers)
    result = train_locked(model, bench.train, TrainConfig(steps=steps, seed=0), cache_dir=bench.cache_dir)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        img = model.normalize_image_features(bench.test_img)
        if mode == "head":  # frozen tower: the features the benchmark already holds
            res = bench.score(img, lambda t: model.project_text(bench.text_feats(t)))
        else:
            res = bench.score(img, lambda t: model.encode_text(t))
    res.update({"seconds": seconds, "pairs_s": result.pairs_per_second, "steps": result.steps_done,
                "best_step": result.best_step})
    from comfyui_lit.models.tuning.report import validation_table

    print(f"  {mode} + {loss}: {result.start}; {result.stopped or 'ran every step'}\n"
          + "\n".join("    " + line for line in validation_table(result).splitlines()), flush=True)
    return res


def _row(name: str, r: dict[str, float]) -> str:
    rec = "".join(f"{100 * r[k]:>6.1f}" for k in ("i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10"))
    extra = f"{r['pairs_s']:>10.0f}" if "pairs_s" in r else f"{'-':>10}"
    kept = f"{int(r['best_step']):>5}/{int(r['steps']):<5}" if "steps" in r else f"{'-':>11}"
    return f"{name:<18}{rec}{100 * r['mean_r@5']:>8.1f}{100 * r['zero_shot']:>7.1f}{r['seconds']:>8.1f}{extra}{kept}"


# Issue 20's targets: the default mode against CCA, and the wall time of a whole training run per mode.
GOAL_VS_CCA = 1.5
GOAL_SECONDS = {"head": 60.0, "lora": 600.0}


def main() -> None:
    import_torchvision_on_cpu_torch()
    _import_package()
    from comfyui_lit.models.towers import spec as tower_spec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--train", type=int, default=600, help="images to train on; the rest are held out")
    p.add_argument("--seed", type=int, default=0, help="the split's seed")
    p.add_argument("--quick", action="store_true", help="the default mode and loss plus the baselines")
    p.add_argument("--modes", default="head,lora")
    p.add_argument("--losses", default="softmax,sigmoid")
    p.add_argument("--steps", type=int, default=None, help="override every mode's default steps")
    p.add_argument("--text-layers", type=int, default=None, help="lora/full: the top layers trained (0: all)")
    p.add_argument("--image-views", default=tower_spec.DEFAULT_VIEWS, choices=list(tower_spec.VIEWS),
                   help="what the locked tower sees of each photo, for every method: " + tower_spec.VIEWS_TOOLTIP)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "comfyui_lit_quality"))
    args = p.parse_args()
    import torch

    from comfyui_lit.models.tuning import spec

    torch.manual_seed(0)
    bench = Bench(args)
    bench.text_layers = spec.default("text_layers") if args.text_layers is None else args.text_layers
    print(f"data: {len(bench.train)} train / {len(bench.test)} held-out images ({args.data}); "
          f"zero-shot: {len(bench.zs_images)} held-out images in {len(bench.zs_names)} keyword classes "
          f"({', '.join(bench.zs_names)}; chance {100 / len(bench.zs_names):.0f}%); setup {bench.setup_s:.0f}s; "
          f"image views: {args.image_views}")
    rows = {"untrained (random head)": None}
    base = baselines(bench)
    runs = [(spec.DEFAULT_MODE, spec.DEFAULT_LOSS)] if args.quick else [
        (m, lo) for m in args.modes.split(",") for lo in args.losses.split(",")]
    results = {}
    for mode, loss in runs:
        results[f"{mode} + {loss}"] = train_mode(bench, mode, loss, args.steps)
        print(f"  trained {mode} + {loss}: {results[f'{mode} + {loss}']['seconds']:.0f}s\n  "
              + _row(f"{mode} + {loss}", results[f"{mode} + {loss}"]), flush=True)
    from comfyui_lit.models.tuning.lit_model import LitModel

    untrained = LitModel(bench.image_tower, bench.text_tower, mode="head", seed=0)
    rows["untrained (random head)"] = {**bench.score(untrained.normalize_image_features(bench.test_img),
                                                     lambda t: untrained.project_text(bench.text_feats(t))),
                                       "seconds": 0.0}
    rows.update(base)
    rows.update(results)
    print(f"\nheld-out {len(bench.test)} images x 5 captions (recall in %)")
    print(f"{'method':<18}{'i2t@1':>6}{'@5':>6}{'@10':>6}{'t2i@1':>6}{'@5':>6}{'@10':>6}{'mR@5':>8}{'zs%':>7}"
          f"{'time s':>8}{'pairs/s':>10}{'kept/steps':>11}")
    for name, r in rows.items():
        print(_row(name, r))
    cca = base["CCA"]["mean_r@5"]
    for name, r in results.items():
        print(f"{name}: mean R@5 {r['mean_r@5'] / cca:.2f}x CCA, {r['mean_r@5'] / base['ridge']['mean_r@5']:.2f}x "
              f"ridge; zero-shot {100 * r['zero_shot']:.1f}% vs ridge {100 * base['ridge']['zero_shot']:.1f}%")
    name = f"{spec.DEFAULT_MODE} + {spec.DEFAULT_LOSS}"
    if name not in results:  # e.g. --modes lora: the line is for the first mode run, and says so
        name = next(iter(results))
        print(f"(the default {spec.DEFAULT_MODE} + {spec.DEFAULT_LOSS} was not run: the last line is {name})")
    default = results[name]["mean_r@5"]
    print_goals(name, results, base)
    print(f"heldout_mean_R@5: {default:.4f} ({default / cca:.2f}x vs CCA)")


def print_goals(default: str, results: dict, base: dict) -> None:
    """Issue 20's goals, each met or missed and by how much, so a miss is on the screen and not only in a ratio."""
    cca, ridge = base["CCA"], base["ridge"]
    d = results[default]
    want = GOAL_VS_CCA * cca["mean_r@5"]
    print("\ngoals (issue 20):")
    print(f"  {default} >= {GOAL_VS_CCA}x CCA mean R@5 ({100 * want:.1f}): {100 * d['mean_r@5']:.1f}, "
          + _verdict(d["mean_r@5"] - want, "points", 100))
    for name, r in results.items():
        print(f"  {name} >= ridge mean R@5 ({100 * ridge['mean_r@5']:.1f}): {100 * r['mean_r@5']:.1f}, "
              + _verdict(r["mean_r@5"] - ridge["mean_r@5"], "points", 100))
    print(f"  {default} zero-shot above ridge ({100 * ridge['zero_shot']:.1f}%): {100 * d['zero_shot']:.1f}%, "
          + _verdict(d["zero_shot"] - ridge["zero_shot"] - 1e-9, "points", 100))
    for mode, limit in GOAL_SECONDS.items():
        for name, r in results.items():
            if name.startswith(mode + " "):
                print(f"  {name} under {limit:.0f} s (towers' features cached): {r['seconds']:.1f} s, "
                      + _verdict(limit - r["seconds"], "s", 1))


def _verdict(margin: float, unit: str, scale: float) -> str:
    return "met" if margin >= 0 else f"MISSED by {-margin * scale:.1f} {unit}"


if __name__ == "__main__":
    main()
