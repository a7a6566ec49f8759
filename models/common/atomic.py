"""Writing files so that a crash, a kill or two concurrent saves never leave half a file or lose one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import torch
from safetensors.torch import save_file


def _publish(tmp: str, path: str) -> None:
    # mkstemp creates 0600 files; a saved model should get the usual permissions (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_tensors_atomic(tensors: Mapping[str, torch.Tensor], path: str,
                        metadata: Mapping[str, str] | None = None) -> str:
    """Write a safetensors file under a temporary name, then rename it, so a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(clean, tmp, metadata=dict(metadata) if metadata else None)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text_atomic(text: str, path: str) -> str:
    """Write a small text file under a temporary name, then rename it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
