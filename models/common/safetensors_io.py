"""Safe reading of weight files (writing is in ``atomic.py``).

We load safetensors only and never unpickle a file a user dropped into a folder: ``.ckpt``/``.pt``/``.bin``
are refused with a message saying how to convert them. The file is opened with the safetensors library, which
validates the header (JSON object, every entry a tensor with dtype/shape/data_offsets, offsets covering the file);
whatever it rejects becomes one clear error instead of a crash inside a loader.
"""

from __future__ import annotations

import os
import struct

import torch
from safetensors import SafetensorError, safe_open

from .errors import LitError

PICKLE_EXTENSIONS = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
SAFETENSORS_EXTENSIONS = {".safetensors", ".sft"}
_CONVERT_HINT = ("convert it once with `python -c \"import torch; from safetensors.torch import save_file; "
                 "save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"` (only for files you trust), "
                 "or download the .safetensors version.")


def _check_path(path: str, input_name: str) -> None:
    if not os.path.exists(path):
        raise LitError(f"'{path}' does not exist.", input_name=input_name, fix="check the file name and folder.")
    if os.path.isdir(path):
        raise LitError(f"'{path}' is a folder, not a .safetensors file.", input_name=input_name,
                       fix="pick the .safetensors file itself.")
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        raise LitError(f"'{os.path.basename(path)}' is a pickle checkpoint ({ext}); this pack loads safetensors only "
                       "because unpickling can run arbitrary code.", input_name=input_name, fix=_CONVERT_HINT)


def _explain(path: str, err: Exception, input_name: str) -> LitError:
    """The safetensors library's rejection, in the user's words: truncated download or not a safetensors file."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(9)
    msg = str(err)
    if size < 8 or "header too small" in msg:
        return LitError(f"'{name}' is empty or truncated ({size} bytes).", input_name=input_name,
                        fix="download the file again.")
    (n,) = struct.unpack("<Q", head[:8])
    if "incomplete metadata" in msg or (2 <= n <= 100 * 2**20 and 8 + n > size and head[8:9] == b"{"):
        return LitError(f"'{name}' is truncated: its header declares more data than the file's {size} bytes.",
                        input_name=input_name, fix="the download was cut short; download it again.")
    if "invalid JSON" in msg or "header too large" in msg or "invalid" in msg.lower():
        detail = msg.split("header:", 1)[-1].strip()[:200]
        return LitError(f"'{name}' is not a safetensors file, or its header is corrupt ({detail}).",
                        input_name=input_name, fix="use a .safetensors file; download it again if it is one.")
    return LitError(f"could not read '{name}': {msg[:200]}", input_name=input_name, fix="download the file again.")


def _open(path: str, input_name: str, device: str = "cpu"):
    _check_path(path, input_name)
    try:
        return safe_open(path, framework="pt", device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise _explain(path, err, input_name) from None


def read_metadata(path: str, *, input_name: str = "file") -> dict[str, str]:
    """The string-to-string ``__metadata__`` of a safetensors file (empty dict when absent)."""
    with _open(path, input_name) as f:
        return dict(f.metadata() or {})


def tensor_shapes(path: str, *, input_name: str = "file") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a file, without reading any data."""
    with _open(path, input_name) as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def load_tensors(path: str, *, input_name: str = "file", device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checked safetensors file."""
    out: dict[str, torch.Tensor] = {}
    with _open(path, input_name, str(device)) as f:
        try:
            for key in f.keys():
                out[key] = f.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise _explain(path, err, input_name) from None
    return out
