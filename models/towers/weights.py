"""Find and read a model's weights: a single ``.safetensors`` file or an HF folder (single or sharded)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..common.errors import LitError
from ..common.safetensors_io import PICKLE_EXTENSIONS, load_tensors


@dataclass
class WeightSource:
    """What a loader found at a path: the tensors, an HF ``config.json`` if any, and where tokenizer files may be."""

    path: str
    state: dict[str, torch.Tensor]
    config: dict | None = None
    folder: str | None = None  # HF folder (tokenizer / preprocessor files live here)
    extra_files: dict[str, str] = field(default_factory=dict)


def _companion_config(path: str) -> dict | None:
    # A single file may bring its config as `<stem>.json` or `<stem>/config.json` beside it.
    stem = os.path.splitext(path)[0]
    for cand in (stem + ".json", os.path.join(stem, "config.json")):
        if os.path.isfile(cand):
            with open(cand, encoding="utf-8") as fh:
                return json.load(fh)
    return None


def read_weights(path: str, *, input_name: str) -> WeightSource:
    """Tensors (CPU) and config of a single safetensors file or an HF folder; pickles are refused."""
    if not os.path.exists(path):
        raise LitError(f"'{path}' does not exist.", input_name=input_name,
                       fix="check the name; put the model in the folder the node lists.")
    if os.path.isfile(path):
        return WeightSource(path=path, state=load_tensors(path, input_name=input_name),
                            config=_companion_config(path), folder=None)

    config_path = os.path.join(path, "config.json")
    config = None
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    index = os.path.join(path, "model.safetensors.index.json")
    files: list[str]
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".sft")))
    if not files:
        pickles = [f for f in os.listdir(path) if os.path.splitext(f)[1].lower() in PICKLE_EXTENSIONS]
        what = f" (only pickle weights: {', '.join(pickles)})" if pickles else ""
        raise LitError(f"no .safetensors weights in folder '{path}'{what}.", input_name=input_name,
                       fix="download the model's .safetensors files into that folder; this pack never unpickles.")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_tensors(os.path.join(path, f), input_name=input_name))
    return WeightSource(path=path, state=state, config=config, folder=path)


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove the first of ``prefixes`` that every matching key starts with (e.g. ``bert.``, ``model.``)."""
    for p in prefixes:
        if any(k.startswith(p) for k in state):
            return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    return state


def count_layers(state: dict[str, torch.Tensor], stem: str) -> int:
    """Number of numbered blocks under ``stem`` (e.g. ``encoder.layer.``)."""
    ids = set()
    for k in state:
        if k.startswith(stem):
            head = k[len(stem):].split(".", 1)[0]
            if head.isdigit():
                ids.add(int(head))
    return (max(ids) + 1) if ids else 0


# Attention heads cannot be read from weight shapes; these are the widths of the released towers.
KNOWN_HEADS = {128: 2, 192: 3, 256: 4, 312: 12, 384: 12, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1536: 24,
               1664: 16}


def guess_heads(hidden: int, table: dict[int, int] | None = None) -> int:
    """Heads for a width: the released towers' value, else 64-wide heads."""
    table = table or KNOWN_HEADS
    if hidden in table:
        return table[hidden]
    return max(1, hidden // 64)
