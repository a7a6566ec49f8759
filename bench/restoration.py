"""Restoration benchmark: the LiT Restoration Sampler (built-in prior) vs classical restorers on real photos.

Run: ``python bench/restoration.py [--size 160] [--photos 4]``. Needs scikit-image; OpenCV
(``opencv-python-headless``) and BM3D (``bm3d``) rows appear when those packages are installed.
Prints PSNR / SSIM / seconds per image for each task and method, then one summary line: the mean PSNR gain of
ours over the best classical method of each task.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _package import import_package as _import_package  # noqa: E402

_import_package()

from skimage import data, restoration  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from comfyui_lit.models.restoration import degradations as D  # noqa: E402
from comfyui_lit.models.restoration.denoisers import DCTDenoiser  # noqa: E402
from comfyui_lit.models.restoration.sampler import restore  # noqa: E402

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
try:
    import bm3d
except ImportError:  # pragma: no cover
    bm3d = None

PHOTOS = [("astronaut", (30, 150)), ("coffee", (100, 200)), ("chelsea", (40, 120)), ("rocket", (200, 100)),
          ("immunohistochemistry", (100, 100)), ("hubble_deep_field", (100, 100))]


def load(n: int, size: int) -> list[np.ndarray]:
    out = []
    for name, (top, left) in PHOTOS[:n]:
        img = getattr(data, name)()[top:top + size, left:left + size, :3]
        out.append(img.astype(np.float32) / 255)
    return out


def t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()


def n(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64)


def u8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ tasks


def task_denoise(clean, rng):
    y = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1).astype(np.float32)
    s = 25 / 255
    methods = {
        "ours (DCT-HQS)": lambda: n(restore(D.Denoise(t(y), s), DCTDenoiser(block_matching=True))),
        "skimage TV": lambda: restoration.denoise_tv_chambolle(y, weight=0.08, channel_axis=-1),
        "skimage wavelet": lambda: restoration.denoise_wavelet(y, sigma=s, channel_axis=-1, convert2ycbcr=True,
                                                               method="BayesShrink", mode="soft",
                                                               rescale_sigma=True),
        "skimage NL-means": lambda: restoration.denoise_nl_means(y, h=0.8 * s, sigma=s, patch_size=5,
                                                                 patch_distance=6, channel_axis=-1,
                                                                 fast_mode=True),
    }
    if cv2 is not None:
        methods["OpenCV NL-means"] = lambda: cv2.fastNlMeansDenoisingColored(u8(y), None, 15, 15, 7, 21) / 255.0
    if bm3d is not None:
        methods["BM3D (CBM3D)"] = lambda: bm3d.bm3d_rgb(y, s)
    return y, methods


def task_deblur(clean, rng):
    k = D.gaussian_kernel(2.0)
    blurred = n(D.Deblur(t(clean), k).apply(t(clean)))
    y = np.clip(blurred + rng.normal(0, 2 / 255, clean.shape), 0, 1).astype(np.float32)
    kn = k.numpy().astype(np.float64)

    def rl():
        # skimage convolves with zero borders; reflect-pad so the baseline is not ruined by its edges
        p = kn.shape[0]
        yp = np.pad(y, ((p, p), (p, p), (0, 0)), mode="reflect")
        out = np.stack([restoration.richardson_lucy(yp[..., c], kn, num_iter=30, clip=True) for c in range(3)], -1)
        return out[p:-p, p:-p]

    def wiener():
        return np.stack([restoration.wiener(y[..., c], kn, balance=0.01, clip=True) for c in range(3)], -1)

    return y, {"ours (DCT-HQS)": lambda: n(restore(D.Deblur(t(y), k, 2 / 255), DCTDenoiser())),
               "skimage Richardson-Lucy": rl, "skimage Wiener": wiener}


def _inpaint_methods(clean, mask):
    y = clean * (1 - mask[..., None])
    methods = {
        "ours (DCT-HQS)": lambda: n(restore(D.Inpaint(t(y), torch.from_numpy(mask)[None]), DCTDenoiser())),
        "skimage biharmonic": lambda: restoration.inpaint_biharmonic(y, mask.astype(bool), channel_axis=-1),
    }
    if cv2 is not None:
        methods["OpenCV Telea"] = lambda: cv2.inpaint(u8(y), (mask > 0).astype(np.uint8), 3, cv2.INPAINT_TELEA) / 255.0
    return y.astype(np.float32), methods


def task_inpaint_random(clean, rng):
    mask = (rng.random(clean.shape[:2]) < 0.5).astype(np.float32)
    return _inpaint_methods(clean, mask)


def task_inpaint_scratches(clean, rng):
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    mask = D.scratch_mask((1, *clean.shape[:2]), 8, 3.0, g)[0].numpy()
    return _inpaint_methods(clean, mask)


def task_sr4(clean, rng):
    lr = n(D.downscale(t(clean), 4)).astype(np.float32)
    h, w = clean.shape[:2]
    methods = {
        "ours (DCT-HQS)": lambda: n(restore(D.Upscale(t(lr), 4), DCTDenoiser())),
        "bicubic (torch)": lambda: n(torch.nn.functional.interpolate(t(lr), scale_factor=4, mode="bicubic",
                                                                     align_corners=False)),
    }
    if cv2 is not None:
        methods["OpenCV Lanczos4"] = lambda: cv2.resize(lr, (w, h), interpolation=cv2.INTER_LANCZOS4)
    return None, methods


def task_jpeg10(clean, rng):
    y = n(D.jpeg_compress(t(clean), 10)).astype(np.float32)
    methods = {
        "ours (DCT-HQS)": lambda: n(restore(D.JPEG(t(y)), DCTDenoiser())),
        "JPEG as decoded": lambda: y,
        "skimage TV": lambda: restoration.denoise_tv_chambolle(y, weight=0.05, channel_axis=-1),
    }
    if bm3d is not None:
        methods["BM3D (sigma 8/255)"] = lambda: bm3d.bm3d_rgb(y, 8 / 255)
    return y, methods


TASKS = [("denoise s25", task_denoise), ("deblur g2+n2", task_deblur), ("inpaint 50%", task_inpaint_random),
         ("inpaint scratch", task_inpaint_scratches), ("upscale x4", task_sr4), ("jpeg q10", task_jpeg10)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--photos", type=int, default=4)
    args = ap.parse_args()
    photos = load(args.photos, args.size)
    print(f"{len(photos)} photos ({', '.join(p for p, _ in PHOTOS[:len(photos)])}), {args.size}x{args.size} crops; "
          f"cv2={'yes' if cv2 is not None else 'no'} bm3d={'yes' if bm3d is not None else 'no'}")
    print(f"{'task':<16} {'method':<26} {'PSNR':>7} {'SSIM':>7} {'s/img':>7}")
    gains = []
    for task_name, task in TASKS:
        rows: dict[str, list[tuple[float, float, float]]] = {}
        inputs = []
        for i, clean in enumerate(photos):
            rng = np.random.default_rng(1000 + i)
            y, methods = task(clean, rng)
            if y is not None:
                inputs.append((peak_signal_noise_ratio(clean, y, data_range=1),
                               structural_similarity(clean, y, data_range=1, channel_axis=-1)))
            for name, fn in methods.items():
                t0 = time.perf_counter()
                out = np.asarray(fn(), dtype=np.float64)
                dt = time.perf_counter() - t0
                out = np.clip(out, 0, 1)
                rows.setdefault(name, []).append((peak_signal_noise_ratio(clean.astype(np.float64), out,
                                                                          data_range=1),
                                                  structural_similarity(clean.astype(np.float64), out,
                                                                        data_range=1, channel_axis=-1), dt))
        if inputs:
            print(f"{task_name:<16} {'(damaged input)':<26} {np.mean([a for a, _ in inputs]):7.2f} "
                  f"{np.mean([b for _, b in inputs]):7.4f} {'':>7}")
        means = {k: tuple(np.mean(v, axis=0)) for k, v in rows.items()}
        for name, (p, s, dt) in means.items():
            print(f"{task_name:<16} {name:<26} {p:7.2f} {s:7.4f} {dt:7.2f}")
        ours = means["ours (DCT-HQS)"][0]
        best_name, best = max(((k, v[0]) for k, v in means.items() if not k.startswith("ours")), key=lambda kv: kv[1])
        gains.append(ours - best)
        print(f"{task_name:<16} -> ours - best classical ({best_name}): {ours - best:+.2f} dB", flush=True)
    gain = float(np.mean(gains))
    print(f"restoration_psnr_gain: {gain:+.2f} dB ({math.pow(10, gain / 10):.2f}x vs best classical)")


if __name__ == "__main__":
    main()
