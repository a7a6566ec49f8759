"""How each restoration task's degradation operator is built from the user's parameters (the task names, their
schedules and the Degrade node's damage vocabulary live in :mod:`.spec`)."""

from __future__ import annotations

import torch

from ..common.errors import LitError
from ..common.validate import check_finite
from . import degradations as deg
from .denoisers import Denoiser
from .spec import DAMAGE, DAMAGES, RESTORE_TASKS, TASKS, task

__all__ = ["DAMAGE", "DAMAGES", "RESTORE_TASKS", "TASKS", "build_operator", "kernel_for", "noise_note",
           "shot_noise_note"]


def kernel_for(name: str, blur_sigma: float, motion_length: float, motion_angle: float) -> torch.Tensor:
    """The blur kernel of a deblur task or a blur damage, by name."""
    param = TASKS[name].param if name in TASKS else DAMAGES.get(name, (None, None))[1]
    if param == "motion":
        return deg.motion_kernel(motion_length, motion_angle)
    return deg.gaussian_kernel(blur_sigma)


def build_operator(name: str, y: torch.Tensor, *, noise_sigma: float = 0.0, poisson_gain: float = 0.0,
                   blur_sigma: float = 2.0, motion_length: float = 9.0, motion_angle: float = 0.0,
                   mask: torch.Tensor | None = None, downsample: str = "bicubic",
                   jpeg_quality: int = 0) -> deg.Degradation:
    """The degradation operator for one of :data:`RESTORE_TASKS` (noise levels in 0..255 units, 0 = estimate).

    The operator carries the task's name (``op.task``): the sampler reads its schedule by that name."""
    op = _operator(name, y, noise_sigma=noise_sigma, poisson_gain=poisson_gain, blur_sigma=blur_sigma,
                   motion_length=motion_length, motion_angle=motion_angle, mask=mask, downsample=downsample,
                   jpeg_quality=jpeg_quality)
    op.task = name
    return op


def noise_note(op: deg.Degradation, override: str = "noise_sigma") -> str:
    """The report's words for a noise level read from the photo (empty when the user gave one), so that a wrong read
    can be seen and overridden (``override``: the input or flag that sets it): node and CLI say the same."""
    if not op.sigma_estimated:
        return ""
    levels = ", ".join(f"{float(s) * 255:.1f}" for s in op.noise_level)
    return f"; noise level {levels} (of 255) estimated from the photo: set {override} to override"


def shot_noise_note(op: deg.Degradation, denoiser: Denoiser, steps: int = 1) -> str:
    """The report's words for shot noise (a Poisson gain given, or noise read from the photo that grows with
    brightness): how the prior was given it (``steps``: the sampler's, as it runs)."""
    if not isinstance(op, deg.Denoise) or op.shot_model() is None:
        return ""
    what = "shot noise" if op.gain > 0 else "the noise read grows with brightness (shot noise)"
    if steps == 1 and not denoiser.wants_clean_input:
        return f"; {what}: made even by the Anscombe transform before the prior"
    return (f"; {what}: over {steps} steps the prior takes one level per photo (the level at its mean "
            "brightness); 1 step makes it even first")


def _operator(name: str, y: torch.Tensor, *, noise_sigma: float, poisson_gain: float, blur_sigma: float,
              motion_length: float, motion_angle: float, mask: torch.Tensor | None, downsample: str,
              jpeg_quality: int) -> deg.Degradation:
    kind, param = task(name).kind, task(name).param
    if noise_sigma < 0:
        raise LitError("the noise level must be >= 0 (0 = estimate it from the image).", input_name="noise_sigma")
    sigma = noise_sigma / 255.0 if noise_sigma > 0 else None
    if kind == "denoise":
        return deg.Denoise(y, sigma, gain=poisson_gain / 255.0)
    if kind == "deblur":
        return deg.Deblur(y, kernel_for(name, blur_sigma, motion_length, motion_angle), sigma)
    if kind == "inpaint":
        if mask is None:
            raise LitError("inpainting needs a mask (white = missing).", input_name="mask",
                           fix="connect a MASK, e.g. from 'LiT Degrade' or a mask editor.")
        check_finite(mask, input_name="mask", what="mask values")  # a NaN mask gave an all-NaN result
        return deg.Inpaint(y, mask, sigma)
    if kind == "upscale":
        return deg.Upscale(y, int(param), downsample, sigma)
    return deg.JPEG(y, jpeg_quality if jpeg_quality > 0 else None)
