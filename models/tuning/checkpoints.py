"""Resumable training checkpoints: rank 0 writes ``ckpt-<step>.safetensors`` atomically; resume picks the newest
intact one that belongs to this run and says clearly why it refuses one that doesn't."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from ..common.safetensors_io import load_tensors, read_metadata
from . import distributed as dist_

CHECKPOINT_RE = re.compile(r"^ckpt-(\d{8})\.safetensors$")
# What a checkpoint must hold to be resumed from; a file missing any of it is treated as damaged.
_META_KEYS = ("step", "optimizer", "scheduler", "history", "val_history", "best_step", "best_score")


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint file in ``folder``, newest first."""
    if not folder or not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, f)) for f in os.listdir(folder) if (m := CHECKPOINT_RE.match(f))]
    return sorted(found, reverse=True)


def latest_checkpoint(folder: str) -> str | None:
    """The checkpoint of the highest step in ``folder`` (None when there is none); not checked for damage."""
    found = list_checkpoints(folder)
    return found[0][1] if found else None


def save_checkpoint(folder: str, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    keep: int = 2) -> str | None:
    """Rank 0 writes ``folder/ckpt-<step>.safetensors`` and keeps the newest ``keep``; every rank then waits, so
    none runs ahead of a checkpoint that a crash would need."""
    path = None
    if dist_.is_main():
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"ckpt-{step:08d}.safetensors")
        save_tensors_atomic(tensors, path, metadata={"lit_checkpoint": json.dumps(meta)})
        # Only this run's own older files are pruned (a stray higher step is never "newest" here).
        mine = [(s, p) for s, p in list_checkpoints(folder) if s <= step]
        for _, old in mine[keep:]:
            try:
                os.remove(old)
            except OSError:
                pass
    dist_.barrier()
    return path


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of one checkpoint; ``LitError`` when it is not one or is damaged."""
    meta = read_metadata(path, input_name="checkpoint_dir")
    if "lit_checkpoint" not in meta:
        raise LitError(f"'{path}' is not a LiT training checkpoint.", input_name="checkpoint_dir",
                       fix="point --checkpoint-dir at a folder written by --checkpoint-every.")
    try:
        info = json.loads(meta["lit_checkpoint"])
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or any(k not in info for k in _META_KEYS):
        raise LitError(f"checkpoint '{path}' has damaged metadata.", input_name="checkpoint_dir",
                       fix="delete it; an older checkpoint is used when there is one.")
    tensors = load_tensors(path, input_name="checkpoint_dir")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # a NaN state resumed would train on (or hand on) garbage: fall back to an older intact checkpoint
        raise LitError(f"checkpoint '{path}' holds NaN or infinite values ({', '.join(bad[:3])}).",
                       input_name="checkpoint_dir", fix="delete it; an older checkpoint is used when there is one.")
    if "sampler.gen" not in tensors or "sampler.order" not in tensors:
        raise LitError(f"checkpoint '{path}' lacks the sampler state.", input_name="checkpoint_dir",
                       fix="delete it; an older checkpoint is used when there is one.")
    return tensors, info


def find_resumable(folder: str, max_step: int) -> tuple[tuple[dict, dict] | None, str | None, list[str]]:
    """The newest intact checkpoint of at most ``max_step`` steps: ``(checkpoint, path, notes)``; notes say which
    files were passed over and why (a stray higher step, a damaged file)."""
    notes: list[str] = []
    for step, path in list_checkpoints(folder):
        if step > max_step:
            notes.append(f"{os.path.basename(path)} skipped (step {step} is past this run's {max_step} steps)")
            continue
        try:
            return load_checkpoint(path), path, notes
        except Exception as err:  # noqa: BLE001 - any damage: fall back to an older intact checkpoint
            notes.append(f"{os.path.basename(path)} skipped ({getattr(err, 'message', None) or err})")
    return None, None, notes


def check_compatible(meta: dict, want: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint of another run, naming each setting that differs and the input that sets it."""
    inputs = {"lora_rank": "lora_rank", "mode": "mode", "loss": "loss", "global_batch": "batch_size",
              "n_train": "dataset", "seed": "seed", "steps": "steps", "image_tower": "image_tower",
              "text_tower": "text_tower"}
    diff = [k for k, v in want.items() if k in meta and meta.get(k) != v]
    if diff:
        shown = "; ".join(f"{k} {meta.get(k)!r} -> {want[k]!r}" for k in diff)
        raise LitError(f"checkpoint '{path}' was written by a different run ({shown}).",
                       input_name=inputs.get(diff[0], "resume"),
                       fix="resume with the same data, towers and settings (global batch = batch size x processes), "
                           "or use a fresh --checkpoint-dir.")


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict as named tensors + JSON-able rest (safetensors stores only tensors)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if name.startswith("optim."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, rest in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(rest)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
