"""A fixed, fast dual encoder for the retrieval tests: an image is its mean colour plus a constant "photo"
component (a real ImageTower, so the embedding cache and the search index treat it like any tower), a text is the
sum of the colour words in it plus half that component (generic text, with no colour word, is mostly the photo
component). Its answers are known, so tests assert exact behaviour."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_lit.models.towers.image_tower import ImageTower

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class MeanColour(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = self.proj(x.mean(dim=(2, 3)))
        return torch.cat([rgb, torch.full_like(rgb[:, :1], 0.5)], dim=1)


def colour_tower() -> ImageTower:
    return ImageTower(MeanColour(), embed_dim=4, input_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      name="mean-colour", kind="cnn", crop=False)


class ColourModel:
    """Duck-typed like LitModel (image_tower, encode_image, encode_text, logit_scale/bias, loss_name)."""

    device = torch.device("cpu")

    def __init__(self, *, loss_name: str = "softmax", scale: float = 20.0, bias: float = 0.0) -> None:
        self.image_tower = colour_tower()
        self.logit_scale = torch.tensor(scale)
        self.logit_bias = torch.tensor(bias)
        self.loss_name = loss_name
        self.text_calls = 0
        self.nan_text = False

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower.embed(images), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        self.text_calls += 1
        out = []
        for t in texts:
            v = sum((torch.tensor(c) for w, c in COLOURS.items() if w in t.lower()), torch.zeros(3))
            out.append(torch.cat([v, torch.tensor([0.5])]) if float(v.sum()) else torch.tensor([0.3, 0.3, 0.3, 1.0]))
        emb = F.normalize(torch.stack(out), dim=-1)
        return emb * float("nan") if self.nan_text else emb


def solid(*rgb, size: int = 6) -> torch.Tensor:
    return torch.stack([torch.tensor(c, dtype=torch.float32).expand(size, size, 3).clone() for c in rgb])


def write_png(path: str, rgb, size: int = 12) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:] = (np.array(rgb) * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path
