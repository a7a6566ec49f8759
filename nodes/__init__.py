"""ComfyUI node classes: thin wrappers that translate between the graph and the engine in ``models/``.

One module per feature. Each import is explicit; a feature whose optional dependency is missing is reported in
ComfyUI's log and left out, without taking the rest of the pack down.
"""

from __future__ import annotations

import logging

from .host import register_model_folders

register_model_folders()

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}


def _add(feature: str, module) -> None:
    NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)


def _unavailable(feature: str, err: ImportError) -> None:  # pragma: no cover - seen in ComfyUI's log
    logging.getLogger(__name__).warning("ComfyUI-LiT: feature '%s' unavailable: %s", feature, err)


try:
    from . import loaders
    _add("loaders", loaders)
except ImportError as _err:
    _unavailable("loaders", _err)
try:
    from . import tuning
    _add("tuning", tuning)
except ImportError as _err:
    _unavailable("tuning", _err)
try:
    from . import zero_shot
    _add("zero_shot", zero_shot)
except ImportError as _err:
    _unavailable("zero_shot", _err)
try:
    from . import retrieval
    _add("retrieval", retrieval)
except ImportError as _err:
    _unavailable("retrieval", _err)
try:
    from . import enhancement
    _add("enhancement", enhancement)
except ImportError as _err:
    _unavailable("enhancement", _err)
try:
    from . import restoration
    _add("restoration", restoration)
except ImportError as _err:
    _unavailable("restoration", _err)
try:
    from . import attention_patch
    _add("attention_patch", attention_patch)
except ImportError as _err:
    _unavailable("attention_patch", _err)
