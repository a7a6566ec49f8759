"""Restoration nodes: a plug-and-play restoration sampler and a node that makes known test damage."""

from __future__ import annotations

import torch

from ..models.common.errors import LitError
from ..models.common.text import split_prompts
from ..models.common.validate import check_image_batch
from ..models.restoration import degradations as deg
from ..models.restoration.denoisers import DCTDenoiser, DiffusionDenoiser
from ..models.restoration.priors import as_prior, load_descriptor
from ..models.restoration.sampler import restore, schedule_for
from ..models.restoration.spec import DAMAGES, DEGRADE, SAMPLER, Param, task
from ..models.restoration.tasks import build_operator, kernel_for, noise_note, shot_noise_note
from . import host
from .host import (
    CATEGORY,
    check_interrupted,
    compare_ui,
    list_models,
    progress_callback,
    require_lit_model,
    resolve_model,
    torch_device,
    trainable_node,
    with_node_errors,
)


def _widget(p: Param) -> tuple:
    """A node input from the spec's parameter: its type, default, range and tooltip."""
    if p.kind == "CHOICE":
        return (list(p.choices), {"default": p.default, "tooltip": p.tooltip})
    if p.kind == "STRING":
        return ("STRING", {"multiline": True, "default": p.default, "tooltip": p.tooltip})
    opts = {"default": p.default, "min": p.low, "max": p.high, "tooltip": p.tooltip}
    if p.step is not None:
        opts["step"] = p.step
    return (p.kind, opts)


def _widgets(params: dict[str, Param], names: str) -> dict[str, tuple]:
    return {name: _widget(params[name]) for name in names.split()}


def _check_rgb(image) -> None:
    if torch.is_tensor(image) and image.ndim == 4 and image.shape[-1] in (1, 2):
        raise LitError(f"this image has {image.shape[-1]} channel(s); restoration needs 3 channels (RGB).",
                       input_name="image", fix="convert it to RGB first (e.g. repeat the grey channel three times).")
    check_image_batch(image, input_name="image", channels=(3, 4), min_size=8)


