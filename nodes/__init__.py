"""ComfyUI node classes: thin wrappers that translate between the graph and the engine in ``models/``."""

from __future__ import annotations

import importlib
import logging

from .host import register_model_folders

register_model_folders()

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}

# One file per feature. A feature whose optional dependency is missing must not take the whole pack down.
_FEATURES = ["loaders", "tuning", "zero_shot", "enhancement", "restoration", "attention_patch"]

for _name in _FEATURES:
    try:
        _mod = importlib.import_module(f".{_name}", __name__)
    except ImportError as _err:  # pragma: no cover - reported in ComfyUI's log, pack still loads
        logging.getLogger(__name__).warning("ComfyUI-LiT: feature '%s' unavailable: %s", _name, _err)
        continue
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
