"""A differentiable photo-enhancement operator with few, meaningful parameters.

The enhancement sampler fits these parameters on a small proxy of the image (cheap gradients through the
image tower) and then applies them once at full resolution. That only works because every parameter is
defined independently of pixel size: global terms are per image, the bilateral grid lives in normalised
(x, y, luminance) coordinates and is sliced per pixel with trilinear interpolation (so there are no tiles and
no seams), and the detail term's blur radius is a fraction of the image's short side.

Pipeline, in order: white balance -> exposure -> per-channel monotone tone curves -> contrast -> saturation ->
local affine colour transform from a bilateral grid (HDRNet-style) -> detail (unsharp mask) -> clamp to 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..common.errors import LitError

LUMA = (0.299, 0.587, 0.114)
# softplus(_SP_ONE) == 1: equal raw increments give the identity curve.
_SP_ONE = math.log(math.e - 1.0)
# Blur sigma of the detail term as a fraction of the short side: "detail" means the same thing at any size.
DETAIL_SIGMA_FRACTION = 1.0 / 100.0
DETAIL_RANGE = (-1.0, 2.0)
# Rows of the full-resolution image sliced at a time when no gradient is needed: bounds memory, and because
# slicing is pointwise trilinear interpolation the chunks join without seams.
SLICE_CHUNK_PIXELS = 1 << 20
PARAMS_VERSION = 1


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` -> ``[B,1,H,W]`` Rec.601 luma."""
    w = rgb.new_tensor(LUMA).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


