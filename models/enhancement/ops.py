"""A photo-grade operator that cannot invent colour, with few, bounded, meaningful parameters.

Every parameter is clamped into the range in :mod:`.spec`, and only two global terms touch colour: white balance
(per-channel gains, normalised to keep luminance) and saturation (a chroma gain about each pixel's luminance, so
hue is never rotated). Everything else applies the same tone change to R, G and B. The local term is a
bilateral grid (HDRNet-style, normalised (x, y, luminance) coordinates sliced per pixel with trilinear
interpolation: no tiles, no seams) that holds a *luminance gain* in stops, not a colour matrix: a cell can
brighten or darken a region, it cannot tint one. Parameters are defined independently of pixel size, so a grade
fitted on a small proxy applies unchanged at full resolution.

Pipeline, in order: white balance -> levels (black/white point) -> exposure -> midtones (gamma, its shadow gain
capped) -> contrast -> shadow chroma (noise-aware) -> saturation -> local dodge/burn -> detail (luminance unsharp
mask) -> clamp to 0..1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..common.errors import LitError
from .spec import (
    CHROMA_GAIN,
    CHROMA_MAX_GAIN,
    CHROMA_SIGMA,
    DETAIL_SIGMA_FRACTION,
    GRADE_PARAMS,
    GRID_SIZE,
    SHADOW_GAIN_RANGE,
)

LUMA = (0.299, 0.587, 0.114)
# Rows of the full-resolution image sliced at a time when no gradient is needed: bounds memory, and because
# slicing is pointwise trilinear interpolation the chunks join without seams.
SLICE_CHUNK_PIXELS = 1 << 20
PARAMS_VERSION = 3
# Levels per channel of the tabulated tone curve (a 16-bit table: nearest level within 8e-6 of any input).
LUT_SIZE = 1 << 16
_MIN_LEVEL_SPAN = 0.2


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` -> ``[B,1,H,W]`` Rec.601 luma."""
    # a 1x1 convolution: one pass over the image, ~3x faster on the CPU than a product and a sum
    return F.conv2d(rgb, rgb.new_tensor(LUMA).view(1, 3, 1, 1))


def bounded(name: str, t: torch.Tensor) -> torch.Tensor:
    p = GRADE_PARAMS[name]
    return t.clamp(p.low, p.high)


