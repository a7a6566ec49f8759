"""Small captioned data sets that need no download: for the CLI's demo, the README and the tests.

- :func:`synthetic_shapes`: procedurally drawn shapes x colours x backgrounds with captions;
- :func:`tiny_shapes_tower`: a tiny CNN pretrained (supervised) on those shapes, wrapped as a locked ImageTower;
- :func:`skimage_captioned_set`: the photos bundled with scikit-image, with written captions and augmented crops.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import nn

from ..common.errors import LitError

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.1), "blue": (0.1, 0.2, 0.95), "yellow": (0.95, 0.9, 0.1)}
BACKGROUNDS = {"white": (0.95, 0.95, 0.95), "black": (0.05, 0.05, 0.05), "gray": (0.5, 0.5, 0.5)}
CAPTION_TEMPLATES = ("a {colour} {shape} on a {bg} background", "a {bg} picture with a {colour} {shape}",
                     "{colour} {shape}, {bg} backdrop")


def _draw(shape: str, colour: tuple, bg: tuple, size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.empty((size, size, 3), np.float32)
    img[:] = np.asarray(bg, np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    r = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(r, size - r, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        m = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    else:  # upward triangle
        top, bottom = cy - r, cy + r * 0.8
        half = (yy - top) / (bottom - top) * r
        m = (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half)
    img[m] = np.asarray(colour, np.float32) + rng.normal(0, 0.03, 3).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def synthetic_shapes(n: int, *, seed: int = 0, size: int = 32,
                     exclude: set[tuple[str, str]] | frozenset = frozenset(),
                     only: set[tuple[str, str]] | None = None) -> tuple[torch.Tensor, list[list[str]], list[str]]:
    """``n`` images ``[n,size,size,3]``, their captions (3 phrasings each) and class names ``"<colour> <shape>"``.

    ``exclude``/``only`` restrict the (colour, shape) combinations drawn, for held-out-combination tests.
    """
    rng = np.random.default_rng(seed)
    combos = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in exclude and (only is None or (c, s) in only)]
    images, captions, labels = [], [], []
    for _ in range(n):
        colour, shape = combos[rng.integers(len(combos))]
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        if bg == "white" and colour == "yellow":
            bg = "black"  # yellow on white is barely visible at 32 px
        images.append(_draw(shape, COLOURS[colour], BACKGROUNDS[bg], size, rng))
        captions.append([t.format(colour=colour, shape=shape, bg=bg) for t in CAPTION_TEMPLATES])
        labels.append(f"{colour} {shape}")
    return torch.from_numpy(np.stack(images)), captions, labels


class TinyShapesCNN(nn.Module):
    """A 4-layer CNN with a linear (not rectified) 64-d output, so its features span all directions."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(64, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x))


