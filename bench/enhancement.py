"""Enhancement sampler quality and speed on real photos (skimage.data), against classic baselines.

    python bench/enhancement.py                 # statistics guide (the tests' stand-in LiT model)
    python bench/enhancement.py --guide tower   # real locked EfficientNet-Lite0 tower + prototype text directions
    python bench/enhancement.py --quick         # fewer photos, smaller timing image

Each photo (short side 256) is darkened (x0.45, -1.15 EV), contrast-flattened (x0.5 around mid-grey), given
a cool colour cast (R x0.8, B x1.3) and given a gamma of 2 (non-linear underexposure); every method sees only
the degraded image. Methods: ours (fitted grade, guided by the LiT-style model), the same objective optimised
directly on the pixels, PIL autocontrast, histogram equalisation and CLAHE (scikit-image). Scores: PSNR and
SSIM to the undegraded original.

Guides (no pretrained dual encoder ships on PyPI, so neither is a tuned LiT model):
- ``stat``: image features = deviations of luminance mean/spread and colour balance from typical photos,
  through a fixed random projection; "well-exposed" = no deviation (the guide the tests use).
- ``tower``: the real locked EfficientNet-Lite0 image tower; the positive/negative "text" directions are the
  mean embeddings of clean vs degraded versions of the *other* photos (leave-one-out), which is what a LiT text
  side tuned on such captions would learn to point at.

Then time per megapixel of ours (fit on the proxy + full-resolution apply) vs optimising the full-resolution
pixels with the same objective and steps. Last line: ``enhancement_psnr: <dB> (<ratio>x vs best baseline)``,
mean PSNR of ours over all photos and degradations, ratio to the best baseline's mean PSNR (>1 = better).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ["astronaut", "chelsea", "coffee", "stereo_motorcycle", "rocket"]
DEGRADATIONS = ["dark", "flat", "cast", "gamma"]
POS = "a bright, well-exposed, crisp photo"
NEG = "a dark, dull, washed-out photo with a colour cast"


from _package import import_package as _import_package  # noqa: E402


def load_photo(name: str, short: int) -> torch.Tensor:
    import skimage.data as skdata

    arr = getattr(skdata, name)()
    arr = arr[0] if isinstance(arr, tuple) else arr
    t = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).float().div(255.0)[None].movedim(-1, 1)
    h, w = t.shape[-2:]
    s = short / min(h, w)
    t = F.interpolate(t, size=(round(h * s), round(w * s)), mode="bilinear", antialias=s < 1, align_corners=False)
    return t.clamp(0, 1).movedim(1, -1).contiguous()


def degrade(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "dark":
        return x * 0.45
    if kind == "flat":
        return (x - 0.5) * 0.5 + 0.5
    if kind == "gamma":  # non-linear underexposure: midtones and shadows crushed, highlights kept
        return x ** 2.0
    return (x * torch.tensor([0.8, 1.0, 1.3])).clamp(0, 1)


class StatGuide:
    """Same construction as the tests' stand-in (see tests/test_enhancement.py)."""

    TARGET = (0.44, 0.25, 0.12, -0.04)

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1234)
        self.proj, _ = torch.linalg.qr(torch.randn(32, 4, generator=g))
        self.logit_scale = torch.tensor(10.0)
        self.device = torch.device("cpu")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = images[..., :3].movedim(-1, 1).float()
        if x.shape[-2:] != (64, 64):
            x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=min(x.shape[-2:]) > 64)
        lum = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
        m, s = lum.mean((1, 2)), (lum.var((1, 2), unbiased=False) + 1e-6).sqrt()
        ch = x.mean((2, 3))
        tm, ts, trg, tbg = self.TARGET
        cast = ((ch[:, 0] - ch[:, 1] - trg) ** 2 + (ch[:, 2] - ch[:, 1] - tbg) ** 2 + 1e-6).sqrt()
        f = torch.stack([torch.ones_like(m), 15 * ((m - tm) ** 2 + 1e-4).sqrt(), 15 * ((s - ts) ** 2 + 1e-4).sqrt(),
                         15 * cast], 1)
        return F.normalize(f @ self.proj.T, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        good, bad = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 1.0, 1.0, 1.0])
        rows = [bad if ("dark" in t or "dull" in t) else good for t in texts]
        return F.normalize(torch.stack(rows) @ self.proj.T, dim=-1)


