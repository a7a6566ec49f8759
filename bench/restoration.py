"""Restoration benchmark on the standard photos of ``../shared/data/restoration`` (CBSD68, Set5, Set12, RNI15): the
Restoration Sampler with its built-in classical prior and with FFDNet (converted from the original colour and grey
weights into a temp dir) as its prior, against CBM3D / BM3D, OpenCV, scikit-image, bicubic and the plain JPEG; same
images and seeds for every method.

Run: ``nice python bench/restoration.py [--quick]``. Full: FFDNet alone on all 68 CBSD68 images and all 12 Set12
images at sigma 15/25/50 (against its published numbers), every method on ``--images`` CBSD68 and Set12 images and
the 5 Set5 images. ``--quick``: 2 crops of 80x80 per set. Set12 is grey: loaded as ComfyUI does (three equal
channels) with the same grain in all three, as a black-and-white photo has. RNI15 is real camera noise with no clean
original: each photo's estimated noise level, the CPU time and a contact sheet (``--sheet``) to look at. The
``noise estimate`` rows: the level the node reads at noise 0 against scikit-image's estimator, on white and on
camera-like noise (a demosaiced sensor mosaic, then JPEG) and shot noise (growing with brightness), and FFDNet's
PSNR at each, on whole CBSD68 photos (4 in
``--quick``); and a deblur at noise 0 (the level read, where it used to assume clean data). The ``shot noise``
rows: Poisson-Gaussian noise on whole CBSD68 photos (gain .02 in ``--quick``, also .005 in full), each prior told
one level against the node's way (the Anscombe transform first, the gain given or read from the photo), and CBM3D
after the same transform. PSNR is
measured on the uint8-quantised output (as FFDNet's paper does), RGB; time is CPU seconds per output megapixel
(``time.process_time``). The last line: the mean gain of the FFDNet prior over the classical prior on deblur
(Gaussian, motion) and SR (x2, x4), and its CPU time per megapixel there relative to CBM3D's on denoising.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

# One thread per library unless the caller says otherwise: on the 2 shared cores of the team machine two OpenMP
# threads spin-wait for each other, which tripled both the wall and the CPU time of the torch methods (measured
# 2026-12-02: FFDNet on 80 px 0.22 vs 0.05 CPU-s, the classical prior 1.56 vs 0.55; CBM3D, a C library, 3.5 either
# way), so CPU seconds measure the work itself, the same way for every method.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _package import import_package as _import_package  # noqa: E402

_import_package()
from _sheet import contact_sheet  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import restoration as skr  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402

from comfyui_lit.models.restoration import anscombe  # noqa: E402
from comfyui_lit.models.restoration import degradations as D  # noqa: E402
from comfyui_lit.models.restoration.denoisers import DCTDenoiser  # noqa: E402
from comfyui_lit.models.restoration.ffdnet import convert_mat  # noqa: E402
from comfyui_lit.models.restoration.priors import load_prior  # noqa: E402
from comfyui_lit.models.restoration.sampler import restore  # noqa: E402
from comfyui_lit.models.restoration.tasks import build_operator  # noqa: E402

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
try:
    import bm3d
except ImportError:  # pragma: no cover
    bm3d = None

SHARED = os.environ.get("LIT_SHARED_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                          "shared")
DATA = os.path.join(SHARED, "data", "restoration")
PUBLISHED = {15: 33.87, 25: 31.21, 50: 27.96}  # FFDNet (TIP 2018), colour, CBSD68
PUBLISHED_GREY = {15: 32.75, 25: 30.43, 50: 27.32}  # grey, Set12


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]


def n(x: torch.Tensor) -> np.ndarray:
    return x[0].permute(1, 2, 0).clamp(0, 1).numpy().astype(np.float64)


def u8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)


def psnr(clean: np.ndarray, out: np.ndarray) -> float:
    o = np.round(np.clip(out, 0, 1) * 255)
    return float(10 * np.log10(255 ** 2 / np.mean((o - np.round(clean * 255)) ** 2)))


def ssim(clean: np.ndarray, out: np.ndarray) -> float:
    return float(structural_similarity(clean, np.round(np.clip(out, 0, 1) * 255) / 255, data_range=1,
                                       channel_axis=-1))


def load(folder: str, count: int, crop: int | None, mult: int = 4) -> list[np.ndarray]:
    files = sorted(glob.glob(os.path.join(folder, "*.png")))
    files = files[:: max(1, len(files) // count)][:count]
    out = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        if crop:
            h, w = a.shape[:2]
            a = a[(h - crop) // 2:(h + crop) // 2, (w - crop) // 2:(w + crop) // 2]
        out.append(a[: a.shape[0] // mult * mult, : a.shape[1] // mult * mult])
    return out


def load_grey(folder: str, count: int, crop: int | None) -> list[np.ndarray]:
    """Grey photos as ComfyUI loads them: three equal channels."""
    return [np.repeat(a[..., :1], 3, axis=-1) for a in load(folder, count, crop)]


# ------------------------------------------------------------------------------------------------ tasks


def tasks(prior, grey_prior):
    classical = DCTDenoiser()

    def denoise(sigma):
        def make(clean, rng):
            y = (clean + rng.normal(0, sigma / 255, clean.shape)).astype(np.float32)
            s = sigma / 255
            m = {"ours classical": lambda: n(restore(D.Denoise(t(y), s), DCTDenoiser(block_matching=True))),
                 "ours FFDNet": lambda: n(restore(D.Denoise(t(y), s), prior)),
                 "skimage wavelet": lambda: skr.denoise_wavelet(np.clip(y, 0, 1), sigma=s, channel_axis=-1,
                                                                convert2ycbcr=True, rescale_sigma=True)}
            if cv2 is not None:
                h = 0.5 * sigma + 3
                m["OpenCV NL-means"] = lambda: cv2.fastNlMeansDenoisingColored(u8(y), None, h, h, 7, 21) / 255.0
            if bm3d is not None:
                m["CBM3D"] = lambda: bm3d.bm3d_rgb(y, s)
            return m
        return make

    def grey_denoise(sigma):
        def make(clean, rng):  # a black-and-white photo: the same grain in all three channels
            y = (clean + rng.normal(0, sigma / 255, clean.shape[:2])[..., None]).astype(np.float32)
            g, s = y[..., 0], sigma / 255

            def rgb(a):
                return np.repeat(np.asarray(a, dtype=np.float64)[..., None], 3, axis=-1)

            m = {"ours classical": lambda: n(restore(D.Denoise(t(y), s), DCTDenoiser(block_matching=True))),
                 "ours FFDNet": lambda: n(restore(D.Denoise(t(y), s), grey_prior)),
                 "ours FFDNet (colour net)": lambda: n(restore(D.Denoise(t(y), s), prior)),
                 "skimage wavelet": lambda: rgb(skr.denoise_wavelet(np.clip(g, 0, 1), sigma=s, rescale_sigma=True))}
            if cv2 is not None:
                h = 0.5 * sigma + 3
                m["OpenCV NL-means"] = lambda: rgb(cv2.fastNlMeansDenoising(u8(g), None, h, 7, 21) / 255.0)
            if bm3d is not None:
                m["BM3D"] = lambda: rgb(bm3d.bm3d(g, s))
            return m
        return make

    def deblur(kind):
        def make(clean, rng):
            k = D.gaussian_kernel(1.6) if kind == "gaussian" else D.motion_kernel(9, 30)
            y = n(D.Deblur(t(clean), k, D.SIGMA_FLOOR).apply(t(clean))) + rng.normal(0, 0.01, clean.shape)
            y = np.round(np.clip(y, 0, 1) * 255) / 255
            kn = k.numpy().astype(np.float64)

            def rl():
                p = kn.shape[0]
                yp = np.pad(y, ((p, p), (p, p), (0, 0)), mode="reflect")
                o = np.stack([skr.richardson_lucy(yp[..., c], kn, num_iter=30, clip=True) for c in range(3)], -1)
                return o[p:-p, p:-p]

            task = "deblur (gaussian)" if kind == "gaussian" else "deblur (motion)"

            def op():  # the node's way: the task name picks the schedule
                return build_operator(task, t(y), noise_sigma=2.55, blur_sigma=1.6, motion_length=9, motion_angle=30)

            return {"ours classical": lambda: n(restore(op(), classical)),
                    "ours FFDNet": lambda: n(restore(op(), prior)),
                    "skimage Wiener": lambda: np.stack([skr.wiener(y[..., c], kn, balance=0.01, clip=True)
                                                        for c in range(3)], -1),
                    "skimage Richardson-Lucy": rl}
        return make

    def sr(scale):
        def make(clean, rng):
            lr = np.round(n(D.downscale(t(clean), scale)) * 255) / 255
            h, w = clean.shape[:2]
            m = {"ours classical": lambda: n(restore(D.Upscale(t(lr), scale), classical)),
                 "ours FFDNet": lambda: n(restore(D.Upscale(t(lr), scale), prior)),
                 "bicubic": lambda: n(D.Upscale(t(lr), scale).init())}
            if cv2 is not None:
                m["OpenCV Lanczos4"] = lambda: cv2.resize(lr.astype(np.float32), (w, h),
                                                          interpolation=cv2.INTER_LANCZOS4)
            return m
        return make

    def jpeg(q):
        def make(clean, rng):
            y = n(D.jpeg_compress(t(clean), q))
            m = {"ours classical": lambda: n(restore(D.JPEG(t(y)), classical)),
                 "ours FFDNet": lambda: n(restore(D.JPEG(t(y)), prior)),
                 "plain JPEG": lambda: y,
                 "skimage TV": lambda: skr.denoise_tv_chambolle(y, weight=0.05, channel_axis=-1)}
            if bm3d is not None:
                m["CBM3D (sigma 8)"] = lambda: bm3d.bm3d_rgb(y, (12 if q <= 10 else 6) / 255)
            return m
        return make

    def inpaint(clean, rng):
        mask = (rng.random(clean.shape[:2]) < 0.5).astype(np.float32)
        y = clean * (1 - mask[..., None])
        mt = torch.from_numpy(mask)[None]
        m = {"ours classical": lambda: n(restore(D.Inpaint(t(y), mt), classical)),
             "ours FFDNet": lambda: n(restore(D.Inpaint(t(y), mt), prior)),
             "skimage biharmonic": lambda: skr.inpaint_biharmonic(y, mask.astype(bool), channel_axis=-1)}
        if cv2 is not None:
            m["OpenCV Telea"] = lambda: cv2.inpaint(u8(y), (mask > 0).astype(np.uint8), 3, cv2.INPAINT_TELEA) / 255.0
        return m

    return [("denoise s15", "cbsd", denoise(15)), ("denoise s25", "cbsd", denoise(25)),
            ("denoise s50", "cbsd", denoise(50)), ("grey denoise s15", "set12", grey_denoise(15)),
            ("grey denoise s25", "set12", grey_denoise(25)), ("grey denoise s50", "set12", grey_denoise(50)),
            ("deblur gauss1.6", "cbsd", deblur("gaussian")),
            ("deblur motion9", "cbsd", deblur("motion")), ("SR x2", "set5", sr(2)), ("SR x4", "set5", sr(4)),
            ("JPEG q10", "cbsd", jpeg(10)), ("JPEG q30", "cbsd", jpeg(30)), ("inpaint 50%", "cbsd", inpaint)]


def ffdnet_alone(prior, files: list[str], published: dict[int, float], label: str) -> None:
    """The network on its own, every photo at its own size, against its published PSNR."""
    for sigma, pub in published.items():
        ps = []
        for i, f in enumerate(files):
            x = t(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
            shape = x.shape if "grey" not in label else (1, 1, *x.shape[-2:])  # grey: the same grain in each channel
            y = x + torch.randn(shape, generator=torch.Generator().manual_seed(i)) * sigma / 255
            ps.append(psnr(n(x), n(prior(y, sigma / 255))))
        print(f"FFDNet alone, {label} ({len(files)} images) sigma {sigma}: {np.mean(ps):.2f} dB "
              f"(published {pub:.2f}, {np.mean(ps) - pub:+.2f})", flush=True)


def skimage_sigma(y: np.ndarray) -> float:
    """scikit-image's noise estimate (MAD of the finest wavelet band), the one a user would reach for."""
    return float(skr.estimate_sigma(y, channel_axis=-1, average_sigmas=True))