class LiTRestorationSampler:
    DISPLAY = "LiT Restoration Sampler"
    DESCRIPTION = ("Restores a damaged photo given what happened to it (noise, blur, missing pixels, low "
                   "resolution, JPEG blocks). An iterative plug-and-play sampler: a closed-form data-consistency "
                   "step for the damage, a denoiser prior at decreasing noise levels (built in, or your diffusion "
                   "MODEL+VAE), and optional LiT guidance toward a prompt.")
    CATEGORY = f"{CATEGORY}/restore"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The restored images (upscaling multiplies the size by the factor).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The damaged images (any size, any batch)."}),
                **_widgets(SAMPLER, "degradation noise_sigma steps seed strength"),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Inpainting: 1 (white) = missing pixels to fill. Same size as "
                                             "the image."}),
                **_widgets(SAMPLER, "blur_sigma motion_length motion_angle downsample jpeg_quality poisson_gain "
                                    "stochastic"),
                "lit_model": ("LIT_MODEL", {"tooltip": "Optional LiT model for semantic guidance."}),
                **_widgets(SAMPLER, "positive negative guidance"),
                "prior": ("UPSCALE_MODEL", {"tooltip": "Optional trained denoiser as the prior: from 'LiT Load "
                                                       "Restoration Prior' (FFDNet .safetensors, or anything "
                                                       "spandrel loads) or core's 'Load Upscale Model' (DRUNet, "
                                                       "FDnCNN/DnCNN, SCUNet, ...). Noise-level networks get each "
                                                       "step's noise level; blind ones run at their own level."}),
                "model": ("MODEL", {"tooltip": "Optional diffusion model used as the prior (x0 prediction at "
                                               "each noise level). Needs the VAE too."}),
                "vae": ("VAE", {"tooltip": "The VAE that goes with the diffusion model."}),
                "conditioning": ("CONDITIONING", {"tooltip": "Conditioning for the diffusion prior (e.g. CLIP "
                                                             "Text Encode of a short description, or empty)."}),
            },
        }

    @with_node_errors(DISPLAY)
    @trainable_node  # LiT guidance differentiates through the image tower; the engine keeps the prior grad-free
    def run(self, image: torch.Tensor, degradation: str, noise_sigma: float, steps: int, seed: int,
            strength: float, mask: torch.Tensor | None = None, blur_sigma: float = 2.0, motion_length: float = 9.0,
            motion_angle: float = 0.0, downsample: str = "bicubic", jpeg_quality: int = 0,
            poisson_gain: float = 0.0, stochastic: float = 0.0, lit_model=None, positive: str = "",
            negative: str = "", guidance: float = 0.0, model=None, vae=None, conditioning=None, prior=None):
        _check_rgb(image)
        check_interrupted()
        device = torch_device()
        y = image[..., :3].clone().float().permute(0, 3, 1, 2).to(device)
        op = build_operator(degradation, y, noise_sigma=noise_sigma, poisson_gain=poisson_gain,
                            blur_sigma=blur_sigma, motion_length=motion_length, motion_angle=motion_angle,
                            mask=None if mask is None else mask.clone(), downsample=downsample,
                            jpeg_quality=jpeg_quality)
        if (model is None) != (vae is None):
            raise LitError("a diffusion prior needs both MODEL and VAE.", input_name="vae" if vae is None else "model",
                           fix="connect both, or neither for the built-in prior.")
        if model is not None and prior is not None:
            raise LitError("connect either a trained prior or a diffusion MODEL, not both.", input_name="prior",
                           fix="disconnect one of them.")
        if prior is not None:
            denoiser = as_prior(prior, device)
        elif model is not None:
            if conditioning is None and host.comfy_sampling_available():
                raise LitError("a diffusion prior needs a conditioning.", input_name="conditioning",
                               fix="connect a CLIP Text Encode (an empty prompt is fine) to 'conditioning'.")
            denoiser = DiffusionDenoiser(model, vae, conditioning)
        else:
            # one-shot denoising can afford BM3D's grouped steps; iterative tasks call the prior many times
            denoiser = DCTDenoiser(block_matching=task(degradation).block_matching)
        n_steps = steps if steps > 0 else schedule_for(op, denoiser.trained).steps
        if lit_model is not None and guidance > 0:
            require_lit_model(lit_model)

        def run_restore(prior) -> torch.Tensor:
            return restore(op, prior, steps=n_steps, seed=seed, strength=strength, stochastic=stochastic,
                           lit_model=lit_model, positive=split_prompts(positive),
                           negative=split_prompts(negative), guidance=guidance,
                           callback=progress_callback(n_steps, desc="LiT restore"))

        if isinstance(denoiser, DiffusionDenoiser) and host.comfy_sampling_available():
            # Through ComfyUI's sampler, so the MODEL's patches (attention, LoRA, ControlNet, wrappers) apply.
            def with_host_model(predict_x0):
                denoiser.predict_x0 = predict_x0
                return run_restore(denoiser)

            out = host.run_with_comfy_model(model, conditioning, denoiser.encode(op.init()), seed, with_host_model)
        else:
            out = run_restore(denoiser)
        result = out.permute(0, 2, 3, 1).float().cpu().contiguous()
        report = (f"{degradation}: {denoiser.note}; {n_steps} steps{noise_note(op)}"
                  f"{shot_noise_note(op, denoiser, n_steps)}")
        print(f"[LiT Restoration Sampler] {report}")
        ui = compare_ui(image[..., :3], result, "lit_restore")
        ui["text"] = [report]
        return {"ui": ui, "result": (result,)}


