"""The tower architecture registry: detect -> map keys -> build -> load, strictly.

Each layout this pack loads is one :class:`Architecture`: how to recognise it from its tensor names (or from the
``model_type`` of a ``config.json`` beside the file, which wins over recognition), how to map its keys onto the
model we build, and which of the file's tensors it knowingly does not use (``ignorable``: buffers such as
``position_ids``, the other tower of a two-tower file, a classifier head). Everything else must be used: a tensor
that no part of the model takes, or a weight the model needs that the file lacks, is refused with the list of
names, because a silently dropped tensor gives wrong embeddings with no error (OpenCLIP's LayerScale was once).
Weights must also be finite: NaN/Inf weights would only surface later as NaN embeddings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..common.errors import LitError

try:  # transformers 5 configs are strict dataclasses: a wrong-typed field raises this (not a ValueError)
    from huggingface_hub.errors import StrictDataclassError as _StrictError
except ImportError:  # older huggingface_hub
    _StrictError = ValueError
CONFIG_ERRORS: tuple[type[Exception], ...] = (TypeError, ValueError, _StrictError)

# Buffers that some checkpoints carry and models rebuild themselves.
BUFFERS = (r"(^|\.)position_ids$", r"(^|\.)attn_mask$", r"(^|\.)num_batches_tracked$")


@dataclass(frozen=True)
class Architecture:
    """One tower layout: recognised by ``matches`` (or a config's ``model_type``), prepared by ``prepare``."""

    name: str
    side: str  # "text" | "image"
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    prepare: Callable[..., Any]  # (source, *, input_name, **kw) -> TextArch | VisionArch
    model_types: tuple[str, ...] = ()  # config.json model_type values that select this layout
    ignorable: tuple[str, ...] = ()  # regexes (searched in the key under the tower's prefix) of unused tensors
    description: str = ""


REGISTRY: list[Architecture] = []


def register(arch: Architecture) -> Architecture:
    REGISTRY.append(arch)
    return arch


def architectures(side: str) -> list[Architecture]:
    return [a for a in REGISTRY if a.side == side]


def detect(side: str, source, *, input_name: str, what: str, fix: str, **kwargs):
    """Pick the architecture for ``source`` (a :class:`~.weights.WeightSource`) and prepare it."""
    cfg = source.config or {}
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    candidates = architectures(side)
    if model_type:
        typed = [a for a in candidates if model_type in a.model_types]
        if not typed:
            typed = [a for a in candidates if "*" in a.model_types]
        if not typed:
            raise LitError(f"the config.json beside '{source.path}' says model_type '{model_type}', which this pack "
                           f"does not load as {what}.", input_name=input_name,
                           fix="remove or correct the config.json, or pick a supported model (see the README).")
        chosen = next((a for a in typed if a.matches(source.state)), None)
        if chosen is None:
            raise LitError(f"the config.json beside '{source.path}' says model_type '{model_type}' but the weights are "
                           f"not laid out as that model (first keys: {_sample(source.state)}).",
                           input_name=input_name, fix="the config belongs to another model; remove or replace it.")
        return chosen.prepare(source, input_name=input_name, arch=chosen, **kwargs)
    for a in candidates:
        if a.matches(source.state):
            return a.prepare(source, input_name=input_name, arch=a, **kwargs)
    raise LitError(f"'{source.path}' is not {what} this pack recognises (first keys: {_sample(source.state)}).",
                   input_name=input_name, fix=fix)


def _sample(state: Mapping[str, Any], n: int = 4) -> str:
    return ", ".join(sorted(state)[:n]) or "none"


def _names(keys: Iterable[str], n: int = 6) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def is_ignorable(key: str, patterns: Iterable[str]) -> bool:
    return any(re.search(p, key) for p in (*BUFFERS, *patterns))


@dataclass
class Mapped:
    """A tower's tensors in the layout of the model we build, and what the file held besides."""

    state: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)  # file tensors knowingly unused (other tower, buffers, heads)


def refuse_mismatch(path: str, *, unexpected: Iterable[str] = (), missing: Iterable[str] = (), what: str,
                    input_name: str) -> None:
    """One clear error listing the tensors a file has that the model does not use, and those it lacks."""
    unexpected, missing = sorted(set(unexpected)), sorted(set(missing))
    if not unexpected and not missing:
        return
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) this model would not use ({_names(unexpected)})")
    if missing:
        parts.append(f"{len(missing)} weight(s) it needs are missing ({_names(missing)})")
    raise LitError(f"'{os.path.basename(str(path))}' does not match a {what} exactly: " + "; ".join(parts) + ".",
                   input_name=input_name,
                   fix="it is a variant or a damaged file this pack cannot load without losing weights (see the "
                       "README's model table for the supported layouts); if it is a supported model with other sizes, "
                       "put its config.json beside the file, otherwise download it again or use the original release.")


def take_renamed(tower: Mapping[str, torch.Tensor], out: dict[str, torch.Tensor], used: set[str],
                 rename: Mapping[str, str], *, projection: tuple[str, str] | None = None) -> None:
    """Copy the tensors of ``tower`` that ``rename`` names (file key -> model key) into ``out``, and an OpenCLIP
    projection (``x @ P``, file key -> model key) as an ``nn.Linear`` weight (P^T); each one taken is marked used,
    so strict loading accounts for it."""
    for k, new in rename.items():
        if k in tower:
            out[new] = tower[k]
            used.add(k)
    if projection is not None:
        src, dst = projection
        if src in tower and tower[src].dim() == 2:
            out[dst] = tower[src].t().contiguous()
            used.add(src)


def check_used(path: str, tower_keys: Iterable[str], used: Iterable[str], patterns: Iterable[str], *, what: str,
               input_name: str) -> list[str]:
    """Refuse the tower's file tensors that no part of the model takes; returns the ignorable ones."""
    used = set(used)
    rest = [k for k in tower_keys if k not in used]
    ignored = [k for k in rest if is_ignorable(k, patterns)]
    refuse_mismatch(path, unexpected=[k for k in rest if k not in ignored], what=what, input_name=input_name)
    return ignored


def check_finite_state(state: Mapping[str, torch.Tensor], *, path: str, input_name: str) -> None:
    """Refuse NaN/Inf weights, naming the first tensor that has them."""
    bad = []
    for k, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad.append(k)
    if bad:
        first = state[bad[0]]
        n = int((~torch.isfinite(first)).sum())
        raise LitError(f"'{os.path.basename(str(path))}' has non-finite weights (NaN or Inf): {n} value(s) in "
                       f"'{bad[0]}'" + (f" and {len(bad) - 1} more tensor(s)" if len(bad) > 1 else "") + ".",
                       input_name=input_name,
                       fix="the file is damaged or came from a diverged training run; download it again or use "
                           "an earlier checkpoint.")