class TowerGuide:
    """The real locked image tower; text directions are clean/degraded prototype embeddings."""

    def __init__(self, tower, pos: torch.Tensor, neg: torch.Tensor, scale: float = 100.0) -> None:
        self.tower = tower
        self.table = F.normalize(torch.stack([pos, neg]), dim=-1)
        self.logit_scale = torch.tensor(scale)
        self.device = tower.device

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower.embed(images).float(), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.table[1] if ("dark" in t or "dull" in t) else self.table[0] for t in texts])


def tower_guides(photos: dict[str, torch.Tensor]):
    from comfyui_lit.models.towers.image_tower import load_image_tower

    tower = load_image_tower(None)
    with torch.no_grad():
        clean = {n: F.normalize(tower.encode(x), dim=-1)[0] for n, x in photos.items()}
        bad = {n: F.normalize(tower.encode(torch.cat([degrade(x, k) for k in DEGRADATIONS])), dim=-1).mean(0)
               for n, x in photos.items()}
    out = {}
    for n in photos:
        others = [m for m in photos if m != n]
        out[n] = TowerGuide(tower, torch.stack([clean[m] for m in others]).mean(0),
                            torch.stack([bad[m] for m in others]).mean(0))
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean().clamp_min(1e-12)))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a[0].numpy(), b[0].numpy(), channel_axis=-1, data_range=1.0))


