"""The restoration tasks: their names (what the node, the CLI and the benchmark offer), the damage the Degrade
node makes, and how each task's degradation operator is built from the user's parameters."""

from __future__ import annotations

import torch

from ..common.errors import LitError
from . import degradations as deg

RESTORE_TASKS = ["denoise", "deblur (gaussian)", "deblur (motion)", "inpaint", "upscale x2", "upscale x3",
                 "upscale x4", "jpeg artifacts"]
DAMAGE = ["noise", "poisson noise", "blur (gaussian)", "blur (motion)", "random pixels", "scratches",
          "downscale x2", "downscale x3", "downscale x4", "jpeg"]


def kernel_for(task: str, blur_sigma: float, motion_length: float, motion_angle: float) -> torch.Tensor:
    if "motion" in task:
        return deg.motion_kernel(motion_length, motion_angle)
    return deg.gaussian_kernel(blur_sigma)


def build_operator(task: str, y: torch.Tensor, *, noise_sigma: float = 0.0, poisson_gain: float = 0.0,
                   blur_sigma: float = 2.0, motion_length: float = 9.0, motion_angle: float = 0.0,
                   mask: torch.Tensor | None = None, downsample: str = "bicubic",
                   jpeg_quality: int = 0) -> deg.Degradation:
    """The degradation operator for one of :data:`RESTORE_TASKS` (noise levels in 0..255 units, 0 = estimate)."""
    if noise_sigma < 0:
        raise LitError("the noise level must be >= 0 (0 = estimate it from the image).", input_name="noise_sigma")
    sigma = noise_sigma / 255.0 if noise_sigma > 0 else None
    if task == "denoise":
        return deg.Denoise(y, sigma, gain=poisson_gain / 255.0)
    if task.startswith("deblur"):
        return deg.Deblur(y, kernel_for(task, blur_sigma, motion_length, motion_angle),
                          sigma if sigma is not None else deg.SIGMA_FLOOR)
    if task == "inpaint":
        if mask is None:
            raise LitError("inpainting needs a mask (white = missing).", input_name="mask",
                           fix="connect a MASK, e.g. from 'LiT Degrade' or a mask editor.")
        return deg.Inpaint(y, mask, sigma)
    if task.startswith("upscale"):
        return deg.Upscale(y, int(task[-1]), downsample, sigma)
    if task == "jpeg artifacts":
        return deg.JPEG(y, jpeg_quality if jpeg_quality > 0 else None)
    raise LitError(f"unknown restoration task '{task}'.", input_name="degradation",
                   fix=f"choose one of {', '.join(RESTORE_TASKS)}.")
