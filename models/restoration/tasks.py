"""The restoration tasks: their names (what the node, the CLI and the benchmark offer), the damage the Degrade
node makes, and how each task's degradation operator is built from the user's parameters."""

from __future__ import annotations

import torch

from ..common.errors import LitError
from ..common.validate import check_finite
from . import degradations as deg

# Each task: its operator kind and that operator's one fixed parameter (the blur family, the scale factor).
TASKS: dict[str, tuple[str, str | int | None]] = {
    "denoise": ("denoise", None),
    "deblur (gaussian)": ("deblur", "gaussian"), "deblur (motion)": ("deblur", "motion"),
    "inpaint": ("inpaint", None),
    "upscale x2": ("upscale", 2), "upscale x3": ("upscale", 3), "upscale x4": ("upscale", 4),
    "jpeg artifacts": ("jpeg", None),
}
RESTORE_TASKS = list(TASKS)
# The Degrade node's damage, in the same vocabulary: its kind and parameter, as for the tasks above.
DAMAGES: dict[str, tuple[str, str | int | None]] = {
    "noise": ("noise", None), "poisson noise": ("noise", "poisson"),
    "blur (gaussian)": ("blur", "gaussian"), "blur (motion)": ("blur", "motion"),
    "random pixels": ("mask", "random"), "scratches": ("mask", "scratches"),
    "downscale x2": ("downscale", 2), "downscale x3": ("downscale", 3), "downscale x4": ("downscale", 4),
    "jpeg": ("jpeg", None),
}
DAMAGE = list(DAMAGES)


def kernel_for(name: str, blur_sigma: float, motion_length: float, motion_angle: float) -> torch.Tensor:
    """The blur kernel of a deblur task or a blur damage, by name."""
    if (TASKS.get(name) or DAMAGES.get(name) or (None, None))[1] == "motion":
        return deg.motion_kernel(motion_length, motion_angle)
    return deg.gaussian_kernel(blur_sigma)


def build_operator(task: str, y: torch.Tensor, *, noise_sigma: float = 0.0, poisson_gain: float = 0.0,
                   blur_sigma: float = 2.0, motion_length: float = 9.0, motion_angle: float = 0.0,
                   mask: torch.Tensor | None = None, downsample: str = "bicubic",
                   jpeg_quality: int = 0) -> deg.Degradation:
    """The degradation operator for one of :data:`RESTORE_TASKS` (noise levels in 0..255 units, 0 = estimate)."""
    if task not in TASKS:
        raise LitError(f"unknown restoration task '{task}'.", input_name="degradation",
                       fix=f"choose one of {', '.join(RESTORE_TASKS)}.")
    if noise_sigma < 0:
        raise LitError("the noise level must be >= 0 (0 = estimate it from the image).", input_name="noise_sigma")
    kind, param = TASKS[task]
    sigma = noise_sigma / 255.0 if noise_sigma > 0 else None
    if kind == "denoise":
        return deg.Denoise(y, sigma, gain=poisson_gain / 255.0)
    if kind == "deblur":
        return deg.Deblur(y, kernel_for(task, blur_sigma, motion_length, motion_angle),
                          sigma if sigma is not None else deg.SIGMA_FLOOR)
    if kind == "inpaint":
        if mask is None:
            raise LitError("inpainting needs a mask (white = missing).", input_name="mask",
                           fix="connect a MASK, e.g. from 'LiT Degrade' or a mask editor.")
        check_finite(mask, input_name="mask", what="mask values")  # a NaN mask gave an all-NaN result
        return deg.Inpaint(y, mask, sigma)
    if kind == "upscale":
        return deg.Upscale(y, int(param), downsample, sigma)
    return deg.JPEG(y, jpeg_quality if jpeg_quality > 0 else None)