def _np(x: torch.Tensor) -> np.ndarray:
    return x[0].numpy()


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].clamp(0, 1)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    from PIL import Image, ImageOps

    img = Image.fromarray((_np(x) * 255).round().astype(np.uint8))
    return _t(np.asarray(ImageOps.autocontrast(img)).astype(np.float32) / 255.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    import warnings

    from skimage import exposure

    with warnings.catch_warnings():  # one histogram over all channels is the intended (classic) baseline
        warnings.simplefilter("ignore", UserWarning)
        return _t(exposure.equalize_hist(_np(x)))


def clahe(x: torch.Tensor) -> torch.Tensor:
    from skimage import exposure

    return _t(exposure.equalize_adapthist(_np(x), clip_limit=0.01))


def direct_pixels(x: torch.Tensor, model, steps: int, guidance: float = 1.0, fidelity: float = 1.0) -> torch.Tensor:
    """The sampler's objective, but the parameters are the full-resolution pixels themselves."""
    from comfyui_lit.models.enhancement.sampler import antonym_scores, structure_loss, text_directions

    src = x.movedim(-1, 1).clone()
    text = text_directions(model, POS, NEG)
    scale = torch.as_tensor(model.logit_scale).float()
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x).float(), dim=-1)
    ref_chroma = src / (src.sum(1, keepdim=True) + 0.05)
    pix = src.clone().requires_grad_(True)
    opt = torch.optim.Adam([pix], lr=0.01)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        out = pix.clamp(0, 1)
        emb = model.encode_image(out.movedim(1, -1)).float()
        loss = -guidance * antonym_scores(emb, text, scale)
        loss = loss + fidelity * (1 - (F.normalize(emb, dim=-1) * ref).sum(-1)
                                  + 20 * (out / (out.sum(1, keepdim=True) + 0.05) - ref_chroma).square().mean((1, 2, 3))
                                  + structure_loss(out, src))
        loss.sum().backward()
        opt.step()
    return pix.detach().clamp(0, 1).movedim(1, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guide", choices=["stat", "tower"], default="stat")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="short side of the evaluation photos")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    _import_package()
    from comfyui_lit.models.enhancement.sampler import enhance

    names = PHOTOS[:3] if args.quick else PHOTOS
    photos = {n: load_photo(n, args.size) for n in names}
    guides = tower_guides(photos) if args.guide == "tower" else {n: StatGuide() for n in names}

    methods = {
        "ours": lambda x, g: enhance(x, g, POS, NEG, steps=args.steps, samples=args.samples, seed=0).image,
        "pixels (direct)": lambda x, g: direct_pixels(x, g, args.steps),
        "autocontrast (PIL)": lambda x, g: autocontrast(x),
        "hist. equalisation": lambda x, g: equalize(x),
        "CLAHE (skimage)": lambda x, g: clahe(x),
        "degraded (input)": lambda x, g: x,
    }
    res: dict[str, dict[str, list[tuple[float, float]]]] = {m: {k: [] for k in DEGRADATIONS} for m in methods}
    for n, clean in photos.items():
        for k in DEGRADATIONS:
            bad = degrade(clean, k)
            for m, fn in methods.items():
                out = fn(bad, guides[n])
                res[m][k].append((psnr(out, clean), ssim(out, clean)))
        print(f"  done {n}", file=sys.stderr)

    print(f"\nEnhancement quality, guide={args.guide}, {len(names)} photos x {len(DEGRADATIONS)} degradations, "
          f"short side {args.size}, steps {args.steps}, samples {args.samples}")
    head = f"{'method':<20}" + "".join(f"{k + ' PSNR/SSIM':>20}" for k in DEGRADATIONS) + f"{'mean PSNR/SSIM':>20}"
    print(head)
    print("-" * len(head))
    means = {}
    for m in methods:
        cells = []
        allv = []
        for k in DEGRADATIONS:
            v = np.array(res[m][k])
            allv.append(v)
            cells.append(f"{v[:, 0].mean():>11.2f} / {v[:, 1].mean():.3f}")
        a = np.concatenate(allv)
        means[m] = a[:, 0].mean()
        print(f"{m:<20}" + "".join(f"{c:>20}" for c in cells) + f"{a[:, 0].mean():>11.2f} / {a[:, 1].mean():.3f}")

    # Speed: time per megapixel at a larger size, ours (proxy fit + full-res apply) vs direct pixels.
    side = 768 if args.quick else 1448
    big = load_photo("astronaut", side)
    bad = degrade(big, "dark")
    guide = StatGuide() if args.guide == "stat" else guides["astronaut"]
    mp = big.shape[1] * big.shape[2] / 1e6
    t0 = time.perf_counter()
    # one restart, like the direct optimisation, so the two do the same number of guided steps
    ours = enhance(bad, guide, POS, NEG, steps=args.steps, samples=1, seed=0).image
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    direct = direct_pixels(bad, guide, args.steps)
    t_direct = time.perf_counter() - t0
    print(f"\nSpeed on {big.shape[2]}x{big.shape[1]} ({mp:.2f} MP), {args.steps} steps, "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'method':<20}{'s/MP':>10}{'PSNR':>10}")
    print(f"{'ours':<20}{t_ours / mp:>10.2f}{psnr(ours, big):>10.2f}")
    print(f"{'pixels (direct)':<20}{t_direct / mp:>10.2f}{psnr(direct, big):>10.2f}")
    print(f"(one restart each; ours is {t_direct / max(t_ours, 1e-9):.1f}x faster per MP at this size, and its "
          f"cost is nearly flat in the image size)")

    baselines = {m: v for m, v in means.items() if m not in ("ours", "degraded (input)", "pixels (direct)")}
    best = max(baselines, key=baselines.get)
    print(f"enhancement_psnr: {means['ours']:.2f} dB ({means['ours'] / baselines[best]:.2f}x vs {best})")


if __name__ == "__main__":
    main()
