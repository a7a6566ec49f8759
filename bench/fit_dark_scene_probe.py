"""Fit the enhancement's dark-scene probe (models/enhancement/dark_scene.py) and write it next to that module.

``python bench/fit_dark_scene_probe.py [--out PATH]``: the 800 Flickr8k photos of ``../shared`` at their own size
(about 500 x 375), and three darkened copies of each (gamma 2.2, gamma 1.6, exposure x0.4, saved to 8 bits). Every
photo or copy the exposure gate would lift is one example: a darkened copy should be lifted, an original should
not. The features are the engine's own (:func:`grade_features`: the embedded tower's embedding change under the
auto-grade, and the exposure evidence g). An L2 logistic regression on standardised features (C = 0.003, the
sklearn convention) is cross-validated in 5 folds grouped by photo (a photo's copies never straddle folds); the
threshold keeps DARK_SCENE_KEEP_LIFTS of the cross-validated lifts of darkened copies. The benchmark's CBSD68 is
never read here. Prints the cross-validated table, then the file written. About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import sys

import numpy as np
import torch
from _package import import_package

import_package()
from comfyui_lit.models.common.atomic import save_tensors_atomic  # noqa: E402
from comfyui_lit.models.enhancement import dark_scene, spec  # noqa: E402
from comfyui_lit.models.enhancement.auto import auto_grade  # noqa: E402
from comfyui_lit.models.enhancement.ops import apply_enhancement  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("LIT_SHARED_DIR") or os.path.normpath(os.path.join(ROOT, "..", "shared"))

C = 0.003
COPIES = {"original": None, "gamma 2.2": ("gamma", 2.2), "gamma 1.6": ("gamma", 1.6), "exposure x0.4": ("gain", 0.4)}


def darken(x: np.ndarray, how) -> np.ndarray:
    if how is None:
        return x
    y = x ** how[1] if how[0] == "gamma" else x * how[1]
    return (np.round(np.clip(y, 0, 1) * 255) / 255).astype(np.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-6)))


def examples(files: list[str]):
    """Every photo or copy the exposure gate lifts: features, label (1 = darkened), group, kind, and the PSNR to
    the original of the lifted and of the unlifted version."""
    from PIL import Image

    tower = dark_scene.embedded_tower()
    rows = []
    for i, f in enumerate(files):
        # at the photo's own size, as the sampler sees it: the grade is estimated here, and grade_features
        # shrinks the photo to the probe's view exactly as the engine does
        x0 = np.asarray(Image.open(f).convert("RGB")).astype(np.float32) / 255
        ref = torch.from_numpy(x0)[None]
        for kind, how in COPIES.items():
            x = torch.from_numpy(darken(x0, how))[None]
            src = x.movedim(-1, 1)
            grades, stats = auto_grade(src)
            if not dark_scene.lifted_by_exposure_gate(grades, stats):
                continue
            g = torch.tensor([stats[0]["exposure_evidence"]])
            feat = dark_scene.grade_features(src, grades, g, tower)[0]
            unlifted = grades.select(0)
            unlifted.gamma.zero_()
            rows.append((feat.numpy(), int(how is not None), i, kind, psnr(apply_enhancement(x, grades), ref),
                         psnr(apply_enhancement(x, unlifted), ref)))
        if i % 100 == 0:
            print(f"  {i}/{len(files)} photos, {len(rows)} examples", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=dark_scene.PROBE_FILE)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    files = sorted(glob.glob(os.path.join(SHARED, "data", "flickr8k-train800", "*.jpg")))
    if not files:
        sys.exit(f"no Flickr8k photos under {SHARED}/data/flickr8k-train800: this needs ../shared")
    rows = examples(files)
    x = torch.from_numpy(np.stack([r[0] for r in rows])).double()
    y = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    group = np.array([r[2] for r in rows]) % 5
    kinds = np.array([r[3] for r in rows])
    lifted_psnr, kept_psnr = np.array([r[4] for r in rows]), np.array([r[5] for r in rows])

    cv = np.zeros(len(rows))
    for k in range(5):
        tr, te = group != k, group == k
        w, b = dark_scene.fit_logistic(x[tr], y[tr], C)
        cv[te] = (x[te] @ w + b).numpy()
    dark = y.numpy() == 1
    threshold = float(np.quantile(cv[dark], 1 - spec.DARK_SCENE_KEEP_LIFTS))
    lift = cv >= threshold
    print(f"{len(rows)} photos or copies over the exposure gate ({int(dark.sum())} darkened, {int((~dark).sum())} "
          f"originals); 5-fold cross-validation grouped by photo, threshold {threshold:.3f}:")
    print(f"{'kind':<15} {'n':>4} {'lifted':>7} {'PSNR gate only':>15} {'with probe':>11}")
    for kind in COPIES:
        m = kinds == kind
        if not m.any():
            continue
        with_probe = np.where(lift[m], lifted_psnr[m], kept_psnr[m])
        print(f"{kind:<15} {int(m.sum()):>4} {lift[m].mean():>7.1%} {lifted_psnr[m].mean():>15.2f} "
              f"{with_probe.mean():>11.2f}")
    orig = kinds == "original"
    harmed_before = int((lifted_psnr[orig] < 35).sum())
    harmed_after = int(((np.where(lift, lifted_psnr, kept_psnr) < 35) & orig).sum())
    print(f"originals moved below 35 dB: {harmed_before} with the exposure gate alone, {harmed_after} with the probe")

    w, b = dark_scene.fit_logistic(x, y, C)
    tower = dark_scene.embedded_tower()
    path = save_tensors_atomic(
        {"weight": w.float(), "bias": torch.tensor(b, dtype=torch.float32)}, args.out, overwrite=True,
        metadata={"threshold": f"{threshold:.6f}", "tower_fingerprint": tower.fingerprint,
                  "fitted_on": f"{len(files)} Flickr8k photos and darkened copies ({', '.join(list(COPIES)[1:])})",
                  "fitted_by": "bench/fit_dark_scene_probe.py", "date": datetime.date.today().isoformat(),
                  "C": str(C), "keep_lifts": str(spec.DARK_SCENE_KEEP_LIFTS),
                  "cv_originals_lifted": f"{lift[orig].mean():.4f}", "cv_darkened_lifted": f"{lift[dark].mean():.4f}"})
    print(f"wrote {path}")
    print(f"dark_scene_probe_originals_spared: {1 - lift[orig].mean():.3f} ({harmed_after}/{harmed_before} "
          f"originals below 35 dB vs the exposure gate alone)")


if __name__ == "__main__":
    main()
