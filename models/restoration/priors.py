"""Trained denoiser priors: a spandrel ``ImageModelDescriptor`` (ComfyUI's ``UPSCALE_MODEL``), a ``.safetensors``
file (FFDNet as converted here, or any architecture spandrel detects), or an :class:`~.ffdnet.FFDNet` module.

Noise-level-conditioned networks get the annealed sigma of every HQS step: DRUNet and FDnCNN as an extra input
channel (spandrel's own call fixes it at 15/255, so the module is called directly), FFDNet as its noise map. Blind
networks (DnCNN, SCUNet, NAFNet, ...) denoise at the level they were trained for; :attr:`NetworkPrior.note` says so
and the node reports it. The image runs in overlapping tiles on the prior's device, in fp16 on a GPU where the
architecture allows it. Pickled checkpoints are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common.errors import LitError
from ..towers.registry import check_finite_state
from .denoisers import Denoiser, is_grey, sigma_vec
from .ffdnet import ARCH_NAME as FFDNET
from .ffdnet import FFDNet, build_from_state_dict
from .tiling import tiled

# spandrel architectures that take a noise-level map as their last input channel
NOISE_CHANNEL_ARCHS = {"DRUNet"}


class NetworkPrior(Denoiser):
    """``D(x, sigma)`` from a trained network. ``call(x, sigma [B]) -> x0`` runs on one padded tile."""

    trained = True

    def __init__(self, call: Callable[[Tensor, Tensor], Tensor], *, name: str, channels: int, conditioned: bool,
                 device: torch.device, dtype: torch.dtype = torch.float32, multiple_of: int = 1,
                 minimum: int = 0, tile: int = 512, overlap: int = 32) -> None:
        self.call, self.name, self.channels, self.conditioned = call, name, channels, conditioned
        self.device, self.dtype = torch.device(device), dtype
        self.multiple_of, self.minimum, self.tile, self.overlap = max(1, multiple_of), minimum, tile, overlap

    @property
    def note(self) -> str:
        how = ("conditioned on the annealed noise level of each step" if self.conditioned else
               "blind: it denoises at the level it was trained for, not the annealed noise level")
        return f"prior: {self.name} ({how}; {self.device.type}, {str(self.dtype).replace('torch.', '')})"

    def _run(self, x: Tensor, s: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m = self.multiple_of
        ph, pw = max(-h % m, self.minimum - h), max(-w % m, self.minimum - w)
        xp = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), mode="replicate") if (ph > 0 or pw > 0) else x
        with torch.no_grad():
            out = self.call(xp.to(self.device, self.dtype), s.to(self.device, self.dtype))
        return out[..., :h, :w].to(x.device, torch.float32)

    def __call__(self, x: Tensor, sigma: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, c = x.shape[:2]
        s = sigma_vec(sigma, b, x.device)
        if self.channels == 1 and c == 3:
            if is_grey(x):  # a black-and-white photo: one pass instead of three identical ones
                return self(x.mean(dim=1, keepdim=True), s).expand(x.shape).contiguous()
            # a grey network denoises each colour channel
            return self(x.reshape(b * 3, 1, *x.shape[-2:]), s.repeat_interleave(3)).reshape(x.shape)
        if self.channels == 3 and self.conditioned and is_grey(x):
            # A black-and-white photo's noise is the same in all three channels, so its luma carries sqrt(3) times
            # the noise a colour net trained on independent channel noise expects at that level: colour FFDNet on four
            # Set12 photos at sigma 25 gives 23.5 dB told sigma, 29.5 told sqrt(3) sigma (measured 2026-12-03).
            s = s * math.sqrt(3)
        if self.channels != c:
            raise LitError(f"the prior {self.name} takes {self.channels}-channel images, this one has {c}.",
                           input_name="prior", fix="use a colour (3-channel) denoiser for colour images.")
        out = tiled(lambda t: self._run(t, s), x.float(), self.tile, self.overlap)
        if not torch.isfinite(out).all():
            raise LitError(f"the prior {self.name} produced NaN or infinite pixels"
                           + (" in fp16; it may not support half precision." if self.dtype == torch.float16 else "."),
                           input_name="prior", fix="check the network's weights, or run it in fp32.")
        return out


def _half_ok(device: torch.device, supported: bool) -> torch.dtype:
    return torch.float16 if device.type == "cuda" and supported else torch.float32


def from_ffdnet(net: FFDNet, device: torch.device | str = "cpu", name: str = FFDNET, **kw: Any) -> NetworkPrior:
    device = torch.device(device)
    dtype = _half_ok(device, True)
    net = net.to(device, dtype).eval().requires_grad_(False)
    return NetworkPrior(lambda x, s: net(x, s), name=name, channels=net.in_nc, conditioned=True, device=device,
                        dtype=dtype, multiple_of=2, **kw)


def check_denoiser(desc: Any) -> str:
    """The architecture id of a spandrel descriptor that can serve as a prior; a clear error for anything else."""
    for member in ("model", "architecture", "scale", "input_channels", "output_channels"):
        if not hasattr(desc, member):
            raise LitError("this is not a spandrel model descriptor (an UPSCALE_MODEL).", input_name="prior",
                           fix="connect the output of 'Load Restoration Prior' or 'Load Upscale Model' with a "
                               "denoising network.")
    arch = str(getattr(desc.architecture, "id", desc.architecture))
    if int(desc.scale) != 1 or desc.input_channels != desc.output_channels:
        raise LitError(f"{arch} is a x{desc.scale} {desc.input_channels}->{desc.output_channels}-channel network; "
                       "a prior must be a 1x denoiser (same size and channels in and out).", input_name="prior",
                       fix="load a denoising network (DRUNet, FFDNet, DnCNN, SCUNet, ...), not an upscaler; "
                           "upscalers belong in core's 'Upscale Image (using Model)'.")
    if getattr(desc, "purpose", "Restoration") not in ("Restoration",):
        raise LitError(f"{arch} is a '{desc.purpose}' network, not a denoiser.", input_name="prior",
                       fix="load a denoising network (DRUNet, FFDNet, DnCNN, SCUNet, ...).")
    return arch


def from_descriptor(desc: Any, device: torch.device | str = "cpu", **kw: Any) -> NetworkPrior:
    """A spandrel ``ImageModelDescriptor`` (what ComfyUI's *Load Upscale Model* gives) as a denoiser prior."""
    arch = check_denoiser(desc)
    if isinstance(desc.model, FFDNet):  # ours, from 'Load Restoration Prior': conditioned on the noise map
        # a copy: moving it to the device (fp16 on a GPU) must not change the descriptor core's nodes may also run
        return from_ffdnet(copy.deepcopy(desc.model), device, name=getattr(desc.architecture, "name", None) or FFDNET,
                           **kw)
    device = torch.device(device)
    dtype = _half_ok(device, bool(getattr(desc, "supports_half", False)))
    desc.to(device)
    desc.model.to(dtype)
    desc.model.eval().requires_grad_(False)
    model = desc.model
    req = getattr(desc, "size_requirements", None)
    multiple_of, minimum = int(getattr(req, "multiple_of", 1) or 1), int(getattr(req, "minimum", 0) or 0)
    tags = list(getattr(desc, "tags", []) or [])
    conditioned = arch in NOISE_CHANNEL_ARCHS or (arch == "DnCNN" and "FDnCNN" in tags)
    if conditioned:
        def call(x: Tensor, s: Tensor) -> Tensor:
            return model(torch.cat([x, s.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])], 1))
    else:
        def call(x: Tensor, s: Tensor) -> Tensor:
            return desc._call_fn(model, x) if hasattr(desc, "_call_fn") else model(x)
    if getattr(desc, "tiling", None) is not None and str(getattr(desc.tiling, "name", "")) == "INTERNAL":
        kw.setdefault("tile", 1 << 30)  # the network tiles itself
    return NetworkPrior(call, name=arch, channels=int(desc.input_channels), conditioned=conditioned,
                        device=device, dtype=dtype, multiple_of=multiple_of, minimum=minimum, **kw)


