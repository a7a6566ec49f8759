"""Closed-form maps between frozen text and image features: the start of head training and the baselines it is
measured against (bench/lit_quality.py).

- :func:`ridge_map`: centred ridge regression text -> image, the head's initial weights (``init='ridge'``);
- :func:`cca_maps`: regularised CCA, projecting both sides to ``k`` shared dims (a baseline only: it moves the
  image side too, which a locked image tower does not allow).
"""

from __future__ import annotations

import torch


def ridge_map(text: torch.Tensor, image: torch.Tensor, alpha: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``W [H, D]`` and ``b [D]`` minimising ``|text @ W + b - image|^2 + lam |W|^2`` over paired rows.

    ``lam = alpha * mean eigenvalue of the centred text covariance * n``, so ``alpha`` means the same whatever the
    feature scale or the number of pairs.
    """
    x, y = text.double(), image.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.t() @ xc
    scale = float(gram.diagonal().mean())
    # Identical captions give a zero covariance (singular even with alpha > 0): the floor keeps the solve defined,
    # and its answer there is right, W = 0 and b = the mean image.
    lam = max(alpha * scale, 1e-9 * scale, 1e-12)
    w = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), xc.t() @ yc)
    return w.float(), (my - mx @ w).float()


def cca_maps(text: torch.Tensor, image: torch.Tensor, k: int = 16,
             reg: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Regularised CCA: ``(Wt [H,k], Wi [D,k], text_mean, image_mean)``; compare ``(t - mt) @ Wt`` with
    ``(i - mi) @ Wi`` by cosine. ``reg`` is ridge on each covariance, relative to its mean eigenvalue."""
    x, y = text.double(), image.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = x.shape[0]

    def inv_sqrt(c: torch.Tensor) -> torch.Tensor:
        c = c + reg * float(c.diagonal().mean()) * torch.eye(c.shape[0], dtype=c.dtype)
        e, v = torch.linalg.eigh(c)
        return v @ torch.diag(e.clamp_min(1e-12).rsqrt()) @ v.t()

    a, b = inv_sqrt(xc.t() @ xc / n), inv_sqrt(yc.t() @ yc / n)
    u, _, vh = torch.linalg.svd(a @ (xc.t() @ yc / n) @ b)
    return (a @ u[:, :k]).float(), (b @ vh.t()[:, :k]).float(), mx.float(), my.float()
