"""Text-guided, faithful photo enhancement steered by a LiT (or any dual-encoder) model.

We never optimise pixels. We fit the few parameters of :mod:`.enhancement_ops` on a low-resolution proxy so
that the model prefers the positive prompt over the negative one (an antonym softmax, as in CLIP-IQA), while a
fidelity term keeps the image's identity (its embedding, its chromaticity and its luminance structure) and
regularisers keep curves smooth and the bilateral grid small and smooth. Because the operator can only
re-grade colours and tones (and sharpen), it cannot invent content whatever the guidance asks for. The fitted
parameters are then applied once at full resolution.

Several restarts ("samples") start from the identity grade plus small seeded noise and run as one batch; each
image keeps the restart with the lowest final objective (score minus fidelity and regularisation costs), so a
restart that bought its score by drifting away from the input does not win.

The model is duck-typed: ``encode_image(images [B,H,W,C] 0..1) -> [B,D]`` L2-normalised and differentiable,
``encode_text(list[str]) -> [N,D]``, ``logit_scale`` and ``device``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..common.errors import LitError
from .ops import (
    EnhancementParams,
    apply_enhancement,
    apply_enhancement_bchw,
    blend_mask,
    curve_knots,
    luminance,
    prepare_mask,
    to_bchw,
)

DEFAULT_POSITIVE = "a bright, well-exposed, crisp, vivid photo"
DEFAULT_NEGATIVE = "a dark, dull, hazy, washed-out photo"
# Noise of the restarts, in each parameter's own units (stops, log-gains, raw curve increments, grid cells).
_NOISE = {"exposure": 0.15, "contrast": 0.08, "white_balance": 0.04, "saturation": 0.08, "curves": 0.1,
          "grid": 0.01, "detail": 0.1}
# Learning rates in the same units: the global terms move quickly, the many grid cells slowly.
_LR = {"exposure": 0.05, "contrast": 0.03, "white_balance": 0.02, "saturation": 0.03, "curves": 0.05,
       "grid": 0.01, "detail": 0.05}


@dataclass
class EnhancementResult:
    image: torch.Tensor           # [B,H,W,3] 0..1, on the input's device
    params: EnhancementParams     # batch B (or 1 when shared), on the CPU
    score_before: torch.Tensor    # [B] probability of the positive prompt vs the negative one
    score_after: torch.Tensor     # [B]
    sample_objective: torch.Tensor  # [samples, B] final objective of each restart (lower is better)
    chosen: torch.Tensor          # [B] index of the restart kept

    def summary(self) -> str:
        lines = []
        for i in range(self.score_before.shape[0]):
            pi = min(i, self.params.batch_size - 1)
            lines.append(f"image {i}: score {self.score_before[i].item():.3f} -> {self.score_after[i].item():.3f} "
                         f"(restart {int(self.chosen[i])}); {self.params.describe(pi)}")
        return "\n".join(lines)


def split_prompts(text: str | list[str], input_name: str) -> list[str]:
    """One prompt per non-empty line (several lines are averaged, like CLIP's prompt ensembles)."""
    items = text if isinstance(text, list) else str(text).splitlines()
    items = [t.strip() for t in items if t and t.strip()]
    if not items:
        raise LitError("the prompt is empty.", input_name=input_name,
                       fix="describe the look you want (positive) and its opposite (negative).")
    return items


def text_directions(model, positive: str | list[str], negative: str | list[str]) -> torch.Tensor:
    """``[2,D]`` unit vectors: the mean embedding of the positive prompts, then of the negative ones."""
    pos = split_prompts(positive, "positive")
    neg = split_prompts(negative, "negative")
    with torch.no_grad():
        emb = model.encode_text(pos + neg).float()
    emb = F.normalize(emb, dim=-1)
    out = torch.stack([emb[:len(pos)].mean(0), emb[len(pos):].mean(0)])
    out = F.normalize(out, dim=-1)
    if (out[0] - out[1]).norm() < 1e-4:
        raise LitError("the positive and negative prompts mean the same thing to this model.",
                       input_name="negative", fix="use an opposite of the positive prompt.")
    return out


def _logit_scale(model) -> torch.Tensor:
    scale = getattr(model, "logit_scale", 100.0)
    return torch.as_tensor(scale, dtype=torch.float32).detach().reshape(())


def antonym_scores(image_emb: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log P(positive) from the softmax over [positive, negative] (CLIP-IQA). ``[B,D]`` -> ``[B]``."""
    logits = scale.to(image_emb.device) * F.normalize(image_emb.float(), dim=-1) @ text.to(image_emb.device).T
    return torch.log_softmax(logits, dim=-1)[:, 0]


def proxy_size(h: int, w: int, max_side: int) -> tuple[int, int]:
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _downsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0.0, 1.0)


def _chroma(x: torch.Tensor) -> torch.Tensor:
    return x / (x.sum(1, keepdim=True) + 0.05)


def _grad_field(lum: torch.Tensor) -> torch.Tensor:
    gx = F.pad(lum[..., :, 1:] - lum[..., :, :-1], (0, 1, 0, 0))
    gy = F.pad(lum[..., 1:, :] - lum[..., :-1, :], (0, 0, 0, 1))
    return torch.cat([gx, gy], 1).flatten(1)


def structure_loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """1 - correlation of luminance gradient fields, per image: blind to global tone changes (which we want
    to allow) but not to edges appearing, vanishing or moving."""
    a, b = _grad_field(luminance(out)), _grad_field(luminance(ref))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    num = (a * b).sum(1)
    den = (a.square().sum(1) * b.square().sum(1) + 1e-12).sqrt()
    flat = b.square().sum(1) < 1e-8  # a flat reference has no structure to keep
    return torch.where(flat, torch.zeros_like(num), 1.0 - num / (den + 1e-6))


def regulariser(p: EnhancementParams) -> torch.Tensor:
    """Per-set penalty: smooth curves, a small and smooth grid, small global moves. ``[N]``."""
    knots = curve_knots(p.curves)
    k = knots.shape[-1] - 1
    ident = torch.linspace(0.0, 1.0, k + 1, device=knots.device, dtype=knots.dtype)
    curve_dev = (knots - ident).square().mean((1, 2))
    curve_smooth = (knots[..., 2:] - 2 * knots[..., 1:-1] + knots[..., :-2]).square().sum(-1).mean(1) * k
    g = p.grid
    tv = sum((g.diff(dim=d).square().mean((1, 2, 3, 4))) for d in (2, 3, 4))
    grid_mag = g.square().mean((1, 2, 3, 4))
    glob = (0.02 * p.exposure.square() + 0.05 * p.contrast.square() + 0.2 * p.white_balance.square().sum(1)
            + 0.05 * p.saturation.square() + 0.02 * p.detail.square())
    return curve_dev + curve_smooth + 10.0 * tv + 2.0 * grid_mag + glob


def _noisy_identity(batch: int, generator: torch.Generator, curve_knots_n: int, grid_size: tuple[int, int, int],
                    noise: float) -> EnhancementParams:
    p = EnhancementParams.identity(batch, curve_knots=curve_knots_n, grid_size=grid_size)
    if noise > 0:
        # One draw per restart, shared by the batch: an image's result must not depend on its batch position.
        for name, std in _NOISE.items():
            t = getattr(p, name)
            t.add_(torch.randn(t.shape[1:], generator=generator) * std * noise)
    return p


def enhance(images: torch.Tensor, model, positive: str | list[str] = DEFAULT_POSITIVE,
            negative: str | list[str] = DEFAULT_NEGATIVE, *, steps: int = 60, guidance: float = 1.0,
            fidelity: float = 1.0, seed: int = 0, samples: int = 2, mask: torch.Tensor | None = None,
            shared: bool = False, proxy_max_side: int = 256, restart_noise: float = 1.0,
            curve_knots_n: int = 8, grid_size: tuple[int, int, int] = (8, 8, 8),
            callback: Callable[[int], None] | None = None) -> EnhancementResult:
    """Enhance ``images`` ``[B,H,W,C]`` toward ``positive`` and away from ``negative``.

    ``guidance`` scales the push of the prompts, ``fidelity`` the pull back toward the input (embedding,
    chromaticity, structure). ``samples`` restarts run with seed-derived noise; each image keeps its best.
    ``shared`` fits one grade for the whole batch (consistent frames). ``mask`` (1 = may change) confines the
    change. ``callback(step)`` is called after every step (it may raise to cancel). Deterministic per seed.
    """
    if steps < 0 or samples < 1:
        raise LitError("steps must be >= 0 and samples >= 1.", input_name="steps" if steps < 0 else "samples",
                       fix="use at least one sample.")
    if guidance < 0 or fidelity < 0:
        raise LitError("guidance and fidelity must be >= 0.", input_name="guidance" if guidance < 0 else "fidelity",
                       fix="use a non-negative value.")
    device = torch.device(getattr(model, "device", "cpu"))
    # Nodes run under inference mode; the fit needs autograd and ordinary (non-inference) tensors.
    with torch.inference_mode(False), torch.enable_grad():
        src = to_bchw(images.detach().clone())
        b, _, h, w = src.shape
        ph, pw = proxy_size(h, w, proxy_max_side)
        x = _downsample(src.to(device), (ph, pw))
        m = prepare_mask(None if mask is None else mask.detach().clone(), b, ph, pw, device)
        text = text_directions(model, positive, negative).to(device)
        scale = _logit_scale(model).to(device)

        def encode(img_bchw: torch.Tensor) -> torch.Tensor:
            return model.encode_image(img_bchw.movedim(1, -1))

        with torch.no_grad():
            ref_emb = F.normalize(encode(x).float(), dim=-1)
            ref_chroma = _chroma(x)

        n_sets = 1 if shared else b
        gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
        # Restart 0 of every seed starts from the identity so a tiny step budget never does worse than no-op.
        sets = [_noisy_identity(n_sets, gen, curve_knots_n, grid_size, 0.0 if k == 0 else restart_noise)
                for k in range(samples)]
        params = EnhancementParams.cat(sets).to(device).requires_grad_(True)
        groups = [{"params": [getattr(params, name)], "lr": lr} for name, lr in _LR.items()]
        opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - 0.8 * i / max(steps, 1))

        xs = x.repeat(samples, 1, 1, 1)
        ms = None if m is None else m.repeat(samples, 1, 1, 1)
        ref_emb_s = ref_emb.repeat(samples, 1)
        ref_chroma_s = ref_chroma.repeat(samples, 1, 1, 1)
        set_index = torch.arange(samples * b, device=device) // b * n_sets + (
            torch.arange(samples * b, device=device) % b if not shared else 0)

        def objective(p: EnhancementParams) -> tuple[torch.Tensor, torch.Tensor]:
            pp = p.select(set_index) if (shared or samples > 1) else p
            out = blend_mask(apply_enhancement_bchw(xs, pp), xs, ms)
            emb = encode(out).float()
            log_p = antonym_scores(emb, text, scale)
            emb_keep = 1.0 - (F.normalize(emb, dim=-1) * ref_emb_s).sum(-1)
            chroma = (_chroma(out) - ref_chroma_s).square().mean((1, 2, 3)) * 20.0
            struct = structure_loss(out, xs)
            per_image = -guidance * log_p + fidelity * (emb_keep + chroma + struct)  # [samples*b]
            per_set = torch.zeros(samples * n_sets, device=device).index_add(0, set_index, per_image)
            per_set = per_set + regulariser(p)
            return per_set, log_p

        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            per_set, _ = objective(params)
            # Sets are independent, so the sum gives each its own gradient (Adam is element-wise).
            per_set.sum().backward()
            for t in params.tensors():
                if t.grad is not None:
                    torch.nan_to_num_(t.grad, nan=0.0, posinf=0.0, neginf=0.0)
            opt.step()
            sched.step()
            if callback is not None:
                callback(step + 1)

        with torch.no_grad():
            per_set, _ = objective(params)
            obj = per_set.view(samples, n_sets)
            best = obj.argmin(0)  # [n_sets]
            chosen_idx = best * n_sets + torch.arange(n_sets, device=device)
            final = params.detach().select(chosen_idx).to("cpu")
            sample_obj = obj if not shared else obj.expand(samples, b)
            chosen = best if not shared else best.expand(b)

            before = antonym_scores(encode_full(model, src, device), text, scale).exp()
            out_img = apply_enhancement(src.movedim(1, -1), final, None if mask is None else mask.detach().clone(),
                                        device=device)
            after = antonym_scores(encode_full(model, out_img.movedim(-1, 1), device), text, scale).exp()
    return EnhancementResult(image=out_img.to(images.device), params=final, score_before=before.cpu(),
                             score_after=after.cpu(), sample_objective=sample_obj.detach().cpu(),
                             chosen=chosen.detach().cpu())


def encode_full(model, x_bchw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Embed full-resolution images one at a time (the model resizes them itself)."""
    return torch.cat([model.encode_image(x_bchw[i:i + 1].to(device).movedim(1, -1)).float()
                      for i in range(x_bchw.shape[0])])