def _spandrel_loader():
    try:
        from spandrel import ModelLoader
    except ImportError as err:
        raise LitError("loading this network needs spandrel (ComfyUI ships it).", input_name="prior",
                       fix="pip install spandrel, or run inside ComfyUI with 'Load Upscale Model'.") from err
    except RuntimeError as err:  # a torchvision built for another torch fails while spandrel imports it
        raise LitError(f"spandrel could not be imported: {err}", input_name="prior",
                       fix="install a torchvision that matches your torch.") from err
    return ModelLoader


def _read_safetensors(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of a ``.safetensors`` file; pickles, missing and damaged files are refused."""
    name = os.path.basename(path)
    if os.path.splitext(path)[1].lower() not in (".safetensors", ".sft"):
        raise LitError(f"'{name}' is not a .safetensors file; pickled weights (.pt/.pth/.ckpt/.bin) are refused "
                       "because loading them can run arbitrary code.", input_name="prior",
                       fix="convert the weights to .safetensors (python -m comfyui_lit restore-convert for FFDNet).")
    if not os.path.isfile(path):
        raise LitError(f"'{path}' does not exist.", input_name="prior", fix="check the path.")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a mapping
    except (SafetensorError, OSError, ValueError) as err:
        raise LitError(f"'{name}' is not a readable .safetensors file: {err}", input_name="prior",
                       fix="the file is damaged or not safetensors: download or convert it again.") from err
    if not sd:
        raise LitError(f"'{name}' holds no tensors.", input_name="prior",
                       fix="the file is empty or damaged: download or convert it again.")
    return sd, meta


def _spandrel_descriptor(sd: dict[str, Tensor], name: str) -> Any:
    """The spandrel descriptor of a state dict whose weights are checked finite first."""
    check_finite_state(sd, path=name, input_name="prior")
    loader = _spandrel_loader()
    try:
        return loader().load_from_state_dict(sd)
    except Exception as err:  # spandrel raises its own UnsupportedModelError and plain KeyErrors on odd layouts
        raise LitError(f"'{name}' is not an architecture spandrel knows: {err}", input_name="prior",
                       fix="use a denoising network spandrel supports (DRUNet, DnCNN, SCUNet, ...) or FFDNet.") \
            from err


def load_prior(path: str, device: torch.device | str = "cpu", **kw: Any) -> NetworkPrior:
    """A ``.safetensors`` denoiser as a prior: FFDNet (our converter's files), else whatever spandrel detects."""
    name = os.path.basename(path)
    sd, meta = _read_safetensors(path)
    if meta.get("architecture") == FFDNET:
        return from_ffdnet(build_from_state_dict(sd, name), device, name=f"{FFDNET} ({name})", **kw)
    return from_descriptor(_spandrel_descriptor(sd, name), device, **kw)


# Core's 'Upscale Image (using Model)' calls a descriptor without a noise level: FFDNet then denoises at this one.
DEFAULT_SIGMA = 15 / 255


def ffdnet_descriptor(net: FFDNet, sigma: float = DEFAULT_SIGMA, name: str = FFDNET) -> Any:
    """FFDNet as a spandrel ``ImageModelDescriptor`` (ComfyUI's ``UPSCALE_MODEL``): the Restoration Sampler gives it
    each step's noise level; core's upscale node (and anything else that calls the descriptor) runs it at ``sigma``.
    """
    try:
        from spandrel import Architecture, ImageModelDescriptor, SizeRequirements
    except ImportError as err:
        raise LitError("wrapping FFDNet as an UPSCALE_MODEL needs spandrel (ComfyUI ships it).",
                       input_name="prior_name", fix="pip install spandrel.") from err

    class FFDNetArch(Architecture):  # spandrel detects no FFDNet; the descriptor only needs its id and name
        def __init__(self) -> None:
            super().__init__(id=FFDNET, name=name, detect=lambda sd: False)

        def load(self, state_dict: dict[str, Tensor]) -> Any:
            return ffdnet_descriptor(build_from_state_dict(state_dict), sigma, name)

    level = float(sigma)
    return ImageModelDescriptor(net.eval().requires_grad_(False), net.state_dict(), architecture=FFDNetArch(),
                                purpose="Restoration", tags=[f"{net.in_nc}ch", f"{net.depth}x{net.nc}"],
                                supports_half=True, supports_bfloat16=True, scale=1, input_channels=net.in_nc,
                                output_channels=net.in_nc, size_requirements=SizeRequirements(multiple_of=2),
                                call_fn=lambda model, x: model(x, level))


def load_descriptor(path: str, sigma: float = DEFAULT_SIGMA) -> Any:
    """A ``.safetensors`` denoiser as an ``UPSCALE_MODEL`` (spandrel descriptor), checked to be a 1x denoiser:
    FFDNet (our converter's files) or any architecture spandrel detects. What 'Load Restoration Prior' returns."""
    name = os.path.basename(path)
    sd, meta = _read_safetensors(path)
    if meta.get("architecture") == FFDNET:
        return ffdnet_descriptor(build_from_state_dict(sd, f"'{name}'"), sigma, f"{FFDNET} ({name})")
    desc = _spandrel_descriptor(sd, name)
    check_denoiser(desc)
    return desc


def as_prior(obj: Any, device: torch.device | str = "cpu", **kw: Any) -> NetworkPrior:
    """Whatever the user gave: a path, an UPSCALE_MODEL descriptor, an FFDNet, or a prior already built."""
    if isinstance(obj, NetworkPrior):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_prior(os.fspath(obj), device, **kw)
    if isinstance(obj, FFDNet):
        return from_ffdnet(obj, device, **kw)
    if isinstance(obj, nn.Module):
        raise LitError("a bare network cannot be used as a prior: it is not known how it takes the noise level.",
                       input_name="prior", fix="load it through spandrel (Load Upscale Model) or a .safetensors file.")
    return from_descriptor(obj, device, **kw)
