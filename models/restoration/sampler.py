"""Plug-and-play restoration: half-quadratic splitting with an annealed noise schedule (DPIR / DiffPIR family).

Each step alternates the closed-form data-consistency step of the degradation with a denoiser prior at a noise
level that decreases geometrically: ``x <- prox_data(z, sigma_k)``, ``z <- D(x [+ noise], sigma_k)``, optionally
followed by a LiT guidance step that moves ``z`` toward a positive prompt and away from a negative one through
the locked image tower. Deterministic per seed; ``callback(step)`` lets the host show progress and cancel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..common.errors import LitError
from .degradations import JPEG, Deblur, Degradation, Denoise, Inpaint, Upscale
from .denoisers import Denoiser


@dataclass(frozen=True)
class Schedule:
    """Per-task defaults: start/end noise levels (0..1 units; ``None`` end = the data noise), steps, weight."""

    sigma_max: float
    sigma_min: float | None
    steps: int
    lam: float
    final_prox: bool  # end on the data step (noise-free data) rather than on the prior
    prox_first: bool = False  # start with a data step on the initial estimate (DPIR); else denoise it first


# DPIR's settings where it has them (49/255 start, lambda 0.23), tuned on skimage photos for the rest.
DEFAULTS: dict[type, Schedule] = {
    # one step: with a Gaussian denoiser the data step only re-adds noise (measured, skimage photos, sigma 25)
    Denoise: Schedule(sigma_max=49 / 255, sigma_min=None, steps=1, lam=1.0, final_prox=False),
    Deblur: Schedule(sigma_max=49 / 255, sigma_min=None, steps=8, lam=0.23, final_prox=False),
    Inpaint: Schedule(sigma_max=49 / 255, sigma_min=3 / 255, steps=12, lam=1.0, final_prox=True),
    # a classical prior cannot restore what a high first sigma wipes out: start low, few steps
    Upscale: Schedule(sigma_max=20 / 255, sigma_min=3 / 255, steps=3, lam=1.0, final_prox=False),
    JPEG: Schedule(sigma_max=25 / 255, sigma_min=3 / 255, steps=3, lam=1.0, final_prox=True),
}


# A trained denoiser carries DPIR's full schedule: start at 49/255 and anneal log-linearly to the data noise.
NETWORK_DEFAULTS: dict[type, Schedule] = {
    Denoise: Schedule(sigma_max=49 / 255, sigma_min=None, steps=1, lam=1.0, final_prox=False),
    Deblur: Schedule(sigma_max=49 / 255, sigma_min=None, steps=8, lam=0.23, final_prox=False, prox_first=True),
    Inpaint: Schedule(sigma_max=49 / 255, sigma_min=2 / 255, steps=16, lam=1.0, final_prox=True, prox_first=True),
    # FFDNet does not remove aliasing at low sigma: stopping at 25/255 on a data step is +1.7 dB over 1/255 (Set5)
    Upscale: Schedule(sigma_max=49 / 255, sigma_min=25 / 255, steps=4, lam=0.23, final_prox=True, prox_first=True),
    JPEG: Schedule(sigma_max=25 / 255, sigma_min=2 / 255, steps=8, lam=1.0, final_prox=True, prox_first=True),
}


def schedule_for(op: Degradation, trained: bool = False) -> Schedule:
    for cls, sched in (NETWORK_DEFAULTS if trained else DEFAULTS).items():
        if isinstance(op, cls):
            return sched
    return Schedule(49 / 255, None, 8, 0.23, False)


def sigma_schedule(sigma_max: float, sigma_min: float, steps: int, strength: float = 1.0) -> list[float]:
    """Geometric noise levels from the (strength-scaled) start down to ``sigma_min``."""
    start = sigma_min + strength * (sigma_max - sigma_min)
    if steps == 1:
        return [sigma_min]
    return [math.exp(math.log(start) + (math.log(sigma_min) - math.log(start)) * k / (steps - 1))
            for k in range(steps)]


def _lit_guidance(z: Tensor, lit_model: Any, pos: Tensor | None, neg: Tensor | None) -> Tensor:
    """Gradient of ``cos(E(z), pos) - cos(E(z), neg)`` w.r.t. the image (E = the locked image tower)."""
    with torch.inference_mode(False), torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        emb = lit_model.encode_image(zz.permute(0, 2, 3, 1))
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        score = torch.zeros((), device=emb.device)
        # prompts encoded under the host's inference mode are inference tensors: clones are normal ones
        if pos is not None:
            score = score + (emb @ pos.clone().to(emb).T).mean(dim=1).sum()
        if neg is not None:
            score = score - (emb @ neg.clone().to(emb).T).mean(dim=1).sum()
        (grad,) = torch.autograd.grad(score, zz)
    return grad.detach().to(z.dtype)


def _text(lit_model: Any, prompts: Sequence[str] | str | None) -> Tensor | None:
    if not prompts:
        return None
    items = [prompts] if isinstance(prompts, str) else list(prompts)
    items = [p.strip() for p in items if p and p.strip()]
    if not items:
        return None
    t = lit_model.encode_text(items).float()
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def restore(op: Degradation, denoiser: Denoiser, *, steps: int | None = None, seed: int = 0,
            strength: float = 1.0, stochastic: float = 0.0, sigma_max: float | None = None,
            sigma_min: float | None = None, lam: float | None = None,
            lit_model: Any = None, positive: Sequence[str] | str | None = None,
            negative: Sequence[str] | str | None = None, guidance: float = 0.0,
            callback: Callable[[int], None] | None = None) -> Tensor:
    """Restore ``op.y`` under the prior ``denoiser``; returns ``[B,C,H,W]`` in 0..1 at ``op.out_shape``.

    ``strength`` (0..1] scales how high the schedule starts (how much the prior may change the image);
    ``stochastic`` (0..1) re-noises the denoiser input with fresh seeded noise each step (DiffPIR's zeta);
    ``guidance`` > 0 needs ``lit_model`` (``encode_image``/``encode_text``) and a positive or negative prompt.
    """
    sched = schedule_for(op, getattr(denoiser, "trained", False))
    steps = sched.steps if steps is None else int(steps)
    if steps < 1:
        raise LitError("steps must be >= 1.", input_name="steps")
    if not 0 < strength <= 1:
        raise LitError("strength must be in (0, 1].", input_name="strength")
    if not 0 <= stochastic <= 1:
        raise LitError("stochastic must be in [0, 1].", input_name="stochastic")
    lam = sched.lam if lam is None else float(lam)
    b = op.y.shape[0]
    dev = op.y.device
    if sigma_min is not None or sched.sigma_min is not None:
        lo = torch.full((b,), float(sigma_min if sigma_min is not None else sched.sigma_min), device=dev)
    else:
        lo = op.sigma_n.float().to(dev)  # each image ends at its own (given or estimated) noise level
    lo = lo.clamp_min(1e-4)
    hi = torch.maximum(torch.full_like(lo, float(sigma_max if sigma_max is not None else sched.sigma_max)), lo)
    # [steps, B]: one geometric schedule per image
    sigmas = torch.stack([torch.tensor(sigma_schedule(float(h), float(low), steps, strength))
                          for h, low in zip(hi.cpu(), lo.cpu(), strict=True)], 1).to(dev)

    pos = neg = None
    if guidance and guidance > 0:
        if lit_model is None:
            raise LitError("guidance needs a LIT_MODEL.", input_name="lit_model",
                           fix="connect a LiT model or set guidance to 0.")
        pos, neg = _text(lit_model, positive), _text(lit_model, negative)
        if pos is None and neg is None:
            raise LitError("guidance needs a positive or a negative prompt.", input_name="positive",
                           fix="write a prompt or set guidance to 0.")

    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    y = op.y
    z = op.init().to(y.device)
    for k, sk in enumerate(sigmas):
        x = op.prox(z, sk, lam) if k > 0 or sched.prox_first or isinstance(op, (Inpaint, JPEG)) else z
        if denoiser.wants_clean_input:
            z = denoiser(x.clamp(0, 1), sk, generator=gen)
        else:
            inp = x
            if stochastic > 0:
                noise = torch.randn(x.shape, generator=gen).to(x.device)
                inp = x + math.sqrt(stochastic) * sk.view(-1, 1, 1, 1) * noise
                sk_in = sk * math.sqrt(1 + stochastic)
            else:
                sk_in = sk
            z = denoiser(inp, sk_in)
        if pos is not None or neg is not None:
            g = _lit_guidance(z, lit_model, pos, neg)
            rms = g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
            z = z + guidance * sk.view(-1, 1, 1, 1) * g / rms
        if callback is not None:
            callback(k + 1)
    out = op.prox(z, sigmas[-1], lam) if sched.final_prox else z
    return out.clamp(0, 1)