@dataclass
class EnhancementParams:
    """Per-image enhancement parameters (batch dimension first). Identity when all are at their defaults.

    exposure: ``[B]`` stops (x * 2**exposure). contrast: ``[B]`` log-gain around mid-grey.
    white_balance: ``[B,3]`` per-channel log-gains. saturation: ``[B]`` log-gain of chroma.
    curves: ``[B,3,K]`` raw increments of a monotone piecewise-linear curve per channel (softplus keeps each
    increment positive, so the curve is monotone and maps 0->0, 1->1). grid: ``[B,12,D,Gh,Gw]`` residual of a
    3x4 affine colour matrix per bilateral-grid cell (luminance bins D, spatial Gh x Gw). detail: ``[B]`` raw
    unsharp-mask amount, squashed into ``DETAIL_RANGE``.
    """

    exposure: torch.Tensor
    contrast: torch.Tensor
    white_balance: torch.Tensor
    saturation: torch.Tensor
    curves: torch.Tensor
    grid: torch.Tensor
    detail: torch.Tensor

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def identity(cls, batch: int = 1, *, curve_knots: int = 8, grid_size: tuple[int, int, int] = (8, 8, 8),
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> EnhancementParams:
        """Parameters that leave an image unchanged. ``grid_size`` is (luminance bins, rows, cols)."""
        d, gh, gw = (max(int(v), 2) for v in grid_size)
        z = torch.zeros(batch, device=device, dtype=dtype)
        return cls(exposure=z.clone(), contrast=z.clone(),
                   white_balance=torch.zeros(batch, 3, device=device, dtype=dtype),
                   saturation=z.clone(),
                   curves=torch.full((batch, 3, max(int(curve_knots), 2)), _SP_ONE, device=device, dtype=dtype),
                   grid=torch.zeros(batch, 12, d, gh, gw, device=device, dtype=dtype),
                   detail=z.clone())

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def batch_size(self) -> int:
        return int(self.exposure.shape[0])

    def _map(self, fn) -> EnhancementParams:
        return EnhancementParams(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EnhancementParams:
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> EnhancementParams:
        return self._map(lambda t: t.detach().clone())

    def select(self, index: int | list[int] | torch.Tensor) -> EnhancementParams:
        """A sub-batch (``index`` an int keeps the batch dimension, as ``[index]``)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(index, dtype=torch.long, device=self.exposure.device)
        return self._map(lambda t: t.index_select(0, idx))

    @staticmethod
    def cat(items: list[EnhancementParams]) -> EnhancementParams:
        return EnhancementParams(**{f.name: torch.cat([getattr(p, f.name) for p in items])
                                    for f in fields(EnhancementParams)})

    def requires_grad_(self, flag: bool = True) -> EnhancementParams:
        for t in self.tensors():
            t.requires_grad_(flag)
        return self

    # -- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors (safetensors-friendly), with a version tag."""
        out = {f"enhance.{f.name}": getattr(self, f.name).detach().float().cpu().contiguous() for f in fields(self)}
        out["enhance.version"] = torch.tensor([PARAMS_VERSION])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> EnhancementParams:
        missing = [f.name for f in fields(cls) if f"enhance.{f.name}" not in data]
        if missing:
            raise LitError(f"these enhancement parameters are incomplete (missing {', '.join(missing)}).",
                           input_name="enhancement", fix="connect the LIT_ENHANCEMENT output of an Enhancement "
                                                         "Sampler, or a file saved from one.")
        p = cls(**{f.name: data[f"enhance.{f.name}"].float() for f in fields(cls)})
        b = p.batch_size
        shapes_ok = (p.contrast.shape == (b,) and p.white_balance.shape == (b, 3) and p.saturation.shape == (b,)
                     and p.curves.dim() == 3 and p.curves.shape[:2] == (b, 3) and p.grid.dim() == 5
                     and p.grid.shape[:2] == (b, 12) and p.detail.shape == (b,))
        if not shapes_ok:
            raise LitError("these enhancement parameters have inconsistent shapes.", input_name="enhancement",
                           fix="re-run the Enhancement Sampler that produced them.")
        return p

    def describe(self, index: int = 0) -> str:
        """A one-line human summary of the global part of one image's grade."""
        i = index
        wb = self.white_balance[i].exp().tolist()
        return (f"exposure {self.exposure[i].item():+.2f} EV, contrast x{self.contrast[i].exp().item():.2f}, "
                f"saturation x{self.saturation[i].exp().item():.2f}, white balance "
                f"R{wb[0]:.2f}/G{wb[1]:.2f}/B{wb[2]:.2f}, detail {detail_amount(self.detail[i]).item():+.2f}, "
                f"local grid |{self.grid[i].abs().mean().item():.3f}|")


def detail_amount(raw: torch.Tensor) -> torch.Tensor:
    lo, hi = DETAIL_RANGE
    # tanh-squash so the amount stays in a sane range; raw 0 -> amount 0.
    return torch.where(raw >= 0, torch.tanh(raw) * hi, torch.tanh(raw) * -lo)


def curve_knots(raw: torch.Tensor) -> torch.Tensor:
    """``[B,3,K]`` raw increments -> ``[B,3,K+1]`` knot values from 0 to 1, strictly increasing."""
    inc = F.softplus(raw) + 1e-4
    cum = torch.cumsum(inc, dim=-1)
    cum = cum / cum[..., -1:]
    return torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)


def apply_curves(x: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Per-channel piecewise-linear monotone curves. ``x`` ``[B,3,H,W]`` in 0..1."""
    b, c, h, w = x.shape
    knots = curve_knots(raw)  # [B,3,K+1]
    k = knots.shape[-1] - 1
    pos = x.clamp(0.0, 1.0).reshape(b, c, -1) * k
    idx = pos.detach().floor().clamp(0, k - 1).long()
    frac = pos - idx.to(pos.dtype)
    lo = torch.gather(knots, 2, idx)
    hi = torch.gather(knots, 2, idx + 1)
    return (lo + (hi - lo) * frac).reshape(b, c, h, w)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(int(math.ceil(3.0 * sigma)), 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    # replicate padding works for any size (reflect fails when the pad exceeds the image, e.g. 1x1)
    x = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def relative_blur(x: torch.Tensor, fraction: float = DETAIL_SIGMA_FRACTION) -> torch.Tensor:
    """Gaussian blur with sigma = ``fraction`` x short side. Large sigmas blur a box-downsampled copy and
    upsample it bilinearly (same result to within interpolation error, and O(pixels) at any resolution)."""
    h, w = x.shape[-2:]
    sigma = fraction * min(h, w)
    if sigma < 0.3:
        return x
    factor = max(int(sigma // 2), 1)
    if factor > 1 and min(h, w) // factor >= 2:
        small = F.avg_pool2d(x, factor, ceil_mode=True)
        small = _gaussian_blur(small, sigma / factor)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return _gaussian_blur(x, sigma)


def _slice_grid(grid: torch.Tensor, guide: torch.Tensor, top: int = 0, full_h: int | None = None) -> torch.Tensor:
    """Trilinear slice: grid ``[B,12,D,Gh,Gw]``, guide ``[B,1,h,W]`` in 0..1 (rows ``top..top+h`` of an image
    ``full_h`` tall) -> coefficients ``[B,12,h,W]``."""
    b, _, h, w = guide.shape
    full_h = h if full_h is None else full_h

    def axis(n: int) -> torch.Tensor:
        if n == 1:
            return guide.new_zeros(1)
        return torch.linspace(-1.0, 1.0, n, device=guide.device, dtype=guide.dtype)

    gy, gx = torch.meshgrid(axis(full_h)[top:top + h], axis(w), indexing="ij")
    z = guide[:, 0] * 2.0 - 1.0
    coords = torch.stack([gx.expand(b, h, w), gy.expand(b, h, w), z], dim=-1).unsqueeze(1)  # [B,1,h,W,3]
    out = F.grid_sample(grid, coords, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, 0]


def apply_grid(x: torch.Tensor, grid: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Local affine colour transform: out = (I + A(x,y,g)) @ [r,g,b] + t(x,y,g), A and t sliced from the grid
    with the full-resolution guide."""
    b, _, h, w = x.shape
    rows = h
    if not (torch.is_grad_enabled() and (x.requires_grad or grid.requires_grad)) and h * w > SLICE_CHUNK_PIXELS:
        rows = max(SLICE_CHUNK_PIXELS // max(w, 1), 1)
    parts = []
    for top in range(0, h, rows):
        xs = x[:, :, top:top + rows]
        coeff = _slice_grid(grid, guide[:, :, top:top + rows], top, h).view(b, 3, 4, xs.shape[2], w)
        parts.append(xs + (coeff[:, :, :3] * xs.unsqueeze(1)).sum(2) + coeff[:, :, 3])
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _broadcast(params: EnhancementParams, batch: int) -> EnhancementParams:
    pb = params.batch_size
    if pb == batch:
        return params
    if pb == 1:
        return params._map(lambda t: t.expand(batch, *t.shape[1:]))
    raise LitError(f"the enhancement holds {pb} parameter sets but the image batch has {batch} images.",
                   input_name="enhancement", fix="use a batch of the same size, or pick one set ('first') to "
                                                 "apply to every image.")


def apply_enhancement_bchw(x: torch.Tensor, params: EnhancementParams, guide: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """The operator on ``[B,3,H,W]`` in 0..1. ``guide`` (luminance of the original, ``[B,1,H,W]``) defaults to
    the luminance of ``x``."""
    p = _broadcast(params.to(x.device, x.dtype), x.shape[0])
    if guide is None:
        guide = luminance(x)
    guide = guide.clamp(0.0, 1.0)
    y = x * p.white_balance.exp().view(-1, 3, 1, 1)
    y = y * torch.exp2(p.exposure).view(-1, 1, 1, 1)
    y = apply_curves(y.clamp(0.0, 1.0), p.curves)
    y = (y - 0.5) * p.contrast.exp().view(-1, 1, 1, 1) + 0.5
    lum = luminance(y)
    y = lum + (y - lum) * p.saturation.exp().view(-1, 1, 1, 1)
    y = apply_grid(y, p.grid, guide)
    amount = detail_amount(p.detail).view(-1, 1, 1, 1)
    if x.shape[-1] > 1 and x.shape[-2] > 1:
        y = y + amount * (y - relative_blur(y))
    return y.clamp(0.0, 1.0)


def blend_mask(enhanced: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep ``original`` where ``mask`` is 0. Tensors ``[B,3,H,W]``; mask ``[B,1,H,W]`` already resized."""
    if mask is None:
        return enhanced
    return original + (enhanced - original) * mask


def prepare_mask(mask: torch.Tensor | None, batch: int, height: int, width: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """A ComfyUI MASK (``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]``, 1 = change allowed) -> ``[B,1,H,W]`` in 0..1 at
    the image's size (bilinear: a soft edge, no hard seam at the mask border)."""
    if mask is None:
        return None
    m = mask.to(device=device, dtype=dtype)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise LitError(f"expected a MASK [B,H,W] or [H,W], got shape {tuple(mask.shape)}.", input_name="mask",
                       fix="connect a MASK output.")
    if m.shape[0] not in (1, batch):
        raise LitError(f"the mask batch ({m.shape[0]}) does not match the image batch ({batch}).",
                       input_name="mask", fix="use one mask, or one per image.")
    m = m.unsqueeze(1)
    if m.shape[-2:] != (height, width):
        shrink = m.shape[-2] > height or m.shape[-1] > width
        m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)
    return m.clamp(0.0, 1.0).expand(batch, 1, height, width)


def to_bchw(images: torch.Tensor, input_name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[B,H,W,C]`` (C in 1,3,4) -> ``[B,3,H,W]`` float32 0..1 (alpha dropped)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        raise LitError(f"expected an IMAGE [B,H,W,C] with 1, 3 or 4 channels, got shape {tuple(images.shape)}.",
                       input_name=input_name, fix="connect an IMAGE output.")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise LitError("the image is empty.", input_name=input_name, fix="connect a non-empty IMAGE.")
    x = images[..., :3] if images.shape[-1] >= 3 else images.expand(*images.shape[:-1], 3)
    x = x.float().movedim(-1, 1)
    return torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)


def _mask_item(mask: torch.Tensor, i: int, batch: int) -> torch.Tensor:
    m = mask[:, 0] if mask.dim() == 4 and mask.shape[1] == 1 else mask
    if m.dim() == 2:
        return m
    if m.dim() == 3 and m.shape[0] in (1, batch):
        return m[i if m.shape[0] == batch else 0]
    raise LitError(f"the mask (shape {tuple(mask.shape)}) does not fit an image batch of {batch}.",
                   input_name="mask", fix="use one mask, or one per image.")


def apply_enhancement(images: torch.Tensor, params: EnhancementParams, mask: torch.Tensor | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Apply a fitted grade to ComfyUI images ``[B,H,W,C]`` (any size; params of batch 1 go to every image).

    Images are processed one at a time on ``device`` (default: the images' own) to bound memory, and returned as
    ``[B,H,W,3]`` float32 in 0..1 on the images' device."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    to_bchw(images[:1])  # validates shape before any work
    b, h, w = images.shape[:3]
    device = torch.device(device) if device is not None else images.device
    p = _broadcast(params, b)
    out = []
    for i in range(b):
        xi = to_bchw(images[i:i + 1].to(device))
        mi = None if mask is None else prepare_mask(_mask_item(mask, i, b), 1, h, w, device)
        yi = blend_mask(apply_enhancement_bchw(xi, p.select(i)), xi, mi)
        out.append(yi.to(images.device))
    return torch.cat(out).movedim(1, -1).contiguous()