def noise_estimate(prior, images: list[np.ndarray]) -> float:
    """The node's noise estimate (noise 0) against scikit-image's, on white and camera-like (demosaiced, then JPEG)
    noise: the level each reads and FFDNet's PSNR at it. Returns the mean gain on the camera-like rows."""
    kinds = {"white 15": lambda x, g: D.add_noise(x, 15 / 255, 0, g),
             "white 50": lambda x, g: D.add_noise(x, 50 / 255, 0, g),
             "camera 12": lambda x, g: D.camera_noise(x, 12 / 255, g).clamp(0, 1),
             "camera 12 + JPEG q85": lambda x, g: D.jpeg_compress(D.camera_noise(x, 12 / 255, g).clamp(0, 1), 85),
             "shot noise (gain .02)": lambda x, g: D.add_noise(x, 2 / 255, 0.02, g).clamp(0, 1)}
    gains = []
    for kind, make in kinds.items():
        rows = []
        for i, clean in enumerate(images):
            x = t(clean)
            y = make(x, torch.Generator().manual_seed(2000 + i))
            theirs, ours = skimage_sigma(n(y)), float(D.estimate_sigma(y)[0])
            rows.append((theirs * 255, ours * 255, psnr(clean, n(restore(D.Denoise(y, theirs), prior))),
                         psnr(clean, n(restore(D.Denoise(y), prior)))))
        m = np.mean(rows, axis=0)
        print(f"noise estimate  {kind:<22} scikit-image reads {m[0]:5.1f}, ours {m[1]:5.1f}; FFDNet at theirs "
              f"{m[2]:.2f} dB, at ours {m[3]:.2f} ({m[3] - m[2]:+.2f})", flush=True)
        if kind.startswith("camera"):
            gains.append(m[3] - m[2])
    # deblur at noise 0: the level read from the blurred photo against the clean-data floor noise 0 used to mean
    rows = []
    for i, clean in enumerate(images):
        x = t(clean)
        y = D.add_noise(D.Deblur(x, D.gaussian_kernel(1.6), D.SIGMA_FLOOR).apply(x), 2.55 / 255, 0,
                        torch.Generator().manual_seed(3000 + i))
        ops = [build_operator("deblur (gaussian)", y, noise_sigma=v, blur_sigma=1.6) for v in (1.0, 0.0)]
        rows.append([float(ops[1].noise_level[0]) * 255] + [psnr(clean, n(restore(op, prior))) for op in ops])
    m = np.mean(rows, axis=0)
    print(f"noise estimate  {'deblur, noise 2.55':<22} ours reads {m[0]:5.1f}; FFDNet deblur at the clean floor "
          f"(1/255) {m[1]:.2f} dB, at ours {m[2]:.2f} ({m[2] - m[1]:+.2f})", flush=True)
    return float(np.mean(gains))