@functools.lru_cache(maxsize=4)
def tiny_shapes_tower(seed: int = 0, steps: int = 300, size: int = 32):
    """A tiny image tower pretrained for ``steps`` supervised steps (shape and colour labels) on
    :func:`synthetic_shapes`, then locked. Built once per process per arguments (~seconds on a CPU)."""
    from ..towers.image_tower import ImageTower

    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        net = TinyShapesCNN()
        heads = nn.ModuleDict({"shape": nn.Linear(64, len(SHAPES)), "colour": nn.Linear(64, len(COLOURS))})
        opt = torch.optim.Adam(list(net.parameters()) + list(heads.parameters()), lr=3e-3)
        images, _, labels = synthetic_shapes(2048, seed=10_000 + seed, size=size)
        x_all = (images.permute(0, 3, 1, 2) - 0.5) / 0.5
        shape_y = torch.tensor([SHAPES.index(lbl.split()[1]) for lbl in labels])
        colour_y = torch.tensor([list(COLOURS).index(lbl.split()[0]) for lbl in labels])
        for _ in range(steps):
            idx = torch.randint(len(labels), (64,), generator=g)
            f = net(x_all[idx])
            loss = (nn.functional.cross_entropy(heads["shape"](f), shape_y[idx])
                    + nn.functional.cross_entropy(heads["colour"](f), colour_y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    net.zero_grad(set_to_none=True)  # a locked tower carries no leftover gradients
    return ImageTower(net, embed_dim=64, input_size=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      name=f"tiny-shapes-cnn-s{seed}", kind="cnn", crop=True)


def write_shapes_folder(folder: str, n: int, *, seed: int = 0, size: int = 32) -> str:
    """:func:`synthetic_shapes` written as PNGs with same-stem ``.txt`` captions (one per line)."""
    from PIL import Image

    images, captions, _ = synthetic_shapes(n, seed=seed, size=size)
    os.makedirs(folder, exist_ok=True)
    for i, (img, caps) in enumerate(zip(images, captions, strict=True)):
        stem = os.path.join(folder, f"shape_{i:04d}")
        Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as fh:
            fh.write("\n".join(caps) + "\n")
    return folder


# The scikit-image photos that ship inside the wheel (no pooch download), with written captions.
SKIMAGE_PHOTOS = {
    "astronaut": ["an astronaut in a white spacesuit with the american flag",
                  "portrait of a smiling astronaut", "a woman astronaut in a space suit"],
    "coffee": ["a cup of coffee on a saucer", "a coffee mug with foam, seen from above", "an espresso cup"],
    "chelsea": ["a tabby cat", "a ginger cat lying down", "close-up photo of a cat's face"],
    "rocket": ["a rocket on the launch pad", "a space rocket ready for launch", "a spacecraft launch tower"],
    "coins": ["old coins on a table", "a grey photo of many coins", "a collection of metal coins"],
    "camera": ["a man with a camera on a tripod", "a photographer in a field, black and white",
               "a cameraman outdoors"],
    "moon": ["the surface of the moon", "lunar craters", "a grey photo of the moon's surface"],
    "hubble_deep_field": ["galaxies in deep space", "the hubble deep field full of galaxies",
                          "a starry night sky with many galaxies"],
    "immunohistochemistry": ["a microscope image of stained tissue", "cells under the microscope",
                             "a histology slide stained brown and blue"],
    "colorwheel": ["a colour wheel", "a rainbow colour circle", "a circle with all hues"],
    "brick": ["a brick wall", "a grey brick wall texture", "bricks and mortar"],
    "grass": ["grass", "a texture of green grass blades", "a lawn seen up close"],
    "gravel": ["gravel", "small stones on the ground", "a pebble texture"],
    "text": ["printed text on paper", "a page of writing", "black letters on a white background"],
    "clock": ["a clock", "a wall clock", "a round clock face"],
    "page": ["a scanned book page", "a page of old printed text", "a document with text lines"],
    "retina": ["a photo of a retina", "the back of the eye with blood vessels", "a fundus image"],
    "cell": ["a cell under a microscope", "a microscopy image of a cell", "a grey microscopy image"],
    "horse": ["the silhouette of a horse", "a black and white horse shape", "a horse outline"],
    "logo": ["the scikit-image logo", "a snake logo", "a colourful logo on a white background"],
}


def _photo(name: str) -> np.ndarray | None:
    import skimage.data as data

    try:
        arr = np.asarray(getattr(data, name)())
    except Exception:  # noqa: BLE001 - photos that need a download (pooch) are skipped
        return None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    if arr.dtype != np.uint8:
        arr = (255 * (arr - arr.min()) / max(1e-8, float(arr.max() - arr.min()))).astype(np.uint8)
    return arr


def skimage_captioned_set(folder: str, *, crops_per_photo: int = 4, seed: int = 0, max_side: int = 320) -> str:
    """Write the bundled scikit-image photos (those available offline) to ``folder`` as JPEGs with 2-3 written
    captions each, plus ``crops_per_photo`` random crops/flips of each, so there is enough to tune on.

    Returns ``folder``. Needs scikit-image (a test/demo extra)."""
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        raise LitError("the demo photo set needs scikit-image.", input_name="dataset",
                       fix="`pip install scikit-image`, or point the trainer at your own captioned folder.") from None
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    written = 0
    for name, caps in SKIMAGE_PHOTOS.items():
        arr = _photo(name)
        if arr is None:
            continue
        base = Image.fromarray(arr)
        base.thumbnail((max_side, max_side))
        variants = [base]
        w, h = base.size
        for _ in range(crops_per_photo):
            s = rng.uniform(0.6, 0.9)
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            v = base.crop((x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            variants.append(v)
        for k, v in enumerate(variants):
            stem = os.path.join(folder, f"{name}_{k}")
            v.save(stem + ".jpg", quality=90)
            with open(stem + ".txt", "w", encoding="utf-8") as fh:
                fh.write("\n".join(caps) + "\n")
            written += 1
    if written == 0:
        raise LitError("no scikit-image photo could be read.", input_name="dataset",
                       fix="reinstall scikit-image.")
    return folder