class LiTDegrade:
    DISPLAY = "LiT Degrade"
    DESCRIPTION = ("Makes known test damage (noise, blur + noise, missing pixels, scratches, downscaling, JPEG) "
                   "so a workflow can show the Restoration Sampler's before and after. The damage follows the "
                   "same models the sampler inverts.")
    CATEGORY = f"{CATEGORY}/restore"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("The damaged images (downscaling makes them smaller).",
                       "1 where pixels were removed (random pixels, scratches); zeros otherwise.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Clean images to damage."}),
                **_widgets(DEGRADE, "damage noise_sigma seed"),
            },
            "optional": _widgets(DEGRADE, "blur_sigma motion_length motion_angle fraction scratches scratch_width "
                                          "downsample jpeg_quality poisson_gain"),
        }

    @with_node_errors(DISPLAY)
    def run(self, image: torch.Tensor, damage: str, noise_sigma: float, seed: int, blur_sigma: float = 2.0,
            motion_length: float = 9.0, motion_angle: float = 0.0, fraction: float = 0.5, scratches: int = 6,
            scratch_width: float = 3.0, downsample: str = "bicubic", jpeg_quality: int = 10,
            poisson_gain: float = 5.0):
        _check_rgb(image)
        if noise_sigma < 0:
            raise LitError("the noise level must be >= 0.", input_name="noise_sigma")
        gen = torch.Generator().manual_seed(int(seed))
        x = image[..., :3].clone().float().permute(0, 3, 1, 2)
        b, _, h, w = x.shape
        mask = torch.zeros(b, h, w)
        sigma = noise_sigma / 255.0
        if damage not in DAMAGES:
            raise LitError(f"unknown damage '{damage}'.", input_name="damage",
                           fix=f"choose one of {', '.join(DAMAGES)}.")
        kind, param = DAMAGES[damage]
        if kind == "noise" and param == "camera":
            x = deg.camera_noise(x, sigma, gen)
        elif kind == "noise":
            gain = poisson_gain / 255.0 if param == "poisson" else 0.0
            x = deg.add_noise(x, sigma, gain, gen)
        elif kind == "blur":
            x = deg.Deblur(x, kernel_for(damage, blur_sigma, motion_length, motion_angle),
                           deg.SIGMA_FLOOR).apply(x)  # only blurs: no noise level to read
            x = deg.add_noise(x, sigma, 0.0, gen) if sigma > 0 else x
        elif kind == "mask":
            if param == "random":
                mask = deg.random_mask((b, h, w), fraction, gen)
            else:
                mask = deg.scratch_mask((b, h, w), scratches, scratch_width, gen)
            x = x * (1 - mask[:, None])
        elif kind == "downscale":
            x = deg.downscale(x, int(param), downsample)
            x = deg.add_noise(x, sigma, 0.0, gen) if sigma > 0 else x
            mask = torch.zeros(b, x.shape[-2], x.shape[-1])
        else:
            x = deg.jpeg_compress(x, jpeg_quality)
        if kind != "jpeg":
            x = (x.clamp(0, 1) * 255).round() / 255  # what saving it as a PNG would keep
        return (x.permute(0, 2, 3, 1).contiguous(), mask)


UPSCALE_FOLDER = "upscale_models"
NO_PRIORS = "(no .safetensors in models/upscale_models)"


class LiTLoadRestorationPrior:
    DISPLAY = "LiT Load Restoration Prior"
    DESCRIPTION = ("Loads a trained denoiser from models/upscale_models as the Restoration Sampler's prior: FFDNet "
                   "converted to .safetensors (python -m comfyui_lit restore-convert FFDNet_color.mat), which core's "
                   "'Load Upscale Model' cannot read, or any 1x denoiser spandrel knows (DRUNet, DnCNN/FDnCNN, "
                   "SCUNet, ...). Only .safetensors files: pickles can run code when loaded.")
    CATEGORY = f"{CATEGORY}/restore"
    FUNCTION = "run"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    RETURN_NAMES = ("prior",)
    OUTPUT_TOOLTIPS = ("The denoiser, for the Restoration Sampler's 'prior' input (it also works in core's "
                       "'Upscale Image (using Model)', as a one-shot 1x denoiser).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prior_name": (list_models(UPSCALE_FOLDER, include_dirs=False) or [NO_PRIORS], {
                    "tooltip": "A denoiser .safetensors in models/upscale_models (refresh the page after adding "
                               "one)."}),
                "noise_level": ("FLOAT", {
                    "default": 15.0, "min": 0.0, "max": 255.0, "step": 0.5,
                    "tooltip": "FFDNet only: the noise std (0..255) it removes when run on its own, e.g. by "
                               "'Upscale Image (using Model)'. The Restoration Sampler ignores it and gives the "
                               "network each step's own noise level."}),
            },
        }

    @with_node_errors(DISPLAY)
    def run(self, prior_name: str, noise_level: float = 15.0):
        if prior_name == NO_PRIORS:
            raise LitError("there is no .safetensors denoiser in models/upscale_models.", input_name="prior_name",
                           fix="put one there (for FFDNet: python -m comfyui_lit restore-convert FFDNet_color.mat "
                               "--out models/upscale_models/ffdnet_color.safetensors) and refresh the page.")
        if not 0 <= noise_level <= 255:
            raise LitError("noise_level must be in 0..255.", input_name="noise_level")
        path = resolve_model(UPSCALE_FOLDER, prior_name, input_name="prior_name", node=self.DISPLAY)
        try:
            desc = load_descriptor(path, noise_level / 255.0)
        except LitError as err:  # the engine names its own 'prior'; here the user picked the file in 'prior_name'
            raise LitError(err.message, input_name="prior_name", fix=err.fix) from None
        return (desc,)


NODE_CLASS_MAPPINGS = {"LiTRestorationSampler": LiTRestorationSampler, "LiTDegrade": LiTDegrade,
                       "LiTLoadRestorationPrior": LiTLoadRestorationPrior}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY for k, v in NODE_CLASS_MAPPINGS.items()}
