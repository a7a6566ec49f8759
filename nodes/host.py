"""Everything the nodes need from ComfyUI, with plain fallbacks when ComfyUI is absent.

This is the only module that imports ``comfy``, ``folder_paths`` or ``server``. Each import is guarded so the
pack (and its tests, and the CLI) work without a host: model folders then come from ``$COMFYUI_LIT_MODELS``
(default ``./models``), progress goes to tqdm, interruption never fires and events are dropped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..models.common.atomic import clean_stale_temps
from ..models.common.errors import LitError
from ..models.common.validate import check_finite, check_image_batch

try:  # pragma: no cover - exercised only inside ComfyUI
    import folder_paths  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any failure means "no host"
    folder_paths = None

try:  # pragma: no cover
    import comfy.model_management as comfy_mm  # type: ignore[import-not-found]
    import comfy.utils as comfy_utils  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001
    comfy_mm = None
    comfy_utils = None

try:  # pragma: no cover
    from server import PromptServer  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001
    PromptServer = None

CATEGORY = "LiT"
LIT_FOLDER = "lit"
MODEL_EXTENSIONS = {".safetensors", ".sft", ".json"}

# Plain-Python stand-in for folder_paths: folder name -> sub-directories of the models dir.
_FALLBACK_FOLDERS = {
    "text_encoders": ["text_encoders", "clip"],
    "clip_vision": ["clip_vision"],
    LIT_FOLDER: [LIT_FOLDER],
}


def models_dir() -> str:
    """The models directory outside ComfyUI (env ``COMFYUI_LIT_MODELS``, else ``./models``)."""
    return os.environ.get("COMFYUI_LIT_MODELS", os.path.join(os.getcwd(), "models"))


def register_model_folders() -> None:
    """Register our ``models/lit`` folder for adapters next to ComfyUI's own folders."""
    if folder_paths is None:
        return
    path = os.path.join(folder_paths.models_dir, LIT_FOLDER)
    os.makedirs(path, exist_ok=True)
    clean_stale_temps(path)  # temp folders of saves killed in an earlier session
    if hasattr(folder_paths, "add_model_folder_path"):
        folder_paths.add_model_folder_path(LIT_FOLDER, path)
    if LIT_FOLDER in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[LIT_FOLDER]
        folder_paths.folder_names_and_paths[LIT_FOLDER] = (paths, set(exts) | {".safetensors"})


def folder_dirs(folder: str) -> list[str]:
    """All directories that make up a model folder (``text_encoders`` also covers the old ``clip``)."""
    if folder_paths is not None:
        try:
            return list(folder_paths.get_folder_paths(folder))
        except Exception:  # noqa: BLE001 - unknown folder name
            return []
    return [os.path.join(models_dir(), sub) for sub in _FALLBACK_FOLDERS.get(folder, [folder])]