def shot_noise(classical, prior, images: list[np.ndarray], gains: tuple[float, ...]) -> float:
    """Shot noise (variance gain * x + (2/255)^2) on whole photos: each prior told one level (the level at the
    photo's mean, what every prior got before), with the gain given (the Anscombe transform first) and with no gain
    given (the node's defaults: the level and its growth read from the photo); against CBM3D after the same
    transform, the classical answer to this noise. Returns the built-in prior's mean gain at the defaults over one
    level."""
    sg, res = 2 / 255, []
    for gain in gains:
        rows: dict[str, list[tuple[float, float]]] = {}
        for i, clean in enumerate(images):
            y = D.add_noise(t(clean), sg, gain, torch.Generator().manual_seed(4000 + i)).clamp(0, 1)
            op = D.Denoise(y, sg, gain)
            one = D.Denoise(y, float(op.sigma_n[0]))  # Gaussian at the level of the photo's mean brightness
            methods = {}
            for label, den in (("classical", classical), ("FFDNet", prior)):
                methods[f"ours {label}, one level"] = lambda den=den, one=one: n(restore(one, den))
                methods[f"ours {label}, gain given"] = lambda den=den, op=op: n(restore(op, den))
                methods[f"ours {label}, defaults"] = lambda den=den, y=y: n(restore(D.Denoise(y), den))
            if bm3d is not None:
                def cbm3d(d, s):
                    return t(bm3d.bm3d_rgb(n(d), float(s[0])))

                methods["CBM3D (Anscombe)"] = lambda y=y, gain=gain: n(anscombe.denoise(
                    cbm3d, y, torch.tensor([sg ** 2]), torch.tensor([gain])))
            for name, fn in methods.items():
                c0 = time.process_time()
                out = np.asarray(fn(), dtype=np.float64)
                rows.setdefault(name, []).append((psnr(clean, out), (time.process_time() - c0) / (out.size / 3e6)))
        m = {k: np.mean(v, axis=0) for k, v in rows.items()}
        for name, (p, sec) in m.items():
            print(f"shot noise {gain:<5} {name:<28} {p:7.2f} {sec:9.1f} CPU s/MP", flush=True)
        res.append(m["ours classical, defaults"][0] - m["ours classical, one level"][0])
        vs = (f"; FFDNet {m['ours FFDNet, defaults'][0] - m['CBM3D (Anscombe)'][0]:+.2f}, classical "
              f"{m['ours classical, defaults'][0] - m['CBM3D (Anscombe)'][0]:+.2f} dB vs CBM3D (Anscombe)"
              if "CBM3D (Anscombe)" in m else "")
        print(f"shot noise {gain:<5} -> defaults vs one level: classical {res[-1]:+.2f} dB, FFDNet "
              f"{m['ours FFDNet, defaults'][0] - m['ours FFDNet, one level'][0]:+.2f} dB{vs}", flush=True)
    return float(np.mean(res))


