"""Locked-image tuning nodes: dataset, trainer, and adapter save/load."""

from __future__ import annotations

import hashlib
import os
import re

import torch

from ..models.common.errors import LitError
from ..models.data.dataset import from_images, load_dataset
from ..models.tuning.lit_model import LitModel, load_adapter, read_adapter_metadata, save_adapter
from ..models.tuning.trainer import TrainConfig, train_locked
from .host import (
    CATEGORY,
    LIT_FOLDER,
    check_interrupted,
    input_directory,
    interrupted_exception_types,
    list_models,
    lit_save_dir,
    progress_callback,
    resolve_model,
    send_event,
    trainable,
    with_node_errors,
)

TRAIN_EVENT = "comfyui_lit.train"
EVENT_EVERY = 5  # steps between UI updates: enough for a live chart, cheap on the websocket


def _resolve_dataset_path(path: str) -> str:
    path = os.path.expanduser(path.strip().strip('"'))
    if not os.path.isabs(path):
        base = input_directory()
        if base and os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return path


def _listing_signature(path: str) -> str:
    """Changes when files are added, removed or edited under ``path`` (so ComfyUI re-reads the dataset)."""
    if os.path.isfile(path):
        st = os.stat(path)
        return f"{path}:{st.st_mtime_ns}:{st.st_size}"
    parts = []
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            parts.append(f"{f}:{st.st_mtime_ns}:{st.st_size}")
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


class LiTDataset:
    DISPLAY = "LiT Dataset"
    DESCRIPTION = ("Captioned images for locked tuning: a folder of images with same-name .txt captions (one caption "
                   "per line, the LoRA-dataset layout), a JSONL/CSV manifest with 'image' and 'text' columns, or an "
                   "IMAGE batch with one caption per line. Unreadable files are skipped and listed in the report.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LIT_DATASET", "STRING")
    RETURN_NAMES = ("dataset", "report")
    OUTPUT_TOOLTIPS = ("The captioned images.", "How many images/captions were found and which files were skipped.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "path": ("STRING", {"default": "", "tooltip": "A folder (absolute, or inside ComfyUI's input folder) "
                                                          "or a .jsonl/.csv manifest. Ignored when 'images' is "
                                                          "connected."}),
            "recursive": ("BOOLEAN", {"default": True, "tooltip": "Also read images in sub-folders."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "An in-graph batch to tune on instead of a folder."}),
            "captions": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "With 'images': one caption per line, in batch order; 'a | b' gives "
                                               "an image two alternative captions."}),
        }}

    @classmethod
    def IS_CHANGED(cls, path: str = "", recursive: bool = True, **_):
        resolved = _resolve_dataset_path(path or "")
        return _listing_signature(resolved) if os.path.exists(resolved) else path

    @with_node_errors(DISPLAY)
    def load(self, path: str, recursive: bool = True, images: torch.Tensor | None = None, captions: str = ""):
        if images is not None:
            ds = from_images(images.clone(), captions)
        else:
            if not path.strip():
                raise LitError("no dataset path given.", input_name="path",
                               fix="type a folder of images with .txt captions, or connect an IMAGE batch.")
            resolved = _resolve_dataset_path(path)
            ds = load_dataset(resolved, recursive=recursive) if os.path.isdir(resolved) else load_dataset(resolved)
        return (ds, ds.report())


class LiTLockedTuning:
    DISPLAY = "LiT Locked Tuning"
    DESCRIPTION = ("Trains the text side against the locked image encoder on your captioned images (LiT). The image "
                   "encoder is never trained: its embeddings are computed once and cached beside the dataset, so a "
                   "second run starts at once. 'head' trains only a projection, 'lora' adds LoRA on the text encoder, "
                   "'full' tunes the whole text encoder.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = ("LIT_MODEL", "STRING")
    RETURN_NAMES = ("lit_model", "report")
    OUTPUT_TOOLTIPS = ("The tuned dual encoder (save it with 'LiT Save Adapter').",
                       "Training report: data, cache use, speed, validation recall and accuracy before/after.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_tower": ("LIT_IMAGE_TOWER", {"tooltip": "The locked image encoder."}),
            "text_tower": ("LIT_TEXT_TOWER", {"tooltip": "The text encoder to tune (it is copied, not modified)."}),
            "dataset": ("LIT_DATASET", {"tooltip": "Captioned images from 'LiT Dataset'."}),
            "mode": (["head", "lora", "full"], {"default": "lora", "tooltip": "What is trained: the projection "
                                                "only, LoRA + projection, or the whole text encoder."}),
            "loss": (["softmax", "sigmoid"], {"default": "softmax", "tooltip": "softmax: CLIP/LiT contrastive loss; "
                                              "sigmoid: SigLIP's pairwise loss (better with small batches)."}),
            "steps": ("INT", {"default": 300, "min": 1, "max": 1000000, "tooltip": "Optimizer steps."}),
            "batch_size": ("INT", {"default": 64, "min": 2, "max": 65536, "tooltip": "Image-caption pairs per step; "
                                   "contrastive learning likes large batches."}),
            "learning_rate": ("FLOAT", {"default": 1e-3, "min": 1e-7, "max": 1.0, "step": 1e-5,
                                        "tooltip": "Peak learning rate (cosine schedule with warm-up)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Same seed, same run."}),
        }, "optional": {
            "lora_rank": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "LoRA rank (mode 'lora')."}),
            "validation_fraction": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.5, "step": 0.01,
                                              "tooltip": "Share of images held out to measure recall/accuracy."}),
            "validate_every": ("INT", {"default": 50, "min": 1, "max": 100000,
                                       "tooltip": "Steps between validations; the best validated state is kept."}),
            "cache_dir": ("STRING", {"default": "", "tooltip": "Where image embeddings are cached; empty: a "
                                                               ".lit_cache folder beside the dataset."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    @with_node_errors(DISPLAY)
    def train(self, image_tower, text_tower, dataset, mode: str, loss: str, steps: int, batch_size: int,
              learning_rate: float, seed: int, lora_rank: int = 8, validation_fraction: float = 0.1,
              validate_every: int = 50, cache_dir: str = "", unique_id: str | None = None):
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, seed=seed,
                             val_fraction=validation_fraction, val_every=validate_every)
        progress = progress_callback(steps, "LiT locked tuning")

        def on_step(step: int, total: int, metrics: dict) -> None:
            progress(step)  # also raises ComfyUI's interruption, which the trainer turns into "keep best state"
            if step % EVENT_EVERY == 0 or step == total or any(k.startswith("val_") for k in metrics):
                send_event(TRAIN_EVENT, {"node": unique_id, "step": step, "total": total,
                                         "metrics": {k: float(v) for k, v in metrics.items()
                                                     if isinstance(v, (int, float))}})

        with trainable():
            model = LitModel(image_tower, text_tower, mode=mode, loss=loss, lora_rank=lora_rank, seed=seed)
            result = train_locked(model, dataset, config, cache_dir=cache_dir.strip() or None, callback=on_step,
                                  interrupt_exceptions=interrupted_exception_types())
        send_event(TRAIN_EVENT, {"node": unique_id, "done": True, "step": result.steps_done, "total": steps,
                                 "metrics": {k: float(v) for k, v in result.best_metrics.items()
                                             if isinstance(v, (int, float))}})
        return {"ui": {"text": [result.report]}, "result": (model, result.report)}


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\- /]")


