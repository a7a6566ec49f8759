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
    openclip_config: dict | None = None  # OpenCLIP's open_clip_config.json ({"model_cfg": ..., "preprocess_cfg": ...})


def read_json(path: str, *, input_name: str, what: str = "config file") -> dict:
    """A JSON object from ``path``; a damaged or non-object file is a clear error, not a JSONDecodeError."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except UnicodeDecodeError:
        raise LitError(f"the {what} '{name}' is not UTF-8 text.", input_name=input_name,
                       fix=f"replace '{path}' with the model's original file, or delete it.") from None
    except json.JSONDecodeError as err:
        raise LitError(f"the {what} '{name}' is not valid JSON ({err.msg} at line {err.lineno}).",
                       input_name=input_name,
                       fix=f"replace '{path}' with the model's original file, or delete it.") from None
    except OSError as err:
        raise LitError(f"could not read the {what} '{name}': {err.strerror}.", input_name=input_name,
                       fix="check the file's permissions.") from None
    if not isinstance(data, dict):
        raise LitError(f"the {what} '{name}' holds a {type(data).__name__}, not a JSON object.",
                       input_name=input_name, fix=f"replace '{path}' with the model's original file, or delete it.")
    return data


def _split_config(data: dict | None) -> tuple[dict | None, dict | None]:
    # OpenCLIP's hub repos ship open_clip_config.json ({"model_cfg": ...}); HF repos ship config.json.
    if data is not None and isinstance(data.get("model_cfg"), dict):
        return None, data
    return data, None


def _companion_config(path: str, input_name: str) -> tuple[dict | None, dict | None]:
    # A single file may bring its config as `<stem>.json` or `<stem>/config.json` beside it; OpenCLIP's layout
    # (`open_clip_model.safetensors` + `open_clip_config.json`) is recognised too.
    stem = os.path.splitext(path)[0]
    folder = os.path.dirname(path)
    cands = [stem + ".json", os.path.join(stem, "config.json"), os.path.join(stem, "open_clip_config.json")]
    if os.path.basename(stem).startswith("open_clip"):
        cands.append(os.path.join(folder, "open_clip_config.json"))
    config = openclip = None
    for cand in cands:
        if os.path.isfile(cand):
            hf, oc = _split_config(read_json(cand, input_name=input_name))
            config = config or hf
            openclip = openclip or oc
    return config, openclip


def read_weights(path: str, *, input_name: str) -> WeightSource:
    """Tensors (CPU) and config of a single safetensors file or an HF folder; pickles are refused."""
    if not os.path.exists(path):
        raise LitError(f"'{path}' does not exist.", input_name=input_name,
                       fix="check the name; put the model in the folder the node lists.")
    if os.path.isfile(path):
        config, openclip = _companion_config(path, input_name)
        return WeightSource(path=path, state=load_tensors(path, input_name=input_name), config=config,
                            folder=None, openclip_config=openclip)

    config_path = os.path.join(path, "config.json")
    config = read_json(config_path, input_name=input_name) if os.path.isfile(config_path) else None
    oc_path = os.path.join(path, "open_clip_config.json")
    openclip = read_json(oc_path, input_name=input_name) if os.path.isfile(oc_path) else None
    if openclip is not None and not isinstance(openclip.get("model_cfg"), dict):
        raise LitError(f"'{oc_path}' has no \"model_cfg\" object.", input_name=input_name,
                       fix="replace it with the model's original open_clip_config.json, or delete it.")
    index = os.path.join(path, "model.safetensors.index.json")
    files: list[str]
    if os.path.isfile(index):
        weight_map = read_json(index, input_name=input_name, what="weights index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise LitError(f"'{index}' has no valid \"weight_map\".", input_name=input_name,
                           fix="replace it with the model's original index file.")
        files = sorted(set(weight_map.values()))
        if any(os.path.isabs(f) or ".." in f.replace("\\", "/").split("/") for f in files):
            raise LitError(f"'{index}' points outside its folder.", input_name=input_name,
                           fix="replace it with the model's original index file.")
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
    return WeightSource(path=path, state=state, config=config, folder=path, openclip_config=openclip)


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
    # heads must divide the width: the most heads of at least 64 wide that do
    return next(h for h in range(max(1, hidden // 64), 0, -1) if hidden % h == 0)