@dataclass
class EnhancementParams:
    """Per-image grade (batch dimension first), in the units of :data:`.spec.GRADE_PARAMS`; identity at defaults.

    white_balance, black, white ``[B,3]`` (per channel); exposure, gamma, shadow_gain, contrast, saturation,
    detail ``[B]``;
    local ``[B,1,D,Gh,Gw]`` (luminance bins D, spatial Gh x Gw), stops of luminance gain.
    """

    white_balance: torch.Tensor
    black: torch.Tensor
    white: torch.Tensor
    exposure: torch.Tensor
    gamma: torch.Tensor
    shadow_gain: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    local: torch.Tensor
    detail: torch.Tensor

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def identity(cls, batch: int = 1, *, grid_size: tuple[int, int, int] = GRID_SIZE,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> EnhancementParams:
        """Parameters that leave an image unchanged. ``grid_size`` is (luminance bins, rows, cols)."""
        d, gh, gw = (max(int(v), 2) for v in grid_size)
        kw = {"device": device, "dtype": dtype}
        vals = {}
        for f in fields(cls):
            if f.name in ("white_balance", "black", "white"):
                vals[f.name] = torch.full((batch, 3), GRADE_PARAMS[f.name].identity, **kw)
            elif f.name == "local":
                vals[f.name] = torch.zeros(batch, 1, d, gh, gw, **kw)
            else:
                vals[f.name] = torch.full((batch,), GRADE_PARAMS[f.name].identity, **kw)
        return cls(**vals)

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

    def clamped(self) -> EnhancementParams:
        """Every parameter inside its range (what the operator applies)."""
        return EnhancementParams(**{f.name: bounded(f.name, getattr(self, f.name)) for f in fields(self)})

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

    def scaled(self, strength: float) -> EnhancementParams:
        """The grade moved back toward identity: every parameter at ``identity + strength * (value - identity)``.

        Because each parameter is a photographic quantity (stops, levels, log gains), half the strength is half of
        every adjustment, not a cross-fade of two images."""
        s = float(strength)
        if not math.isfinite(s) or s < 0.0 or s > 1.0:
            raise LitError(f"strength must be in 0..1, got {strength}.", input_name="strength",
                           fix="use 0 (no change) to 1 (the full grade).")
        out = {}
        for f in fields(self):
            v = bounded(f.name, getattr(self, f.name))
            ident = GRADE_PARAMS[f.name].identity
            out[f.name] = ident + (v - ident) * s
        return EnhancementParams(**out)

    # -- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain CPU tensors (safetensors-friendly), with a version tag."""
        out = {f"enhance.{f.name}": getattr(self, f.name).detach().float().cpu().contiguous() for f in fields(self)}
        out["enhance.version"] = torch.tensor([PARAMS_VERSION])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, torch.Tensor]) -> EnhancementParams:
        version = data.get("enhance.version")
        fmt = None if version is None else int(torch.as_tensor(version).reshape(-1)[0])
        if fmt == 2 and "enhance.shadow_gain" not in data and "enhance.gamma" in data:
            # format 2 had no shadow limit: the same grade with none (its identity)
            data = {**data, "enhance.shadow_gain": torch.full_like(torch.as_tensor(data["enhance.gamma"]).float(),
                                                                   GRADE_PARAMS["shadow_gain"].identity)}
            fmt = PARAMS_VERSION
        if fmt is not None and fmt != PARAMS_VERSION:
            raise LitError(f"this grade was saved by another version of the enhancement (format "
                           f"{fmt}, this one reads {PARAMS_VERSION}).",
                           input_name="enhancement", fix="re-run the LiT Enhancement Sampler to fit a new grade.")
        missing = [f.name for f in fields(cls) if f"enhance.{f.name}" not in data]
        if missing:
            raise LitError(f"these enhancement parameters are incomplete (missing {', '.join(missing)}).",
                           input_name="enhancement", fix="connect the LIT_ENHANCEMENT output of an Enhancement "
                                                         "Sampler, or a file saved from one.")
        p = cls(**{f.name: torch.as_tensor(data[f"enhance.{f.name}"]).float() for f in fields(cls)})
        b = p.batch_size
        scalars = ("exposure", "gamma", "shadow_gain", "contrast", "saturation", "detail")
        shapes_ok = (all(getattr(p, n).shape == (b,) for n in scalars)
                     and all(getattr(p, n).shape == (b, 3) for n in ("white_balance", "black", "white"))
                     and p.local.dim() == 5 and p.local.shape[:2] == (b, 1) and min(p.local.shape[2:]) >= 2)
        if not shapes_ok:
            raise LitError("these enhancement parameters have inconsistent shapes.", input_name="enhancement",
                           fix="re-run the Enhancement Sampler that produced them.")
        if not all(torch.isfinite(t).all() for t in p.tensors()):
            raise LitError("these enhancement parameters contain NaN or infinite values.", input_name="enhancement",
                           fix="re-run the Enhancement Sampler that produced them.")
        return p

    def describe(self, index: int = 0) -> str:
        """One image's grade in a photographer's words, one adjustment per line (only those that do something)."""
        p = self.clamped().select(index)
        lines = []
        wb = p.white_balance[0]
        wb = wb - (wb * wb.new_tensor(LUMA)).sum()
        warm = float(wb[0] - wb[2])
        tint = float(wb[1] - (wb[0] + wb[2]) / 2)
        if max(abs(warm), abs(tint)) > 0.01:
            lines.append(f"white balance: {'warmer' if warm > 0 else 'cooler'} by {abs(warm):.2f} (red/blue log "
                         f"gain), {'greener' if tint > 0 else 'more magenta'} by {abs(tint):.2f}; gains "
                         f"R x{wb[0].exp():.2f} G x{wb[1].exp():.2f} B x{wb[2].exp():.2f}")
        b, w = p.black[0], p.white[0]
        if float(b.max()) > 0.002 or float(w.min()) < 0.998:
            lines.append("levels (black/white point R,G,B): " + ", ".join(
                f"{float(b[c]):.3f}/{float(w[c]):.3f}" for c in range(3))
                + f" (up to a {float(1 / (w - b).clamp_min(1e-3).min()):.2f}x stretch of the tonal range; a "
                  "channel stretched more than the others removes a colour cast)")
        checks = [
            ("exposure", lambda v: f"exposure {v:+.2f} stops ({'brighter' if v > 0 else 'darker'})"),
            ("gamma", lambda v: f"midtones {'lifted' if v > 0 else 'lowered'} (gamma {2 ** -v:.2f}: mid-grey "
                                f"0.50 -> {0.5 ** (2 ** -v):.2f})"),
            ("contrast", lambda v: f"contrast x{math.exp(v):.2f} ({'punchier' if v > 0 else 'softer'})"),
            ("saturation", lambda v: f"saturation x{math.exp(v):.2f} ({'richer' if v > 0 else 'more muted'} "
                                     "colour, same hues)"),
            ("detail", lambda v: f"sharpening {v:+.2f} ({'crisper' if v > 0 else 'softened'} fine detail)"),
        ]
        for name, text in checks:
            v = float(getattr(p, name)[0])
            if abs(v) > 0.005:
                lines.append(text(v))
            if name == "gamma" and v > 0.005 and float(p.shadow_gain[0]) < GRADE_PARAMS["shadow_gain"].identity:
                lines.append(f"shadows brightened at most x{2 ** float(p.shadow_gain[0]):.1f} (the lift stops short "
                             "of amplifying their noise into speckle)")
        loc = p.local[0]
        if float(loc.abs().max()) > 0.01:
            lines.append(f"local dodge/burn: brightness varies by {float(loc.min()):+.2f} to {float(loc.max()):+.2f} "
                         "stops across regions (luminance only)")
        return "; ".join(lines) if lines else "no change (the photo already looks right to the auto-grade)"


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
    """Trilinear slice: grid ``[B,C,D,Gh,Gw]``, guide ``[B,1,h,W]`` in 0..1 (rows ``top..top+h`` of an image
    ``full_h`` tall) -> ``[B,C,h,W]``."""
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


