"""Locked-image tuning nodes: dataset, trainer, and adapter save/load."""

from __future__ import annotations

import os

import torch

from ..models.common.atomic import safe_relative_name
from ..models.common.errors import LitError
from ..models.data.dataset import dataset_signature, from_images, load_dataset
from ..models.tuning import spec
from ..models.tuning.lit_model import LitModel, load_adapter, read_adapter_metadata, save_adapter
from ..models.tuning.trainer import TrainConfig, TrainingDiverged, train_locked
from .host import (
    CATEGORY,
    LIT_FOLDER,
    check_interrupted,
    embedding_progress,
    input_directory,
    list_models,
    lit_save_dir,
    progress_callback,
    require_lit_model,
    resolve_model,
    send_event,
    trainable_node,
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
        return dataset_signature(resolved, recursive=recursive)  # bounded: never a full walk of a huge tree

    @with_node_errors(DISPLAY)
    def load(self, path: str, recursive: bool = True, images: torch.Tensor | None = None, captions: str = ""):
        if images is not None:
            ds = from_images(images.clone(), captions)
        else:
            if not path.strip():
                raise LitError("no dataset path given.", input_name="path",
                               fix="type a folder of images with .txt captions, or connect an IMAGE batch.")
            resolved = _resolve_dataset_path(path)
            try:
                ds = load_dataset(resolved, recursive=recursive) if os.path.isdir(resolved) else load_dataset(resolved)
            except LitError as err:
                # The engine names its own argument; in the graph the user typed it into this node's 'path'.
                if err.input_name in ("dataset", "folder", "data", "manifest", None):
                    err.input_name = "path"
                    err.args = (err._render(),)
                raise
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
            "mode": spec.node_input("mode"),
            "loss": spec.node_input("loss"),
            "steps": spec.node_input("steps"),
            "batch_size": spec.node_input("batch_size"),
            "learning_rate": spec.node_input("lr"),
            "seed": spec.node_input("seed", control_after_generate=True),
        }, "optional": {
            # the first four in their original order, so saved workflows' widget values still line up
            "lora_rank": spec.node_input("lora_rank"),
            "validation_fraction": spec.node_input("val_fraction"),
            "validate_every": spec.node_input("val_every"),
            "cache_dir": ("STRING", {"default": "", "tooltip": "Where image embeddings are cached; empty: a "
                                                               ".lit_cache folder beside the dataset."}),
        } | {name: spec.node_input(name) for name in ("text_lr", "weight_decay", "warmup_steps", "init",
                                                        "lora_alpha", "keep", "patience",
                                                        "text_layers")
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    @with_node_errors(DISPLAY)
    @trainable_node
    def train(self, image_tower, text_tower, dataset, mode: str, loss: str, steps: int, batch_size: int,
              learning_rate: float, seed: int, text_lr: float = spec.default("text_lr"),
              weight_decay: float = spec.default("weight_decay"), warmup_steps: int = spec.default("warmup_steps"),
              init: str = spec.default("init"), lora_rank: int = spec.default("lora_rank"),
              lora_alpha: float = spec.default("lora_alpha"), keep: str = spec.default("keep"),
              validation_fraction: float = spec.default("val_fraction"),
              validate_every: int = spec.default("val_every"), cache_dir: str = "",
              patience: int = spec.default("patience"), text_layers: int = spec.default("text_layers"),
              unique_id: str | None = None):
        config = TrainConfig(steps=steps, batch_size=batch_size, lr=learning_rate, seed=seed,
                             text_lr=text_lr or None, weight_decay=weight_decay,
                             warmup_steps=None if warmup_steps < 0 else warmup_steps, init=init, keep=keep,
                             val_fraction=validation_fraction, val_every=validate_every, patience=patience)
        progress = progress_callback(steps, "LiT locked tuning")

        def send(step: int, total: int, metrics: dict) -> None:
            numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            send_event(TRAIN_EVENT, {"node": unique_id, "step": step, "total": total, "metrics": numbers})

        def on_step(step: int, total: int, metrics: dict) -> None:
            progress(step)  # also raises ComfyUI's interruption: Cancel stops the whole prompt, as for KSampler
            if step % EVENT_EVERY == 0 or step == total or any(k.startswith("val_") for k in metrics):
                send(step, total, metrics)

        def on_start(total: int, before: dict) -> None:
            # the untrained (closed-form) point, so the chart's curves start at step 0
            send(0, total, {f"val_{k}": v for k, v in before.items()})

        model = LitModel(image_tower, text_tower, mode=mode, loss=loss, lora_rank=lora_rank,
                         lora_alpha=lora_alpha, seed=seed, text_layers=text_layers)
        try:
            # No interrupt is caught here (unlike the CLI's Ctrl-C, which saves the best state): in the graph, Cancel
            # means stop, so Save Adapter and everything else downstream must not run on a half-trained model.
            # Early stopping (patience) is the way to end a run early and keep it.
            result = train_locked(model, dataset, config, cache_dir=cache_dir.strip() or None, callback=on_step,
                                  interrupt_exceptions=(), embed_progress=embedding_progress(), on_start=on_start,
                                  on_refit=lambda step, total: check_interrupted())
            report = result.report
        except TrainingDiverged as err:
            # The model is back on its best (finite) state: hand it on, and say loudly what happened.
            result = err.result
            report = f"STOPPED: {err}\n\n{result.report}"
        send_event(TRAIN_EVENT, {"node": unique_id, "done": True, "step": result.steps_done, "total": steps,
                                 "metrics": {k: float(v) for k, v in result.best_metrics.items()
                                             if isinstance(v, (int, float))}})
        # The report also goes to the UI, so it is still shown after the workflow is reloaded.
        return {"ui": {"text": [report]}, "result": (model, report)}


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
            "overwrite": ("BOOLEAN", {"default": True, "tooltip": "On: write exactly '<filename>.safetensors', "
                                                                  "replacing an older one (what a template's Load "
                                                                  "Adapter expects). Off: never replace; a free "
                                                                  "name_0001, name_0002... is used and shown."}),
        }}

    @with_node_errors(DISPLAY)
    def save(self, lit_model, filename: str, overwrite: bool = True):
        require_lit_model(lit_model)
        name = safe_relative_name(filename)
        wanted = os.path.join(lit_save_dir(), name)
        # Exclusive create: with overwrite off, a taken name (or a concurrent save) gets a distinct, reported name.
        path = save_adapter(lit_model, wanted, overwrite=overwrite, unique=not overwrite)
        if not wanted.lower().endswith((".safetensors", ".sft")):
            wanted += ".safetensors"
        note = "" if os.path.abspath(path) == os.path.abspath(wanted) else (
            f" ('{os.path.basename(wanted)}' exists and overwrite is off, so a new name was used; "
            "Load Adapter must pick this one)")
        return {"ui": {"text": [f"saved {path}{note}"]}, "result": (path,)}


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
    @trainable_node
    def load(self, image_tower, text_tower, adapter: str, force: bool = False):
        if not adapter or adapter == NO_ADAPTERS:
            raise LitError("there is no adapter in models/lit yet.", input_name="adapter",
                           fix="run the template 'lit_1_train_adapter_run_first' first (it saves "
                               "models/lit/my_lit_adapter.safetensors), then press R to refresh this list.")
        path = resolve_model(LIT_FOLDER, adapter, input_name="adapter", node=self.DISPLAY)
        check_interrupted()
        info = read_adapter_metadata(path)
        model = load_adapter(path, image_tower, text_tower, force=force)  # outside inference mode: trainable later
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