class LiTSaveAdapter:
    DISPLAY = "LiT Save Adapter"
    DESCRIPTION = ("Saves the trained text side (never the towers) to models/lit as .safetensors, with the encoders' "
                   "fingerprints, settings and validation metrics in its metadata.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the adapter was written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lit_model": ("LIT_MODEL", {"tooltip": "From 'LiT Locked Tuning' or 'LiT Load Adapter'."}),
            "filename": ("STRING", {"default": "my_lit_adapter", "tooltip": "Name inside models/lit (sub-folders "
                                                                            "allowed)."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file of that name; "
                                                                   "otherwise a number is appended."}),
        }}

    @with_node_errors(DISPLAY)
    def save(self, lit_model, filename: str, overwrite: bool = False):
        name = _SAFE_NAME.sub("_", filename.strip()).strip("/ ")
        if not name or ".." in name.split("/"):
            raise LitError(f"'{filename}' is not a usable file name.", input_name="filename",
                           fix="use letters, digits, '-', '_' and '/' for sub-folders.")
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        base = os.path.join(lit_save_dir(), name)
        path = base + ".safetensors"
        n = 1
        while not overwrite and os.path.exists(path):
            path = f"{base}_{n:04d}.safetensors"
            n += 1
        save_adapter(lit_model, path)
        return {"ui": {"text": [path]}, "result": (path,)}


NO_ADAPTERS = "(no adapters in models/lit: run the train template first)"


class LiTLoadAdapter:
    DISPLAY = "LiT Load Adapter"
    DESCRIPTION = ("Loads a saved LiT adapter onto its text and image encoders. Loading onto other encoders than it "
                   "was trained with is refused (their fingerprints differ) unless 'force' is on.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LIT_MODEL", "STRING")
    RETURN_NAMES = ("lit_model", "info")
    OUTPUT_TOOLTIPS = ("The tuned dual encoder.", "The adapter's metadata (encoders, settings, metrics).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_tower": ("LIT_IMAGE_TOWER", {"tooltip": "The locked image encoder it was trained with."}),
            "text_tower": ("LIT_TEXT_TOWER", {"tooltip": "The text encoder it was trained with."}),
            "adapter": (list_models(LIT_FOLDER, include_dirs=False) or [NO_ADAPTERS],
                        {"tooltip": "A .safetensors adapter from models/lit."}),
            "force": ("BOOLEAN", {"default": False, "tooltip": "Load even if the encoders' fingerprints differ "
                                                               "(dimensions must still match)."}),
        }}

    @with_node_errors(DISPLAY)
    def load(self, image_tower, text_tower, adapter: str, force: bool = False):
        if not adapter or adapter == NO_ADAPTERS:
            raise LitError("there is no adapter in models/lit yet.", input_name="adapter",
                           fix="run the template 'lit_1_train_adapter_run_first' first (it saves "
                               "models/lit/my_lit_adapter.safetensors), then press R to refresh this list.")
        path = resolve_model(LIT_FOLDER, adapter, input_name="adapter", node=self.DISPLAY)
        check_interrupted()
        info = read_adapter_metadata(path)
        with trainable():
            model = load_adapter(path, image_tower, text_tower, force=force)
        lines = [f"{os.path.basename(path)}: mode {info.get('mode')}, loss {info.get('loss')}, "
                 f"{info.get('steps', '?')} steps on {info.get('dataset_size', '?')} images.",
                 f"image encoder: {info.get('image_tower', {}).get('name')}, text encoder: "
                 f"{info.get('text_tower', {}).get('name')}.",
                 f"validation: {info.get('metrics', {})}"]
        return (model, "\n".join(lines))


NODE_CLASS_MAPPINGS = {
    "LiTDataset": LiTDataset,
    "LiTLockedTuning": LiTLockedTuning,
    "LiTSaveAdapter": LiTSaveAdapter,
    "LiTLoadAdapter": LiTLoadAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
