"""What every command shares: the towers, the device, images from paths, a saved adapter."""

from __future__ import annotations

import argparse
import os

import torch

from ..models.common.errors import LitError
from ..models.towers.spec import DEFAULT_VIEWS, VIEWS, VIEWS_TOOLTIP

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def towers(args: argparse.Namespace):
    from ..models.towers.image_tower import load_image_tower
    from ..models.towers.text_tower import load_text_tower
    from ..models.tuning.distributed import local_device

    device = local_device(device_name(args))
    return (load_image_tower(args.image_encoder or None, device=device, views=args.image_views),
            load_text_tower(args.text_encoder or None, device=device))


def device_name(args: argparse.Namespace) -> str:
    return args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def add_tower_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-encoder", default="", help="HF folder or .safetensors (default: embedded MiniLM)")
    p.add_argument("--image-encoder", default="", help="HF folder or .safetensors (default: embedded "
                                                       "EfficientNet-Lite0)")
    p.add_argument("--image-views", default=DEFAULT_VIEWS, choices=list(VIEWS), help=VIEWS_TOOLTIP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")


def image_files(paths: list[str]) -> list[str]:
    """Image files from files and folders (a folder's images sorted by name)."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS))
        else:
            files.append(p)
    if not files:
        raise LitError("no images given.", input_name="images", fix="pass image files or folders.")
    return files


def loaded_model(args: argparse.Namespace):
    from ..models.tuning.lit_model import load_adapter

    image, text = towers(args)
    return load_adapter(args.adapter, image, text, force=args.force)
