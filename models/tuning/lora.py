"""LoRA (Hu et al. 2021) for the text tower's linear layers: a low-rank update next to a frozen weight."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from ..common.errors import LitError

# Module-name endings of the attention and MLP linears in BERT, CLIP-text and SigLIP-text (transformers).
ATTENTION_SUFFIXES = ("query", "key", "value", "attention.output.dense", "q_proj", "k_proj", "v_proj", "out_proj")
MLP_SUFFIXES = ("intermediate.dense", "output.dense", "fc1", "fc2")
TARGET_GROUPS = {"attention": ATTENTION_SUFFIXES, "mlp": MLP_SUFFIXES}


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))`` with ``base`` frozen; ``B`` starts at zero (identity)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise LitError(f"LoRA rank must be at least 1, got {rank}.", input_name="lora_rank",
                           fix="use a rank such as 4, 8 or 16.")
        self.base = base
        base.requires_grad_(False)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))
        with torch.no_grad():  # nn.Linear's default init, drawn from `generator` when given (reproducible runs)
            a = torch.empty(rank, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.copy_(a)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        # Some model code reads `.weight` (dtype/device checks); give it the frozen base weight.
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t()
        return self.base(x) + (self.scaling * update).to(x.dtype)


def _suffixes(targets: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = [targets]
    out: list[str] = []
    for t in targets:
        out.extend(TARGET_GROUPS.get(t, (t,)))
    return tuple(out)


def find_lora_targets(model: nn.Module, targets: Iterable[str] | str = ("attention", "mlp"),
                      within: tuple[str, ...] | None = None) -> list[str]:
    """Names of the ``nn.Linear`` modules LoRA would wrap (``targets``: group names or module-name endings;
    ``within``: only modules whose names start with one of these prefixes, e.g. the top layers)."""
    suffixes = _suffixes(targets)
    names = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or not any(name == s or name.endswith("." + s) for s in suffixes):
            continue
        if within is not None and not name.startswith(within):
            continue
        # BERT's attention output is also named "...output.dense": only take it when attention is targeted.
        if name.endswith("attention.output.dense") and "attention.output.dense" not in suffixes:
            continue
        names.append(name)
    return names


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, *,
               targets: Iterable[str] | str = ("attention", "mlp"), dropout: float = 0.0,
               seed: int | None = None, within: tuple[str, ...] | None = None) -> list[nn.Parameter]:
    """Wrap the matching linears of ``model`` in place; freeze everything else; return the LoRA parameters.

    ``targets`` are groups (``"attention"``: q/k/v/out projections, ``"mlp"``: the two feed-forward linears)
    or explicit module-name endings such as ``"q_proj"``; ``within`` limits them to module-name prefixes.
    """
    names = find_lora_targets(model, targets, within)
    if not names:
        already = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
        why = " (it already has LoRA layers)" if already else ""
        raise LitError(f"no attention/MLP linear layers matching {list(_suffixes(targets))} in this text "
                       f"model{why}.", input_name="mode",
                       fix="use adapter mode 'head' or 'full' for this text encoder.")
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    params: list[nn.Parameter] = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapped = LoRALinear(getattr(parent, child), rank, alpha, dropout, generator=gen)
        setattr(parent, child, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA tensors of ``model``, keyed by their parameter names."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_A", ".lora_B"))}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters already inside ``model``."""
    return [p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]
