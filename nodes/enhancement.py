"""Enhancement nodes: a text-guided, faithful photo grade fitted with a LiT model, and its re-use on other images."""

from __future__ import annotations

import torch

from ..models.common.errors import LitError
from ..models.enhancement.ops import EnhancementParams, apply_enhancement
from ..models.enhancement.sampler import DEFAULT_NEGATIVE, DEFAULT_POSITIVE, enhance
from .host import (
    CATEGORY,
    check_interrupted,
    compare_ui,
    progress_callback,
    require_lit_model,
    torch_device,
    trainable,
    with_node_errors,
)

ENHANCEMENT_TYPE = "LIT_ENHANCEMENT"


class LiTEnhancementSampler:
    DISPLAY = "LiT Enhancement Sampler"
    DESCRIPTION = ("Enhances images toward the positive prompt and away from the negative one, guided by the LiT "
                   "model. It fits a small photo grade (exposure, contrast, tone curves, white balance, "
                   "saturation, a local edge-aware colour grid, detail) on a small copy and applies it at full "
                   "size, so it can re-grade and sharpen but never invent content. The grade is an output you can "
                   "apply to other images or frames.")
    CATEGORY = f"{CATEGORY}/enhance"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", ENHANCEMENT_TYPE, "STRING")
    RETURN_NAMES = ("image", "enhancement", "scores")
    OUTPUT_TOOLTIPS = ("The enhanced images, same size as the input.",
                       "The fitted grade (one per image, or one for the batch when shared): connect it to 'LiT "
                       "Apply Enhancement' to grade other images the same way.",
                       "Before/after scores (probability of the positive prompt against the negative) and the "
                       "fitted settings, per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Images to enhance (any size; each gets its own grade unless "
                                               "'shared' is on)."}),
                "lit_model": ("LIT_MODEL", {"tooltip": "The LiT model that judges the look (a plain "
                                                       "dual encoder works too)."}),
                "positive": ("STRING", {"multiline": True, "default": DEFAULT_POSITIVE,
                                        "tooltip": "The look you want. Several lines are averaged."}),
                "negative": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE,
                                        "tooltip": "Its opposite (the look to move away from). Several lines are "
                                                   "averaged."}),
                "steps": ("INT", {"default": 60, "min": 1, "max": 1000,
                                  "tooltip": "Optimisation steps on the small proxy copy. More is slower and "
                                             "converges further."}),
                "guidance": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                       "tooltip": "How hard the prompts push. 0 changes nothing."}),
                "fidelity": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 20.0, "step": 0.05,
                                       "tooltip": "How hard the result is held to the input (its embedding, "
                                                  "colours and structure). Raise it for subtler edits."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Seed of the restart noise; the same seed gives the same result."}),
                "samples": ("INT", {"default": 2, "min": 1, "max": 16,
                                    "tooltip": "Restarts from slightly different starting grades; each image "
                                               "keeps the best. More is slower and more robust."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Only where the mask is 1 may the image change (soft edges "
                                             "blend). Leave empty to enhance everywhere."}),
                "shared": ("BOOLEAN", {"default": False,
                                       "tooltip": "Fit one grade for the whole batch (consistent frames of a "
                                                  "video) instead of one per image."}),
                "proxy_size": ("INT", {"default": 256, "min": 32, "max": 1024, "step": 16,
                                       "tooltip": "Longest side of the small copy the grade is fitted on. The "
                                                  "model sees at most its own input size anyway."}),
            },
        }

    @with_node_errors(DISPLAY)
    def run(self, image: torch.Tensor, lit_model, positive: str, negative: str, steps: int, guidance: float,
            fidelity: float, seed: int, samples: int, mask: torch.Tensor | None = None, shared: bool = False,
            proxy_size: int = 256):
        require_lit_model(lit_model)
        check_interrupted()
        callback = progress_callback(steps, desc="LiT enhance")
        with trainable():
            result = enhance(image.clone(), lit_model, positive, negative, steps=steps, guidance=guidance,
                             fidelity=fidelity, seed=seed, samples=samples,
                             mask=None if mask is None else mask.clone(), shared=shared, proxy_max_side=proxy_size,
                             callback=callback)
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
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "Blend between the input (0) and the fully graded image (1)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Only where the mask is 1 is the grade applied."}),
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
        out = apply_enhancement(image, params, mask, device=torch_device())
        if strength < 1.0:
            src = image[..., :3].float() if image.shape[-1] >= 3 else image.float().expand_as(out)
            out = src.to(out.device) + (out - src.to(out.device)) * strength
        return (out.float().cpu(),)


NODE_CLASS_MAPPINGS = {
    "LiTEnhancementSampler": LiTEnhancementSampler,
    "LiTApplyEnhancement": LiTApplyEnhancement,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LiTEnhancementSampler": LiTEnhancementSampler.DISPLAY,
    "LiTApplyEnhancement": LiTApplyEnhancement.DISPLAY,
}
