"""Test fixture (not part of the engine): procedurally drawn shapes with captions and a tiny CNN pretrained on
them, wrapped as a locked ImageTower. Used by the tuning tests and bench/distributed.py (CPU-cheap towers).

- :func:`synthetic_shapes`: shapes x colours x backgrounds with captions;
- :func:`tiny_shapes_tower`: the tiny CNN, pretrained (supervised) on those shapes, cached per process;
- :func:`write_shapes_folder`: the shapes written as PNGs with same-name ``.txt`` captions.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import nn

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
    from comfyui_lit.models.towers.image_tower import ImageTower

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
