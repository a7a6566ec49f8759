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


def whitening(image: torch.Tensor, k: int, shrink: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening of (raw) image embeddings: ``basis [D, k]`` (the top-k principal directions of the centred
    embeddings, orthonormal) and ``scale [k]`` (1/std along each), so ``(x - mean) @ basis * scale`` has unit
    variance in k dims. ``shrink`` > 0 whitens partially: ``1/sqrt(var + shrink * mean var)``, so the weakest
    directions are boosted less. A fixed statistic of the locked tower's outputs: nothing in the tower is trained."""
    y = image.double()
    yc = y - y.mean(0)
    n, d = yc.shape
    k = max(1, min(int(k), d, n - 1))
    if n < d:  # fewer images than dims: the n x n Gram matrix has the same non-zero spectrum, and is cheaper
        evals, u = torch.linalg.eigh(yc @ yc.t())
        evals, u = evals.flip(0)[:k].clamp_min(1e-12), u.flip(1)[:, :k]
        evecs = yc.t() @ u / evals.sqrt()
        evals = evals / n
    else:
        evals, evecs = torch.linalg.eigh(yc.t() @ yc / n)
        evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    evals = evals.clamp_min(1e-12 * float(evals[0]))
    return evecs.float().contiguous(), (evals + shrink * evals.mean()).rsqrt().float()


def whitening_dims(n_images: int, embed_dim: int) -> list[int]:
    """The whitening sizes the trainer chooses among on its validation split: 16, 32 and 64 dims and a sixth of
    the training images (the share that grows with the data), never as many as there are images or more than the
    embedding has. Measured on dev splits of the benchmark's training photos (bench/README.md, 2026-12-02): 24-64
    dims were best from 54 to 480 images; the earlier sizes (n/10, n/6, n/4) gave 5-12 dims on small sets, where
    whitening then lost to none (54 images: 0.068 vs 0.080 mean R@5 with these sizes, 96: 0.096 vs 0.112)."""
    dims = sorted({min(embed_dim, n_images - 1, d) for d in (16, 32, 64, round(n_images / 6))})
    return [d for d in dims if d >= 4] or [max(1, n_images - 1)]
