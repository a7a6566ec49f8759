"""Enhancement nodes: a faithful photo grade (no-reference auto-grade, optionally refined by a LiT model), and its
re-use on other images."""

from __future__ import annotations

import torch

from ..models.common.errors import LitError
from ..models.common.validate import check_image_batch
from ..models.enhancement import spec
from ..models.enhancement.ops import EnhancementParams, apply_enhancement
from ..models.enhancement.sampler import enhance
from .host import (
    CATEGORY,
    check_interrupted,
    compare_ui,
    progress_callback,
    require_lit_model,
    torch_device,
    trainable_node,
    with_node_errors,
)

ENHANCEMENT_TYPE = "LIT_ENHANCEMENT"


def _number(kind: str, name: str) -> tuple[str, dict]:
    default, lo, hi, step, tip = spec.NODE_INPUTS[name]
    return (kind, {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class LiTEnhancementSampler:
    DISPLAY = "LiT Enhancement Sampler"
    DESCRIPTION = ("Enhances photos faithfully. A no-reference auto-grade (white balance, levels, exposure, from the "
                   "image's own statistics) does the work and leaves a correct photo alone; a LiT model, when "
                   "connected, refines it toward the positive prompt, and its refinement is kept only if it beats "
                   "the model's own noise. Every adjustment is global or a smooth luminance-only dodge/burn, so it "
                   "can never paint colour blotches. The grade is an output you can apply to other images.")
    CATEGORY = f"{CATEGORY}/enhance"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", ENHANCEMENT_TYPE, "STRING")
    RETURN_NAMES = ("image", "enhancement", "scores")
    OUTPUT_TOOLTIPS = ("The enhanced images, same size as the input.",
                       "The fitted grade (one per image, or one for the batch when shared), strength applied: "
                       "connect it to 'LiT Apply Enhancement' to grade other images the same way.",
                       "What was done to each image, in a photographer's words, and the guide's before/after "
                       "scores and whether its refinement was kept.")

    @classmethod
    def INPUT_TYPES(cls):
        t = spec.NODE_TOOLTIPS
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": t["image"]}),
                "positive": ("STRING", {"multiline": True, "default": spec.DEFAULT_POSITIVE,
                                        "tooltip": t["positive"]}),
                "negative": ("STRING", {"multiline": True, "default": spec.DEFAULT_NEGATIVE,
                                        "tooltip": t["negative"]}),
                "steps": _number("INT", "steps"),
                "guidance": _number("FLOAT", "guidance"),
                "fidelity": _number("FLOAT", "fidelity"),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": t["seed"]}),
                "samples": _number("INT", "samples"),
            },
            "optional": {
                "lit_model": ("LIT_MODEL", {"tooltip": t["lit_model"]}),
                "mask": ("MASK", {"tooltip": t["mask"]}),
                "shared": ("BOOLEAN", {"default": False, "tooltip": t["shared"]}),
                "proxy_size": _number("INT", "proxy_size"),
                "strength": _number("FLOAT", "strength"),
                "auto_grade": ("BOOLEAN", {"default": True, "tooltip": t["auto_grade"]}),
                "allow_colour": ("BOOLEAN", {"default": False, "tooltip": t["allow_colour"]}),
                "dark_scene_check": ("BOOLEAN", {"default": True, "tooltip": t["dark_scene_check"]}),
            },
        }

    @with_node_errors(DISPLAY)
    @trainable_node
    def run(self, image: torch.Tensor, positive: str, negative: str, steps: int, guidance: float,
            fidelity: float, seed: int, samples: int, lit_model=None, mask: torch.Tensor | None = None,
            shared: bool = False, proxy_size: int = 256, strength: float = 1.0, auto_grade: bool = True,
            allow_colour: bool = False, dark_scene_check: bool = True):
        image = check_image_batch(image)  # before .clone(): an unconnected input is the pack's clear error
        if lit_model is not None:
            require_lit_model(lit_model)
        check_interrupted()
        callback = progress_callback(max(steps, 1), desc="LiT enhance")
        result = enhance(image, lit_model, positive, negative, steps=steps, guidance=guidance, fidelity=fidelity,
                         seed=seed, samples=samples, mask=mask, shared=shared, proxy_max_side=proxy_size,
                         strength=strength, auto=auto_grade, allow_colour=allow_colour,
                         dark_scene_check=dark_scene_check, callback=callback)
        text = result.summary()
        out = result.image.float().cpu()
        return {"ui": {"text": [text], **compare_ui(image[..., :3], out, "lit_enhance")},
                "result": (out, result.params, text)}


class LiTApplyEnhancement:
    DISPLAY = "LiT Apply Enhancement"
    DESCRIPTION = ("Applies a grade fitted by the LiT Enhancement Sampler to other images (or every frame of a "
                   "batch), at any size, with no model and no optimisation.")
    CATEGORY = f"{CATEGORY}/enhance"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The graded images, same size as the input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Images to grade."}),
                "enhancement": (ENHANCEMENT_TYPE, {"tooltip": "A grade from the LiT Enhancement Sampler."}),
                "which": (["per image", "first", "index"],
                          {"default": "per image",
                           "tooltip": "'per image': grade i goes to image i (the batches must match, or the "
                                      "grade holds one set). 'first'/'index': one grade for every image."}),
                "index": ("INT", {"default": 0, "min": 0, "max": 4095,
                                  "tooltip": "Which grade to use when 'which' is 'index'."}),
                "strength": _number("FLOAT", "strength"),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Only where the mask is 1 is the grade applied. Must have the image's "
                                             "size."}),
            },
        }

    @with_node_errors(DISPLAY)
    def run(self, image: torch.Tensor, enhancement, which: str = "per image", index: int = 0,
            strength: float = 1.0, mask: torch.Tensor | None = None):
        if isinstance(enhancement, dict):
            enhancement = EnhancementParams.from_dict(enhancement)
        if not isinstance(enhancement, EnhancementParams):
            raise LitError("this input is not a LIT_ENHANCEMENT grade.", input_name="enhancement",
                           fix="connect the 'enhancement' output of a LiT Enhancement Sampler.")
        params = enhancement
        if which == "first":
            params = params.select(0)
        elif which == "index":
            if index >= params.batch_size:
                raise LitError(f"index {index} is out of range: the grade holds {params.batch_size} set(s).",
                               input_name="index", fix=f"use 0..{params.batch_size - 1}.")
            params = params.select(index)
        check_interrupted()
        out = apply_enhancement(image, params, mask, device=torch_device(), strength=strength)
        return (out.float().cpu(),)


NODE_CLASS_MAPPINGS = {
    "LiTEnhancementSampler": LiTEnhancementSampler,
    "LiTApplyEnhancement": LiTApplyEnhancement,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LiTEnhancementSampler": LiTEnhancementSampler.DISPLAY,
    "LiTApplyEnhancement": LiTApplyEnhancement.DISPLAY,
}
