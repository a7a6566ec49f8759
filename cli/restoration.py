"""``restore`` and ``restore-convert``: the Restoration Sampler on image files, and FFDNet's weights to safetensors.

    python -m comfyui_lit restore-convert FFDNet_color.mat --out ffdnet_color.safetensors
    python -m comfyui_lit restore noisy.png --task denoise --sigma 25 --prior ffdnet_color.safetensors --out a.png
    python -m comfyui_lit restore small.png --task "upscale x4" --prior ffdnet_color.safetensors --out big.png
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from ..models.common.errors import LitError
from ..models.restoration.spec import RESTORE_TASKS, SAMPLER, task


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.restoration.ffdnet import convert_mat

    print(convert_mat(args.mat, args.out))
    return 0


def _read(read_image, path: str, input_name: str) -> torch.Tensor:
    try:
        return read_image(path)
    except LitError as err:
        raise LitError(err.message, input_name=input_name, fix=err.fix) from None


def cmd_restore(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..models.restoration.denoisers import DCTDenoiser
    from ..models.restoration.priors import load_prior
    from ..models.restoration.sampler import restore, schedule_for
    from ..models.restoration.tasks import build_operator, noise_note, shot_noise_note
    from .common import device_name

    if os.path.exists(args.out) and not args.overwrite:
        raise LitError(f"'{args.out}' exists.", input_name="out", fix="choose another name or pass --overwrite.")
    device = torch.device(device_name(args))
    from ..models.data.dataset import read_image

    # The pack's one decoder: 16-bit and palette files converted right, size-bombs refused, damage named.
    y = _read(read_image, args.image, "image").permute(2, 0, 1)[None].to(device)
    mask = None
    if args.mask:
        mask = _read(read_image, args.mask, "mask").mean(-1)[None]
    op = build_operator(args.task, y, noise_sigma=args.noise_sigma, blur_sigma=args.blur_sigma,
                        motion_length=args.motion_length, motion_angle=args.motion_angle, mask=mask,
                        jpeg_quality=args.jpeg_quality, poisson_gain=args.poisson_gain)
    if args.prior:
        denoiser = load_prior(args.prior, device)
    else:
        denoiser = DCTDenoiser(block_matching=task(args.task).block_matching)
    steps = args.steps or schedule_for(op, denoiser.trained).steps
    out = restore(op, denoiser, steps=steps, seed=args.seed)
    arr = (out[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    tmp = f"{args.out}.tmp-{os.getpid()}{os.path.splitext(args.out)[1]}"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, args.out)
    print(f"{args.task}: {denoiser.note}; {steps} steps{noise_note(op, '--sigma')}"
          f"{shot_noise_note(op, denoiser, steps)} -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a damaged image (denoise, deblur, inpaint, upscale, JPEG)")
    p.add_argument("image")
    p.add_argument("--out", required=True)
    p.add_argument("--task", default=SAMPLER["degradation"].default, choices=RESTORE_TASKS,
                   help=SAMPLER["degradation"].tooltip)
    p.add_argument("--prior", default="", help="a trained denoiser .safetensors (FFDNet from restore-convert, or "
                                               "DRUNet/DnCNN/SCUNet... through spandrel); default: built-in")
    for flag, name, kind in (("--sigma", "noise_sigma", float), ("--steps", "steps", int), ("--seed", "seed", int),
                             ("--blur-sigma", "blur_sigma", float), ("--motion-length", "motion_length", float),
                             ("--motion-angle", "motion_angle", float), ("--jpeg-quality", "jpeg_quality", int),
                             ("--poisson-gain", "poisson_gain", float)):
        prm = SAMPLER[name]
        p.add_argument(flag, dest=name, type=kind, default=prm.default,
                       help=f"{prm.tooltip} (default {prm.default}; {prm.low}..{prm.high})")
    p.add_argument("--mask", default="", help="inpainting: a mask image, white = missing")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_restore)
    c = sub.add_parser("restore-convert", help="convert FFDNet's original MatConvNet .mat weights to .safetensors")
    c.add_argument("mat")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_convert)
