"""Train only the top transformer layers of the text tower, with the frozen lower layers run once per caption.

LoRA (and ``full``) restricted to the top ``n`` layers leaves everything below them frozen, so the hidden states
entering the first trained layer depend on the caption alone: :class:`PrefixCache` computes them once per distinct
caption (no grad) and every training step runs only the top layers on those cached states. The result is exact:
the same pooled features as the whole tower's forward (``tests/test_lora.py`` checks it), at a fraction of the
cost of a step (bench/README.md, "Locked tuning quality").

Generic over transformers text encoders whose layers sit in one ``nn.ModuleList`` (BERT ``encoder.layer``, CLIP /
SigLIP ``encoder.layers``): the lower layers are swapped for pass-throughs for the step, and the first trained
layer's input is replaced by the cached states (padding positions are masked by the attention mask, so what they
hold does not matter).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(name, layers)`` of the model's stack of transformer layers (the longest ModuleList named ``layer`` or
    ``layers``), or None when there is none."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers") and len(mod):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    return best


def top_layer_prefixes(model: nn.Module, n: int) -> tuple[str, ...] | None:
    """Module-name prefixes of the top ``n`` transformer layers (None: all of the model, n <= 0 or no stack)."""
    found = transformer_layers(model)
    if n <= 0 or found is None or n >= len(found[1]):
        return None
    name, layers = found
    return tuple(f"{name}.{i}." for i in range(len(layers) - n, len(layers)))


class _Stop(Exception):
    """Raised by the capture hook: the layers above the cut are not needed when filling the cache."""


class _PassThrough(nn.Module):
    """Stands in for a frozen lower layer during a cached step: returns its hidden states unchanged."""

    def __init__(self, as_tuple: bool) -> None:
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


class PrefixCache:
    """Hidden states entering layer ``len(layers) - n`` of ``tower``, once per distinct text (CPU, unpadded)."""

    def __init__(self, tower, n: int, batch_size: int = 64) -> None:
        found = transformer_layers(tower.model)
        if found is None or not 0 < n < len(found[1]):
            raise ValueError(f"no cut below the top {n} layers in this text model")
        self.tower, self.layers, self.cut = tower, found[1], len(found[1]) - n
        self.batch_size = batch_size
        self.states: dict[str, torch.Tensor] = {}
        self.as_tuple = False

    def fill(self, texts: list[str]) -> None:
        """Compute the states of the texts not cached yet (the lower layers only, no grad)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.states]
        captured: list[torch.Tensor] = []

        def grab(_mod, args, kwargs):
            captured.append((args[0] if args else kwargs["hidden_states"]).detach())
            raise _Stop

        def shape(_mod, _args, out):
            self.as_tuple = isinstance(out, tuple)

        first = self.layers[0].register_forward_hook(shape)
        hook = self.layers[self.cut].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with torch.no_grad():
                for i in range(0, len(todo), self.batch_size):
                    chunk = todo[i:i + self.batch_size]
                    tok = self.tower.tokenize(chunk)
                    captured.clear()
                    try:
                        self.tower(**tok)
                    except _Stop:
                        pass
                    # the real tokens only (whichever side the tokenizer pads)
                    for t, h, m in zip(chunk, captured[0], tok["attention_mask"].bool(), strict=True):
                        self.states[t] = h[m].float().cpu().clone()
        finally:
            hook.remove()
            first.remove()

    @contextmanager
    def _swapped(self, hidden: torch.Tensor):
        """Within: the lower layers pass through and the first trained layer sees ``hidden``."""
        lower = [self.layers[i] for i in range(self.cut)]

        def inject(_mod, args, kwargs):
            if args:
                return (hidden.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden.to(kwargs["hidden_states"].dtype)}

        for i in range(self.cut):
            self.layers[i] = _PassThrough(self.as_tuple)
        hook = self.layers[self.cut].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            hook.remove()
            for i, layer in enumerate(lower):
                self.layers[i] = layer

    def features(self, texts: list[str]) -> torch.Tensor:
        """Pooled features ``[N, hidden]`` of ``texts`` through the top layers only (differentiable there)."""
        self.fill(texts)
        tok = self.tower.tokenize(texts)
        mask = tok["attention_mask"].bool().cpu()
        hidden = torch.zeros(*mask.shape, self.states[texts[0]].shape[-1])
        for j, t in enumerate(texts):
            hidden[j, mask[j]] = self.states[t]
        with self._swapped(hidden.to(self.tower.device)):
            return self.tower(**tok)