def _walk_once(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` following symlinks, but entering each real directory once: a link loop (``a -> .``) can't hang
    the node list or list a file dozens of times. Hidden entries (``.tmp-*`` of a save in progress) are skipped."""
    seen: set[tuple[int, int] | str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
            ident: tuple[int, int] | str = (st.st_dev, st.st_ino)
        except OSError:
            ident = os.path.realpath(dirpath)
        if ident in seen:
            dirnames[:] = []
            continue
        seen.add(ident)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, dirnames, [f for f in filenames if not f.startswith(".")]


def list_models(folder: str, *, include_dirs: bool = True) -> list[str]:
    """Files (and HF model folders, which hold a ``config.json``) inside a model folder, relative names."""
    names: set[str] = set()
    if folder_paths is not None:
        try:
            names.update(n for n in folder_paths.get_filename_list(folder)
                         if os.path.splitext(n)[1].lower() in {".safetensors", ".sft"}
                         and not any(part.startswith(".") for part in n.replace("\\", "/").split("/")))
        except Exception:  # noqa: BLE001
            pass
    for root in folder_dirs(folder):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in _walk_once(root):
            rel = os.path.relpath(dirpath, root)
            if include_dirs and "config.json" in filenames and rel != ".":
                names.add(rel.replace(os.sep, "/"))
                dirnames[:] = []  # an HF folder is one model; don't list its shards
                continue
            for f in filenames:
                if os.path.splitext(f)[1].lower() in {".safetensors", ".sft"}:
                    names.add(os.path.normpath(os.path.join(rel, f)).replace(os.sep, "/"))
    return sorted(names)


def resolve_model(folder: str, name: str, *, input_name: str, node: str) -> str:
    """Full path of ``name`` inside a model folder, or a clear error saying where to put it."""
    if os.path.isabs(name) and os.path.exists(name):
        return name
    for root in folder_dirs(folder):
        path = os.path.join(root, name)
        if os.path.exists(path):
            return path
    where = ", ".join(folder_dirs(folder)) or f"models/{folder}"
    raise LitError(f"'{name}' was not found in the '{folder}' model folder ({where}).", input_name=input_name,
                   fix=f"put the file (or HF folder) in {where} and refresh the page (press 'r').", node=node)


def torch_device() -> torch.device:
    """The host's compute device (ComfyUI's choice inside ComfyUI, else CUDA when present, else CPU)."""
    if comfy_mm is not None:
        return comfy_mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_interrupted() -> None:
    """Raise the host's interruption exception when the user pressed Cancel."""
    if comfy_mm is not None:
        comfy_mm.throw_exception_if_processing_interrupted()


def interrupted_exception_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user cancelled' (so trainers can keep their best state)."""
    if comfy_mm is not None and hasattr(comfy_mm, "InterruptProcessingException"):
        return (comfy_mm.InterruptProcessingException, KeyboardInterrupt)
    return (KeyboardInterrupt,)


class Progress:
    """ComfyUI's progress bar inside the host, tqdm outside it. Call ``update(n)``; ``close()`` when done."""

    def __init__(self, total: int, desc: str = "LiT") -> None:
        self.total = max(int(total), 1)
        self._bar: Any
        if comfy_utils is not None:
            self._bar = comfy_utils.ProgressBar(self.total)
            self._tqdm = None
        else:
            from tqdm.auto import tqdm

            self._bar = None
            self._tqdm = tqdm(total=self.total, desc=desc, leave=False, disable=None)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()


def progress_callback(total: int, desc: str = "LiT") -> Callable[[int], None]:
    """A ``callback(step)`` for engine loops: advances the progress bar and honours Cancel."""
    bar = Progress(total, desc)
    done = [0]

    def callback(step: int) -> None:
        check_interrupted()
        if step > done[0]:
            bar.update(step - done[0])
            done[0] = step
        if step >= total:
            bar.close()

    return callback


def send_event(event: str, data: dict[str, Any]) -> None:
    """Send a custom event to the front-end (``api.addEventListener(event, ...)`` in JS); no-op without a host."""
    if PromptServer is None or getattr(PromptServer, "instance", None) is None:
        return
    try:
        PromptServer.instance.send_sync(event, data)
    except Exception:  # noqa: BLE001 - a UI hiccup must never fail a run
        pass


@contextmanager
def node_errors(node: str) -> Iterator[None]:
    """Inside a node, name the node in every :class:`LitError`."""
    try:
        yield
    except LitError as err:
        raise err.with_node(node) from err.__cause__


def with_node_errors(node: str) -> Callable:
    """Decorator form of :func:`node_errors` for a node's FUNCTION."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with node_errors(node):
                return fn(*args, **kwargs)

        return inner

    return wrap


def require_lit_model(obj: Any) -> None:
    """A clear error when something other than a LIT_MODEL reaches a LIT_MODEL input (the samplers duck-type it)."""
    if obj is None:
        raise LitError("nothing is connected.", input_name="lit_model",
                       fix="connect the output of 'LiT Load Adapter' or 'LiT Locked Tuning'.")
    if not all(hasattr(obj, member) for member in ("encode_image", "encode_text")):
        raise LitError(f"this input is not a LIT_MODEL (got {type(obj).__name__}).", input_name="lit_model",
                       fix="connect the output of 'LiT Load Adapter' or 'LiT Locked Tuning'.")


def require_images(images: Any, *, input_name: str = "image", channels: tuple[int, ...] = (1, 3, 4),
                   min_size: int = 1) -> torch.Tensor:
    """A node's IMAGE input checked once at the boundary: connected, ``[B,H,W,C]``, non-empty and finite.

    Returns the batch as ``[B,H,W,C]``; every node that takes images calls this (or ``check_image_batch``)."""
    if images is None:
        raise LitError("nothing is connected.", input_name=input_name, fix="connect an IMAGE output (e.g. Load Image).")
    return check_image_batch(images, input_name=input_name, channels=channels, min_size=min_size)


def require_finite(t: torch.Tensor, *, input_name: str, what: str = "values") -> torch.Tensor:
    """NaN/Inf in a node's tensor input (a mask, a latent, embeddings): the pack's clear error."""
    return check_finite(t, input_name=input_name, what=what)


@contextmanager
def trainable() -> Iterator[None]:
    """Nodes run under ``torch.inference_mode()``; optimisation inside a node needs it lifted."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _normal_tensor(x: Any) -> Any:
    # Inference tensors can't be saved for backward; a clone made outside inference mode is a normal tensor.
    return x.clone() if torch.is_tensor(x) and x.is_inference() else x


def trainable_node(fn: Callable) -> Callable:
    """Decorator for the FUNCTION of a node that optimises (training, guidance, plug-and-play restoration).

    The one place inference mode is lifted: the body runs with ``inference_mode(False)`` and grad enabled, and
    tensor arguments that are inference tensors (every IMAGE/MASK ComfyUI passes) arrive as normal clones.
    The engine itself never lifts inference mode."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        with trainable():
            args = tuple(_normal_tensor(a) for a in args)
            kwargs = {k: _normal_tensor(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)

    return inner


def embedding_progress(desc: str = "LiT image embeddings") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` for the embedding cache: ComfyUI's progress bar, and Cancel checked at every
    batch (the cache writes what it has finished before the interruption propagates)."""
    state: dict[str, Any] = {"bar": None, "done": 0}

    def progress(done: int, total: int) -> None:
        check_interrupted()
        if state["bar"] is None:
            state["bar"] = Progress(total, desc)
        if done > state["done"]:
            state["bar"].update(done - state["done"])
            state["done"] = done
        if done >= total:
            state["bar"].close()

    return progress


def comfy_tokenizer_dirs() -> dict[str, list[str]]:
    """Tokenizer folders ComfyUI ships, per architecture, for single-file text encoders without their own."""
    if comfy_utils is None or not getattr(comfy_utils, "__file__", None):
        return {}
    # `comfy` is a namespace package (no __file__); its modules know where they live.
    clip = os.path.join(os.path.dirname(os.path.abspath(comfy_utils.__file__)), "sd1_tokenizer")
    return {"clip": [clip]} if os.path.isdir(clip) else {}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(choice: str, device: torch.device, *, trainable: bool) -> torch.dtype:
    """``auto``: fp32 on the CPU and for anything trained; fp16/bf16 for a locked tower on a GPU."""
    if choice in DTYPES:
        return DTYPES[choice]
    if device.type == "cuda" and not trainable:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_device(choice: str) -> torch.device:
    return torch.device("cpu") if choice == "cpu" else torch_device()


def input_directory() -> str | None:
    """ComfyUI's ``input/`` folder (relative dataset paths are looked up there), or None outside ComfyUI."""
    if folder_paths is None:
        return None
    try:
        return folder_paths.get_input_directory()
    except Exception:  # noqa: BLE001
        return None


def lit_save_dir() -> str:
    """Where adapters are saved: the first ``lit`` model folder."""
    dirs = folder_dirs(LIT_FOLDER)
    return dirs[0] if dirs else os.path.join(models_dir(), LIT_FOLDER)


def save_preview_images(images: torch.Tensor, prefix: str = "lit_preview") -> list[dict[str, str]]:
    """Write ``[B,H,W,C]`` images to ComfyUI's temp folder for the front-end; ``[]`` outside ComfyUI.

    Returns the ``{"filename", "subfolder", "type"}`` records the front-end's ``/view`` route serves.
    """
    if folder_paths is None:
        return []
    import uuid

    import numpy as np
    from PIL import Image

    folder = folder_paths.get_temp_directory()
    os.makedirs(folder, exist_ok=True)
    out = []
    for img in images.detach().float().cpu().clamp(0, 1):
        name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
        Image.fromarray((img.numpy()[..., :3] * 255).round().astype(np.uint8)).save(os.path.join(folder, name),
                                                                                     compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


def compare_ui(before: torch.Tensor, after: torch.Tensor, prefix: str) -> dict[str, list]:
    """The ``ui`` entry the front-end's before/after slider reads: ``{"lit_compare": [{"before", "after"}]}``."""
    b = save_preview_images(before, prefix + "_before")
    a = save_preview_images(after, prefix + "_after")
    return {"lit_compare": [{"before": x, "after": y} for x, y in zip(b, a, strict=True)]}


def load_models_gpu(models: list) -> None:
    """Ask ComfyUI to put these model patchers on its device (and offload others); no-op outside ComfyUI."""
    if comfy_mm is not None and models:
        comfy_mm.load_models_gpu(models)


# ---- attention: ComfyUI's attention registry, and core's CLIP text/vision encoders routed through our attention
#
# Core's CLIP text and vision encoders (and DINOv2, also a CLIP_VISION) never see transformer_options, so the
# optimized_attention_override hook misses them: each encoder looks its attention function up once per forward
# (optimized_attention_for_device(..., small_input=True)) and hands it to every layer as `optimized_attention`.
# We route them with ComfyUI's own object patches on the encoder's patcher: each such layer's `forward` becomes a
# wrapper that hands the layer our function (wrapping the one it was given) instead. ComfyUI sets object patches
# when it loads that patcher and restores the originals when it unloads it or loads another clone of the same
# model, so only the patched CLIP / CLIP_VISION is routed, and only while it is the loaded clone.

ROUTED_ENCODER_MODULES = ("comfy.clip_model", "comfy.image_encoders.dino2")
_ATTENTION_ARG = "optimized_attention"


def register_attention_function(name: str, func: Callable) -> bool:
    """Add ``func`` to ComfyUI's attention registry under ``name`` (once); False without a host that has one."""
    try:
        import comfy.ldm.modules.attention as comfy_attention  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - no host, or a host without the module
        return False
    register = getattr(comfy_attention, "register_attention_function", None)
    if register is None:
        return False
    if name not in getattr(comfy_attention, "REGISTERED_ATTENTION_FUNCTIONS", {}):
        register(name, func)
    return True


class RoutedLayerForward:
    """An object-patch value for a layer's ``forward``: the same forward, handed ``wrap(its attention function)``."""

    def __init__(self, layer: torch.nn.Module, wrap: Callable[[Callable], Callable], inner: Callable | None) -> None:
        import inspect

        self.layer = layer
        self.wrap = wrap
        self.inner = inner  # an earlier object patch of this forward keeps running, with our function
        params = list(inspect.signature(type(layer).forward).parameters)[1:]
        self.index = params.index(_ATTENTION_ARG)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > self.index:
            args = args[:self.index] + (self.wrap(args[self.index]),) + args[self.index + 1:]
        elif kwargs.get(_ATTENTION_ARG) is not None:
            kwargs[_ATTENTION_ARG] = self.wrap(kwargs[_ATTENTION_ARG])
        if self.inner is not None:
            return self.inner(*args, **kwargs)
        return type(self.layer).forward(self.layer, *args, **kwargs)


def _takes_attention(module: torch.nn.Module) -> bool:
    import inspect

    cls = type(module)
    if cls.__module__ not in ROUTED_ENCODER_MODULES:
        return False
    try:
        return _ATTENTION_ARG in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False


def routable_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The outermost modules of core's CLIP/DINOv2 encoders that are handed an attention function, by path."""
    found: list[tuple[str, torch.nn.Module]] = []

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _takes_attention(child):
                found.append((path, child))  # its sub-modules get the function from it
            else:
                walk(child, path + ".")

    walk(model, "")
    return found


def clone_encoder(encoder: Any) -> Any:
    """A clone of a CLIP (``clone()``) or CLIP_VISION (no ``clone``: a shallow copy with a cloned patcher)."""
    if hasattr(encoder, "clone"):
        return encoder.clone()
    import copy

    twin = copy.copy(encoder)
    twin.patcher = encoder.patcher.clone()
    return twin


def route_encoder_attention(encoder: Any, wrap: Callable[[Callable], Callable], *,
                            input_name: str) -> tuple[Any, int]:
    """A clone of a CLIP / CLIP_VISION whose core attention runs ``wrap(core_function)``; and how many layers."""
    patcher = getattr(encoder, "patcher", None)
    if patcher is None or not hasattr(patcher, "add_object_patch") or not isinstance(
            getattr(patcher, "model", None), torch.nn.Module):
        raise LitError("this input is not a ComfyUI CLIP or CLIP_VISION.", input_name=input_name,
                       fix="connect the output of a Load CLIP / Load Checkpoint / Load CLIP Vision node.")
    twin = clone_encoder(encoder)
    layers = routable_layers(twin.patcher.model)
    for path, layer in layers:
        key = f"{path}.forward"
        previous = twin.patcher.object_patches.get(key)
        if isinstance(previous, RoutedLayerForward):  # routed twice: once is enough
            previous = previous.inner
        twin.patcher.add_object_patch(key, RoutedLayerForward(layer, wrap, previous))
    return twin, len(layers)


# ---- diffusion prior: ComfyUI's own sampling path, so the MODEL's patches, wrappers, LoRAs and ControlNets apply


def comfy_sampling_available() -> bool:
    try:
        import comfy.samplers  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # noqa: BLE001 - no host
        return False
    return True


def run_with_comfy_model(model: Any, conditioning: Any, latent: torch.Tensor, seed: int,
                         body: Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], Any]) -> Any:
    """Run ``body(predict_x0)`` inside ComfyUI's sampler, with ``predict_x0(noisy_latent, sigma)`` the guider's own
    model call (what KSampler's samplers call each step).

    Calling ``apply_model`` directly skips ``model_options``: patches from other nodes (attention overrides,
    unet wrappers, sampler CFG functions, ControlNet, hooks) would silently not apply. Here ComfyUI prepares the
    ``MODEL`` (loads it with its patches, processes the conditioning for this latent size) exactly as for KSampler,
    then hands our sampler function the wrapped model; ``body`` is the restoration loop, which calls it per step.
    ``latent`` gives only the shape; the sampler's own latent is ignored and ``body``'s result returned.
    """
    import comfy.samplers  # type: ignore[import-not-found]

    box: dict[str, Any] = {}

    def lit_restoration_sampler(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra = dict(extra_args or {})

        def predict_x0(noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = sigma.to(x.device, torch.float32).reshape(-1)
            if s.numel() == 1:
                s = s.expand(noisy.shape[0])
            return model_k(noisy.to(x.device, x.dtype), s, **extra)

        box["result"] = body(predict_x0)
        return x

    guider = comfy.samplers.CFGGuider(model)
    # One conditioning at cfg 1: the prior is a single x0 prediction, no classifier-free guidance pair.
    guider.inner_set_conds({"positive": conditioning})
    guider.set_cfg(1.0)
    ms = model.get_model_object("model_sampling")
    sigmas = torch.tensor([float(ms.sigma_max), 0.0])
    zeros = torch.zeros_like(latent, device="cpu")
    guider.sample(zeros, zeros, comfy.samplers.KSAMPLER(lit_restoration_sampler), sigmas, disable_pbar=True,
                  seed=int(seed))
    return box["result"]
