"""Command line: the same engine as the nodes, for servers and scripts.

    python -m comfyui_lit demo                       # the main job on the embedded towers
    python -m comfyui_lit train DATA --out a.safetensors [--text-encoder P] [--image-encoder P] [--mode lora]
    python -m comfyui_lit train --shards 'data/shard-{000..099}.tar' --out a.safetensors   # WebDataset tars
    torchrun --nproc_per_node=8 -m comfyui_lit train DATA --out a.safetensors \
        --checkpoint-dir ckpt --checkpoint-every 500 --resume                            # scale-out, resumable
    python -m comfyui_lit classify IMAGES... --adapter a.safetensors --labels "cat;dog"
    python -m comfyui_lit score IMAGES... --adapter a.safetensors --prompts "a cat;a dog"
    python -m comfyui_lit tag FOLDER --adapter a.safetensors --vocabulary-file tags.txt --write   # LoRA captions
    python -m comfyui_lit caption FOLDER --adapter a.safetensors --candidates "a photo of {tags}" --vocabulary "dog;sky"
    python -m comfyui_lit search FOLDER --adapter a.safetensors --query "a red car" --like ref.png -k 10
    python -m comfyui_lit restore IMAGE --task denoise --prior ffdnet.safetensors --out OUT.png
"""

from __future__ import annotations

import argparse
import sys

from .environment import repair_torchvision_import

# The package's __init__ has normally run this already; it stays for a cli imported under a bare parent package
# (tests/fuzz/test_fuzz_training.py does, to skip the nodes), where it must run before transformers is imported.
repair_torchvision_import()

from ..models.common.errors import LitError  # noqa: E402
from . import attention, restoration, retrieval, tuning, zero_shot  # noqa: E402

# One module per feature; each adds its subcommands.
COMMANDS = [tuning, zero_shot, retrieval, restoration, attention]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyui_lit", description="Locked-image Tuning (LiT) from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
