"""Writing files so that a crash, a kill or two concurrent saves never leave half a file or lose one.

How a save works (:func:`save_tensors_atomic`):

1. A private temporary folder ``.tmp-<pid>-<random>`` is made beside the target. safetensors' ``save_file`` does
   its own temp-and-rename, so its ``.tmpXXXXXX`` lands inside our folder, never beside the user's files: a kill
   at any moment leaves exactly one entry, which the next save in that folder removes (its writer is dead).
2. The file is fsynced, then published: ``os.replace`` when overwriting, else ``os.link``, which fails if the name
   exists, so two concurrent saves of one name can never both succeed (the loser gets a ``LitError``, or with
   ``unique=True`` the next free ``name_0001`` that it reports).
3. The folder is fsynced, so the rename itself survives a power cut.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time
import unicodedata
from collections.abc import Mapping

import torch
from safetensors.torch import save_file

from .errors import LitError

TMP_PREFIX = ".tmp-"
# Temp entries whose writer can't be identified (older versions, safetensors' own) are removed after this long.
STALE_TMP_SECONDS = 3600.0
MAX_NAME_BYTES = 255  # one path component on every common file system
_MAX_UNIQUE = 10000


def _fsync_path(path: str, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. directories can't be opened on Windows; nothing more we can do there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else, or we can't tell: keep it
    return True


_OURS = re.compile(r"^\.tmp-(\d+)-")


def clean_stale_temps(folder: str) -> list[str]:
    """Remove temporary entries left in ``folder`` by killed saves; returns what was removed.

    Ours carry the writer's pid and go as soon as that process is gone; anonymous ones (``.tmp*`` from older
    versions or from safetensors itself) go once they are an hour old, so a save running right now is never hit.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(".tmp"):
            continue
        m = _OURS.match(entry.name)
        try:
            if m:
                stale = not _pid_alive(int(m.group(1)))
            else:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
            if not stale:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.remove(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed


def _umask_mode() -> int:
    # Temp files are created 0600; a saved model gets the usual permissions (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _numbered(path: str, n: int) -> str:
    base, ext = os.path.splitext(path)
    return f"{base}_{n:04d}{ext}"


def _publish(tmp: str, path: str, *, overwrite: bool, unique: bool, input_name: str) -> str:
    if overwrite:
        if os.path.isdir(path):
            raise LitError(f"'{path}' is a folder; a file can't be saved over it.", input_name=input_name,
                           fix="choose another name, or move that folder away.")
        os.replace(tmp, path)
        return path
    for n in range(_MAX_UNIQUE if unique else 1):
        target = _numbered(path, n) if n else path
        try:
            os.link(tmp, target)  # atomic and exclusive: fails when the name exists, even if created a moment ago
        except FileExistsError:
            if not unique:
                what = "a folder" if os.path.isdir(target) else "a file"
                raise LitError(f"'{target}' already exists ({what}); nothing was overwritten.", input_name=input_name,
                               fix="choose another name, or turn 'overwrite' on to replace a file.") from None
            continue
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links here (FAT, some network shares): reserve the name exclusively, then replace it.
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                if not unique:
                    raise LitError(f"'{target}' already exists; nothing was overwritten.", input_name=input_name,
                                   fix="choose another name, or turn 'overwrite' on.") from None
                continue
            os.replace(tmp, target)
            return target
        os.remove(tmp)
        return target
    raise LitError(f"no free name for '{path}' after {_MAX_UNIQUE} tries.", input_name=input_name,
                   fix="choose another name.")


def save_tensors_atomic(tensors: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, str] | None = None,
                        *, overwrite: bool = True, unique: bool = False, input_name: str = "filename") -> str:
    """Write a safetensors file under a temporary name, fsync it and publish it; returns the path written.

    ``overwrite=False`` never replaces an existing file: a ``LitError`` says so, or with ``unique=True`` the first
    free ``<name>_0001.safetensors``, ``_0002``... is used (atomically, so concurrent saves get distinct names).
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    check_file_name(os.path.basename(path), input_name=input_name)
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LitError(f"'{folder}' is a file, not a folder.", input_name=input_name,
                       fix="choose a name whose folders are not existing files.") from None
    if os.path.isdir(path) and not (unique and not overwrite):  # unique: the folder's name is taken, use the next
        raise LitError(f"'{path}' is a folder; a file can't be saved over it.", input_name=input_name,
                       fix="choose another name, or move that folder away.")
    clean_stale_temps(folder)
    tmp_dir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=folder)
    try:
        tmp = os.path.join(tmp_dir, "data.safetensors")
        clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        save_file(clean, tmp, metadata=dict(metadata) if metadata else None)
        os.chmod(tmp, _umask_mode())
        _fsync_path(tmp)
        out = _publish(tmp, path, overwrite=overwrite, unique=unique, input_name=input_name)
        _fsync_path(folder, directory=True)
        return out
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise LitError(f"the name '{os.path.basename(path)}' is too long for the file system.",
                           input_name=input_name, fix="use a shorter name.") from None
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


_UNSAFE = re.compile(r"[^\w.\- ]", re.UNICODE)


def check_file_name(name: str, *, input_name: str = "filename") -> str:
    """Refuse names no file system takes (over 255 bytes, empty) with a clear error; returns ``name``."""
    if not name or name in (".", ".."):
        raise LitError(f"'{name}' is not a usable file name.", input_name=input_name, fix="give a name.")
    size = len(os.fsencode(name))
    if size > MAX_NAME_BYTES:
        raise LitError(f"the name '{name[:40]}...' is {size} bytes; file systems allow {MAX_NAME_BYTES}.",
                       input_name=input_name, fix="use a shorter name.")
    return name


def safe_relative_name(filename: str, *, extension: str = ".safetensors", input_name: str = "filename",
                       reserve: int = 5) -> str:
    """A user-typed name made safe inside a model folder: ``sub/name`` with the extension added.

    Unicode letters and digits are kept (``Modèle_猫`` stays readable); other characters become ``_``; leading
    dots are dropped so nothing is saved as a hidden file; ``..`` and absolute paths are refused, as are names
    that would be empty or too long (``reserve`` leaves room for a ``_0001`` suffix).
    """
    raw = unicodedata.normalize("NFC", str(filename or "")).strip().replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:/", raw):
        raise LitError(f"'{filename}' is an absolute path; give a name inside the model folder.",
                       input_name=input_name, fix="use a plain name, with '/' for sub-folders.")
    parts = [p for p in raw.split("/") if p.strip()]
    if any(p.strip() == ".." for p in parts):
        raise LitError(f"'{filename}' leaves the model folder ('..').", input_name=input_name,
                       fix="use a plain name, with '/' for sub-folders.")
    if parts and parts[-1].lower().endswith(extension):
        parts[-1] = parts[-1][: -len(extension)]
    clean = []
    for p in parts:
        p = _UNSAFE.sub("_", p).strip().lstrip(".").strip()
        if p.strip("._- "):
            clean.append(p)
    if not clean:
        raise LitError(f"'{filename}' is not a usable file name (nothing but dots, spaces or symbols).",
                       input_name=input_name, fix="use letters or digits, e.g. 'my_adapter'.")
    for i, p in enumerate(clean):
        last = i == len(clean) - 1
        size = len(os.fsencode(p + (extension if last else ""))) + (reserve if last else 0)
        if size > MAX_NAME_BYTES:
            raise LitError(f"the name '{p[:40]}...' is too long ({size} bytes with its extension; file systems "
                           f"allow {MAX_NAME_BYTES}).", input_name=input_name, fix="use a shorter name.")
    return "/".join(clean) + extension