def real_noise(classical, prior, files: list[str], crop: int, sheet: str) -> None:
    """RNI15's real camera noise (no clean original, so no PSNR): the node's way (noise level estimated from the
    photo), centre crops; the estimate per photo, CPU s/MP, and a contact sheet to look at."""
    rows, labels, times = [], [], {"ours classical": [], "ours FFDNet": [], "CBM3D": []}
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255
        h, w = a.shape[:2]
        c = min(crop, h, w)
        y = a[(h - c) // 2:(h + c) // 2, (w - c) // 2:(w + c) // 2]
        sigma = float(D.Denoise(t(y)).sigma_g[0])
        outs = {"ours classical": lambda y=y: n(restore(D.Denoise(t(y)), classical)),
                "ours FFDNet": lambda y=y: n(restore(D.Denoise(t(y)), prior))}
        if bm3d is not None:
            outs["CBM3D"] = lambda y=y, sigma=sigma: bm3d.bm3d_rgb(y, sigma)  # at our estimate: it has none
        row = [y]
        for k, fn in outs.items():
            c0 = time.process_time()
            row.append(np.asarray(fn(), dtype=np.float64))
            times[k].append((time.process_time() - c0) / (c * c / 1e6))
        rows.append(row)
        labels.append(f"{os.path.basename(f)}: estimated sigma {sigma * 255:.1f}; input / " + " / ".join(outs))
        print(f"real noise  {os.path.basename(f):<20} estimated sigma {sigma * 255:5.1f} "
              f"(scikit-image {skimage_sigma(y) * 255:4.1f})", flush=True)
    print("real noise  CPU s/MP: " + ", ".join(f"{k} {np.mean(v):.1f}" for k, v in times.items() if v)
          + f"; contact sheet {sheet}", flush=True)
    contact_sheet(rows, labels, sheet, width=200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 crops of 80x80 per set (under 5 minutes)")
    ap.add_argument("--images", type=int, default=6, help="CBSD68 images per task (full mode)")
    ap.add_argument("--ffdnet-images", type=int, default=68, help="CBSD68 images for FFDNet alone (full mode)")
    ap.add_argument("--threads", type=int, default=int(os.environ["OMP_NUM_THREADS"]),
                    help="torch threads (default: $OMP_NUM_THREADS, else 1)")
    ap.add_argument("--sheet", default="/tmp/restoration_real_noise.png", help="RNI15 contact sheet (PNG)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(0)
    tmp = tempfile.mkdtemp()
    prior = load_prior(convert_mat(os.path.join(SHARED, "weights", "FFDNet_color.mat"),
                                   os.path.join(tmp, "ffdnet_color.safetensors")))
    grey_prior = load_prior(convert_mat(os.path.join(SHARED, "weights", "FFDNet_gray.mat"),
                                        os.path.join(tmp, "ffdnet_gray.safetensors")))
    crop, count = (80, 2) if args.quick else (None, args.images)
    sets = {"cbsd": load(os.path.join(DATA, "CBSD68"), count, crop or 256),
            "set5": load(os.path.join(DATA, "Set5", "HR"), 2 if args.quick else 5, crop),
            "set12": load_grey(os.path.join(DATA, "Set12"), count, crop or 256)}
    print(f"CBSD68 {len(sets['cbsd'])} images ({crop or 256}px crops), Set5 {len(sets['set5'])} images, "
          f"Set12 {len(sets['set12'])} grey images; "
          f"cv2={'yes' if cv2 else 'no'} bm3d={'yes' if bm3d else 'no'}; {torch.get_num_threads()} threads")
    if not args.quick:
        ffdnet_alone(prior, sorted(glob.glob(os.path.join(DATA, "CBSD68", "*.png")))[:args.ffdnet_images],
                     PUBLISHED, "CBSD68")
        ffdnet_alone(grey_prior, sorted(glob.glob(os.path.join(DATA, "Set12", "*.png"))), PUBLISHED_GREY,
                     "Set12 grey")
    print(f"{'task':<16} {'method':<24} {'PSNR':>7} {'SSIM':>7} {'CPU s/MP':>9}")
    results: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, which, make in tasks(prior, grey_prior):
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for i, clean in enumerate(sets[which]):
            methods = make(clean.astype(np.float64), np.random.default_rng(1000 + i))
            for mname, fn in methods.items():
                c0 = time.process_time()
                out = np.asarray(fn(), dtype=np.float64)
                dt = time.process_time() - c0
                rows.setdefault(mname, []).append((psnr(clean, out), ssim(clean, out), dt / (out.size / 3 / 1e6)))
        results[name] = {k: tuple(np.mean(v, axis=0)) for k, v in rows.items()}
        for mname, (p, s, sec) in results[name].items():
            print(f"{name:<16} {mname:<24} {p:7.2f} {s:7.4f} {sec:9.1f}")
        best = max((v[0], k) for k, v in results[name].items() if not k.startswith("ours"))
        print(f"{name:<16} -> FFDNet prior {results[name]['ours FFDNet'][0] - best[0]:+.2f} dB vs best baseline "
              f"({best[1]}); classical prior {results[name]['ours classical'][0] - best[0]:+.2f} dB", flush=True)
    # whole photos, as a user denoises them (a small crop of pure texture has nothing flat to read)
    noise_gain = noise_estimate(prior, load(os.path.join(DATA, "CBSD68"), 4 if args.quick else count, None))
    shot_gain = shot_noise(DCTDenoiser(block_matching=True), prior,
                           load(os.path.join(DATA, "CBSD68"), 2 if args.quick else count, None),
                           (0.02,) if args.quick else (0.005, 0.02))
    rni = sorted(glob.glob(os.path.join(DATA, "RNI15", "*")))
    real_noise(DCTDenoiser(block_matching=True), prior, rni[::7][:2] if args.quick else rni, 128 if args.quick else 256,
               args.sheet)
    keys = ["deblur gauss1.6", "deblur motion9", "SR x2", "SR x4"]
    gain = float(np.mean([results[k]["ours FFDNet"][0] - results[k]["ours classical"][0] for k in keys]))
    ours_t = float(np.mean([results[k]["ours FFDNet"][2] for k in keys]))
    cbm3d = [results[k]["CBM3D"][2] for k in results if "CBM3D" in results[k]]
    cbm3d_t = float(np.mean(cbm3d)) if cbm3d else float("nan")
    print(f"noise estimate: camera-like noise {noise_gain:+.2f} dB with FFDNet vs scikit-image's estimate")
    print(f"shot noise: the built-in prior at the defaults {shot_gain:+.2f} dB vs one level for the photo")
    print(f"deblur_sr_mean_gain: {gain:+.2f} dB ({ours_t / cbm3d_t:.2f}x time vs CBM3D)")


if __name__ == "__main__":
    main()
