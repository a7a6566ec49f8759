"""The fuzz corpus, generated on the fly: malformed files, odd images, shards, caches, and a tiny locked tower.

Everything here is built from scratch in a temp folder (nothing is shipped), and each builder is small enough that
the whole suite stays in seconds.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib

import numpy as np
import torch
from PIL import Image
from torch import nn


class DuckTower(nn.Module):
    """What the embedding cache needs of a tower, importable without transformers (for fast subprocesses)."""

    fingerprint = "duck-tower"
    preprocess_id = "duck-16"
    embed_dim = 4

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.movedim(-1, 1)
        return torch.nn.functional.interpolate(x, size=(16, 16), mode="area")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.stack([pixels.mean((1, 2, 3)), pixels.std((1, 2, 3)), pixels[:, 0].mean((1, 2)),
                            pixels[:, 2].mean((1, 2))], dim=1)


def tiny_tower(seed: int = 0, dim: int = 8):
    from comfyui_lit.models.towers.image_tower import ImageTower

    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, dim, 4, stride=4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return ImageTower(backbone, embed_dim=dim, input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3, name=f"fuzz{dim}")


def png(path: str, size=(24, 16), colour=(200, 30, 30), mode: str = "RGB") -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def caption(image_path: str, text: str | bytes) -> str:
    txt = os.path.splitext(image_path)[0] + ".txt"
    with open(txt, "wb") as fh:
        fh.write(text if isinstance(text, bytes) else text.encode("utf-8"))
    return txt


def captioned_folder(root: str, n: int = 6, size=(24, 16)) -> str:
    for i in range(n):
        caption(png(os.path.join(root, f"img{i:02d}.png"), size, (i * 40 % 255, 80, 200 - i * 20)),
                f"a picture number {i}")
    return root


def png16_grey(path: str, value: int = 32768, size=(8, 6)) -> str:
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint16)).save(path)
    return path


def png_declaring(path: str, width: int, height: int) -> str:
    """A tiny PNG whose header claims ``width x height`` (1-bit greyscale, zlib-compressed zeros: a few KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def tar_shard(path: str, n: int = 4, start: int = 0) -> str:
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            buf = io.BytesIO()
            noise = np.random.default_rng(i).integers(0, 256, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(noise).resize((64, 64)).save(buf, "PNG")  # incompressible: data, not padding, dominates
            for name, payload in ((f"s{i:03d}.png", buf.getvalue()), (f"s{i:03d}.txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def truncate(path: str, keep_fraction: float) -> str:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * keep_fraction)])
    return path


def flip_bytes(path: str, offset_from_end: int = 9, n: int = 4) -> str:
    with open(path, "r+b") as fh:
        fh.seek(-offset_from_end, os.SEEK_END)
        data = bytearray(fh.read(n))
        fh.seek(-offset_from_end, os.SEEK_END)
        fh.write(bytes(b ^ 0x5A for b in data))
    return path


class FakeLitModel:
    """What Save Adapter needs of a LIT_MODEL (its tensors and description), without building towers."""

    def __init__(self, value: float = 1.0, numel: int = 16) -> None:
        self.value = value
        self.numel = numel

    def encode_image(self, images):  # pragma: no cover - duck-typing only
        raise NotImplementedError

    def encode_text(self, texts):  # pragma: no cover
        raise NotImplementedError

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {"head.weight": torch.full((self.numel,), float(self.value))}

    def describe(self) -> dict:
        return {"mode": "head", "loss": "softmax", "value": self.value}