def apply_local(x: torch.Tensor, grid: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Local luminance gain: ``x * 2**slice(grid)``, the same factor on R, G and B (chromaticity unchanged)."""
    b, _, h, w = x.shape
    rows = h
    if not (torch.is_grad_enabled() and (x.requires_grad or grid.requires_grad)) and h * w > SLICE_CHUNK_PIXELS:
        rows = max(SLICE_CHUNK_PIXELS // max(w, 1), 1)
    parts = []
    for top in range(0, h, rows):
        xs = x[:, :, top:top + rows]
        parts.append(xs * torch.exp2(_slice_grid(grid, guide[:, :, top:top + rows], top, h)))
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


def white_balance_gains(wb: torch.Tensor) -> torch.Tensor:
    """``[B,3]`` log gains -> gains normalised so a grey pixel keeps its luminance."""
    wb = bounded("white_balance", wb)
    wb = wb - (wb * wb.new_tensor(LUMA)).sum(1, keepdim=True)
    return wb.exp()


def _tone_curve(y: torch.Tensor, p: EnhancementParams) -> torch.Tensor:
    """The per-channel part of the grade (white balance, levels, exposure, midtones, contrast): each output
    channel is a function of the same input channel alone, so it can be tabulated (:func:`tone_luts`)."""
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    y = y * white_balance_gains(p.white_balance).view(-1, 3, 1, 1)
    black = p.black.view(-1, 3, 1, 1)
    white = torch.maximum(p.white.view(-1, 3, 1, 1), black + _MIN_LEVEL_SPAN)
    y = (y - black) / (white - black)
    y = (y * v(torch.exp2(p.exposure))).clamp(0.0, 1.0)
    # gamma: the same power on every channel (black and white stay put); the clamp keeps the gradient finite at 0.
    # Its gain y ** (e - 1) is capped at 2 ** shadow_gain (noise-aware shadow limit: a no-op for darkening curves)
    lifted = torch.where(y > 1e-6, y.clamp_min(1e-6).pow(v(torch.exp2(-p.gamma))), torch.zeros_like(y))
    y = torch.minimum(lifted, y * v(torch.exp2(p.shadow_gain)))
    return (y - 0.5) * v(p.contrast.exp()) + 0.5


def tone_luts(p: EnhancementParams, size: int = LUT_SIZE) -> torch.Tensor:
    """``[B,3,size]``: the per-channel part of the grade tabulated at ``size`` evenly spaced input levels."""
    levels = torch.linspace(0.0, 1.0, size, device=p.exposure.device, dtype=p.exposure.dtype)
    return _tone_curve(levels.view(1, 1, 1, -1).expand(p.batch_size, 3, 1, size), p)[:, :, 0]


def _global_identity(p: EnhancementParams) -> bool:
    return all(bool((getattr(p, n) == GRADE_PARAMS[n].identity).all())
               for n in ("white_balance", "black", "white", "exposure", "gamma", "contrast"))


def chroma_sigma(shadow_gain: float) -> float:
    """Blur (pixels) of the shadow chroma: CHROMA_SIGMA on clean files (the shadow limit at its top), wider as the
    limit falls for noisier shadows (noise needs a wider average), at most 3 pixels."""
    top = math.log2(SHADOW_GAIN_RANGE[1])
    return float(min(max(CHROMA_SIGMA * 2.0 ** (0.5 * (top - shadow_gain)), CHROMA_SIGMA), 3.0))


def shadow_chroma(x: torch.Tensor, y: torch.Tensor, sigma: float = CHROMA_SIGMA) -> torch.Tensor:
    """Where the tone curve brightened a pixel strongly (luminance gain from CHROMA_GAIN[0], full at [1]), blend
    its chroma (colour minus luminance) toward the mean chroma of its neighbourhood (a box of radius ``sigma``
    pixels): amplified per-channel noise in lifted shadows averages out instead of showing as colour speckle.
    Luminance is kept exactly (the green chroma follows from red and blue: a zero-luminance chroma has two degrees
    of freedom), and a local mean only holds colours the neighbourhood already has. Identity where gain < [0]."""
    lum_y = luminance(y)
    gain = lum_y / luminance(x).clamp_min(1.0 / 255.0)
    w = ((gain - CHROMA_GAIN[0]) / (CHROMA_GAIN[1] - CHROMA_GAIN[0])).clamp(0.0, 1.0)
    if not (w.requires_grad or bool((w > 0).any())):
        return y
    c = y[:, 0::2] - lum_y  # red and blue chroma
    r = max(int(round(sigma)), 1)
    mean = F.avg_pool2d(c, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    c = c + w * (mean - c)
    # chroma is amplified at most CHROMA_MAX_GAIN times, however far the tone curve lifts the luminance: the
    # deepest shadows of a file hold little real colour and much noise and JPEG block error
    c = c * (CHROMA_MAX_GAIN / gain.clamp_min(1e-6)).clamp(max=1.0)
    cr, cb = c[:, :1], c[:, 1:]
    cg = (cr * LUMA[0] + cb * LUMA[2]) / -LUMA[1]
    return torch.cat([lum_y + cr, lum_y + cg, lum_y + cb], 1)


def apply_enhancement_bchw(x: torch.Tensor, params: EnhancementParams, guide: torch.Tensor | None = None
                           ) -> torch.Tensor:
    """The operator on ``[B,3,H,W]`` in 0..1. ``guide`` (luminance of the original, ``[B,1,H,W]``) defaults to
    the luminance of ``x``.

    Without autograd (applying a fitted grade) the per-channel curve is a table lookup of LUT_SIZE levels per
    channel (nearest level: within 8e-6 of the input, far below 8-bit steps), one pass instead of eight; with
    autograd (fitting) it is evaluated exactly, so gradients flow through every parameter."""
    p = _broadcast(params.to(x.device, x.dtype), x.shape[0]).clamped()
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    grad = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in p.tensors()))
    if grad:
        y = _tone_curve(x, p)
    elif _global_identity(p):
        y = x
    else:
        b = x.shape[0]
        lut = tone_luts(p).reshape(-1)
        idx = (x.clamp(0.0, 1.0) * (LUT_SIZE - 1) + 0.5).long()
        idx += (torch.arange(b * 3, device=x.device, dtype=torch.long) * LUT_SIZE).view(b, 3, 1, 1)
        y = lut.take(idx)
    if x.shape[-1] > 1 and x.shape[-2] > 1 and y is not x:
        sig = [chroma_sigma(float(v)) for v in p.shadow_gain.detach()]
        if len(set(sig)) == 1:
            y = shadow_chroma(x, y, sig[0])
        else:
            y = torch.cat([shadow_chroma(x[i:i + 1], y[i:i + 1], s) for i, s in enumerate(sig)])
    if grad or bool((p.saturation != 0).any()):
        lum = luminance(y)
        y = lum + (y - lum) * v(p.saturation.exp())
    if bool((p.local != 0).any()) or p.local.requires_grad:
        g = luminance(x) if guide is None else guide
        y = apply_local(y, p.local, g.clamp(0.0, 1.0))
    if x.shape[-1] > 1 and x.shape[-2] > 1 and (bool((p.detail != 0).any()) or p.detail.requires_grad):
        # sharpen luminance as a per-pixel gain on R, G and B, so detail never shifts chromaticity either
        lum = luminance(y)
        sharp = lum + v(p.detail) * (lum - relative_blur(lum))
        y = y * (sharp.clamp_min(0.0) / lum.clamp_min(1e-3)).clamp(0.0, 4.0)
    return y.clamp(0.0, 1.0)


def blend_mask(enhanced: torch.Tensor, original: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep ``original`` where ``mask`` is 0. Tensors ``[B,3,H,W]``; mask ``[B,1,H,W]``."""
    if mask is None:
        return enhanced
    return original + (enhanced - original) * mask


def prepare_mask(mask: torch.Tensor | None, batch: int, height: int, width: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """A ComfyUI MASK (``[H,W]``, ``[B,H,W]`` or ``[B,1,H,W]``, 1 = change allowed) -> ``[B,1,H,W]`` in 0..1.

    The mask must have the image's height and width: a mask made for another image would be stretched onto
    this one and change the wrong region, so it is refused (as the Restoration Sampler does)."""
    if mask is None:
        return None
    if not torch.is_tensor(mask):
        raise LitError("the mask must be a MASK tensor.", input_name="mask", fix="connect a MASK output.")
    m = mask.to(device=device, dtype=dtype)
    if m.dim() == 2:
        m = m.unsqueeze(0)
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise LitError(f"expected a MASK [B,H,W] or [H,W], got shape {tuple(mask.shape)}.", input_name="mask",
                       fix="connect a MASK output.")
    if tuple(m.shape[-2:]) != (height, width):
        raise LitError(f"the mask is {m.shape[-2]}x{m.shape[-1]} but the image is {height}x{width}; they must "
                       "have the same height and width.", input_name="mask",
                       fix="make the mask from this image (or resize it to the image's size first).")
    if m.shape[0] not in (1, batch):
        raise LitError(f"the mask batch ({m.shape[0]}) does not match the image batch ({batch}).",
                       input_name="mask", fix="use one mask, or one per image.")
    if not torch.isfinite(m).all():
        raise LitError("the mask contains NaN or infinite values.", input_name="mask", fix="connect a valid MASK.")
    return m.unsqueeze(1).clamp(0.0, 1.0).expand(batch, 1, height, width)


def to_bchw(images: torch.Tensor, input_name: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE ``[B,H,W,C]`` (C in 1,3,4) -> ``[B,3,H,W]`` float32 0..1 (alpha dropped)."""
    if not torch.is_tensor(images):
        raise LitError("expected an IMAGE tensor.", input_name=input_name, fix="connect an IMAGE output.")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (1, 3, 4):
        raise LitError(f"expected an IMAGE [B,H,W,C] with 1, 3 or 4 channels, got shape {tuple(images.shape)}.",
                       input_name=input_name, fix="connect an IMAGE output.")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise LitError("the image is empty.", input_name=input_name, fix="connect a non-empty IMAGE.")
    if not torch.isfinite(images).all():
        raise LitError("the image contains NaN or infinite pixel values.", input_name=input_name,
                       fix="check the node that produced it.")
    x = images[..., :3] if images.shape[-1] >= 3 else images.expand(*images.shape[:-1], 3)
    return x.float().movedim(-1, 1).clamp(0.0, 1.0)


def apply_enhancement(images: torch.Tensor, params: EnhancementParams, mask: torch.Tensor | None = None,
                      device: torch.device | str | None = None, strength: float = 1.0) -> torch.Tensor:
    """Apply a fitted grade to ComfyUI images ``[B,H,W,C]`` (any size; params of batch 1 go to every image).

    ``strength`` scales every adjustment back toward none (see :meth:`EnhancementParams.scaled`). Images are
    processed one at a time on ``device`` (default: the images' own) to bound memory, and returned as
    ``[B,H,W,3]`` float32 in 0..1 on the images' device."""
    if torch.is_tensor(images) and images.dim() == 3:
        images = images.unsqueeze(0)
    x_all = to_bchw(images)  # validates shape and values before any work
    b, h, w = images.shape[:3]
    device = torch.device(device) if device is not None else images.device
    p = _broadcast(params, b)
    if strength != 1.0:
        p = p.scaled(strength)
    m = prepare_mask(mask, b, h, w, torch.device("cpu"))
    out = torch.empty(b, h, w, 3, dtype=torch.float32, device=images.device)
    for i in range(b):
        xi = x_all[i:i + 1].to(device)
        yi = apply_enhancement_bchw(xi, p.select(i))
        if m is not None:
            yi = blend_mask(yi, xi, m[i:i + 1].to(device))
        out[i] = yi[0].movedim(0, -1).to(images.device)
    return out
