"""Safe reading of weight files (writing is in ``atomic.py``).

We load safetensors only and never unpickle a file a user dropped into a folder: ``.ckpt``/``.pt``/``.bin``
are refused with a message saying how to convert them. Files are checked before loading (header readable,
declared sizes fit the file) so a truncated download gives a clear error instead of a crash in the loader.
"""

from __future__ import annotations

import json
import os
import struct

import torch
from safetensors import safe_open

from .errors import LitError

PICKLE_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
SAFETENSORS_EXTENSIONS = {".safetensors", ".sft"}
_CONVERT_HINT = ("convert it once with `python -c \"import torch; from safetensors.torch import save_file; "
                 "save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"` (only for files you trust), "
                 "or download the .safetensors version.")


def read_header(path: str, *, input_name: str = "file") -> dict:
    """The JSON header of a safetensors file, after checking the file is complete."""
    if not os.path.exists(path):
        raise LitError(f"'{path}' does not exist.", input_name=input_name, fix="check the file name and folder.")
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        raise LitError(f"'{os.path.basename(path)}' is a pickle checkpoint ({ext}); this pack loads safetensors only "
                       "because unpickling can run arbitrary code.", input_name=input_name, fix=_CONVERT_HINT)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise LitError(f"'{os.path.basename(path)}' is empty or truncated ({size} bytes).",
                           input_name=input_name, fix="download the file again.")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(size - 8, 100 * 1024 * 1024):
            raise LitError(f"'{os.path.basename(path)}' is not a safetensors file (bad header length).",
                           input_name=input_name, fix="use a .safetensors file; " + _CONVERT_HINT)
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LitError(f"'{os.path.basename(path)}' has a corrupt safetensors header ({err}).",
                           input_name=input_name, fix="download the file again.") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise LitError(f"'{os.path.basename(path)}' is truncated: the header declares {8 + n + end} bytes but the "
                       f"file has {size}.", input_name=input_name, fix="the download was cut short; download it again.")
    return header


def read_metadata(path: str, *, input_name: str = "file") -> dict[str, str]:
    """The string-to-string ``__metadata__`` of a safetensors file (empty dict when absent)."""
    return dict(read_header(path, input_name=input_name).get("__metadata__") or {})


def tensor_shapes(path: str, *, input_name: str = "file") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a file, without reading any data."""
    header = read_header(path, input_name=input_name)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def load_tensors(path: str, *, input_name: str = "file", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checked safetensors file."""
    read_header(path, input_name=input_name)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(path, framework="pt", device=str(device)) as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise LitError(f"could not read '{os.path.basename(path)}': {err}", input_name=input_name,
                       fix="download the file again.") from None
    return out
