"""Loader nodes for the two towers: the text encoder and the locked image encoder."""

from __future__ import annotations

import torch

from ..models.towers import spec as tower_spec
from ..models.towers.image_tower import DEFAULT_IMAGE_NAME, load_image_tower, tower_from_comfy_clip_vision
from ..models.towers.text_tower import DEFAULT_TEXT_NAME, load_text_tower
from .host import (
    CATEGORY,
    comfy_tokenizer_dirs,
    list_models,
    resolve_device,
    resolve_dtype,
    resolve_model,
    with_node_errors,
)

EMBEDDED_TEXT = f"(embedded) {DEFAULT_TEXT_NAME}"
EMBEDDED_IMAGE = f"(embedded) {DEFAULT_IMAGE_NAME}"
DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]
DEVICE_CHOICES = ["auto", "cpu"]
# optional, so workflows saved before it load unchanged (centre crop)
VIEWS_INPUT = {"views": (list(tower_spec.VIEWS), {"default": tower_spec.DEFAULT_VIEWS,
                                                   "tooltip": tower_spec.VIEWS_TOOLTIP})}


class LiTTextEncoderLoader:
    DISPLAY = "LiT Load Text Encoder"
    DESCRIPTION = ("Loads the text tower that LiT tunes: an HF folder or a single .safetensors from "
                   "models/text_encoders (BERT/MiniLM, XLM-R, T5 encoders, CLIP-L, OpenCLIP bigG, SigLIP). A file "
                   "with tensors the model would not use, or NaN weights, is refused by name. Leave it on "
                   "'(embedded)' for all-MiniLM-L6-v2, which ships with the pack.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LIT_TEXT_TOWER",)
    RETURN_NAMES = ("text_tower",)
    OUTPUT_TOOLTIPS = ("The text encoder, ready for locked tuning, scoring and zero-shot nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ([EMBEDDED_TEXT, *list_models("text_encoders")], {
                "tooltip": "An HF folder (config.json + weights + tokenizer) or one .safetensors in "
                           "models/text_encoders (or models/clip). A single file takes its tokenizer from a folder "
                           "of the same name beside it, or from ComfyUI's CLIP tokenizer for CLIP text encoders."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "Weight precision. 'auto' keeps fp32, which "
                                                                    "training the text side needs."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "'auto' uses ComfyUI's device (the GPU when "
                                                                      "there is one)."}),
        }}

    @with_node_errors(DISPLAY)
    def load(self, text_encoder: str, dtype: str = "auto", device: str = "auto"):
        dev = resolve_device(device)
        path = None if text_encoder == EMBEDDED_TEXT else resolve_model(
            "text_encoders", text_encoder, input_name="text_encoder", node=self.DISPLAY)
        # Built outside inference mode: weights made inside it could never take part in autograd later
        # (tuning, guidance), even with gradients switched back on.
        with torch.inference_mode(False):
            tower = load_text_tower(path, device=dev, dtype=resolve_dtype(dtype, dev, trainable=True),
                                    tokenizer_search_dirs=comfy_tokenizer_dirs())
        return (tower,)


class LiTImageEncoderLoader:
    DISPLAY = "LiT Load Image Encoder (locked)"
    DESCRIPTION = ("Loads the locked image tower: a CLIP / SigLIP / DINOv2 / ViT vision encoder from "
                   "models/clip_vision (HF, OpenCLIP or ComfyUI layout; timm files are refused). It is never trained; "
                   "its embeddings are cached. "
                   "'(embedded)' is EfficientNet-Lite0 (ImageNet), which ships with the pack.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("LIT_IMAGE_TOWER",)
    RETURN_NAMES = ("image_tower",)
    OUTPUT_TOOLTIPS = ("The locked image encoder.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image_encoder": ([EMBEDDED_IMAGE, *list_models("clip_vision")], {
                "tooltip": "A vision encoder in models/clip_vision: e.g. clip_vision_h.safetensors, "
                           "sigclip_vision_patch14_384.safetensors, a DINOv2 or ViT HF folder."}),
            "dtype": (DTYPE_CHOICES, {"default": "auto", "tooltip": "Weight precision. 'auto' is fp32 on the CPU "
                                                                    "and half precision on a GPU."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "'auto' uses ComfyUI's device."}),
        }, "optional": VIEWS_INPUT}

    @with_node_errors(DISPLAY)
    def load(self, image_encoder: str, dtype: str = "auto", device: str = "auto",
             views: str = tower_spec.DEFAULT_VIEWS):
        dev = resolve_device(device)
        path = None if image_encoder == EMBEDDED_IMAGE else resolve_model(
            "clip_vision", image_encoder, input_name="image_encoder", node=self.DISPLAY)
        with torch.inference_mode(False):  # guidance differentiates through the tower (see the text loader)
            return (load_image_tower(path, device=dev, dtype=resolve_dtype(dtype, dev, trainable=False),
                                     views=views),)


class LiTImageEncoderFromCLIPVision:
    DISPLAY = "LiT Image Encoder from CLIP Vision"
    DESCRIPTION = ("Reuses a CLIP_VISION you already load with ComfyUI's 'Load CLIP Vision' node as LiT's locked "
                   "image tower (rebuilt so guidance can take gradients through it).")
    CATEGORY = CATEGORY
    FUNCTION = "wrap"
    RETURN_TYPES = ("LIT_IMAGE_TOWER",)
    RETURN_NAMES = ("image_tower",)
    OUTPUT_TOOLTIPS = ("The same vision model as a locked LiT image tower.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision": ("CLIP_VISION", {"tooltip": "Output of ComfyUI's 'Load CLIP Vision' node."}),
            "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "'auto' uses ComfyUI's device."}),
        }, "optional": VIEWS_INPUT}

    @with_node_errors(DISPLAY)
    def wrap(self, clip_vision, device: str = "auto", views: str = tower_spec.DEFAULT_VIEWS):
        return (tower_from_comfy_clip_vision(clip_vision, device=resolve_device(device)).set_views(views),)


NODE_CLASS_MAPPINGS = {
    "LiTTextEncoderLoader": LiTTextEncoderLoader,
    "LiTImageEncoderLoader": LiTImageEncoderLoader,
    "LiTImageEncoderFromCLIPVision": LiTImageEncoderFromCLIPVision,
}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
