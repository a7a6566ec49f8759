"""Every locked-tuning setting in one place: name, default, range and help text.

``TrainConfig`` (the engine), the ``LiT Locked Tuning`` node and ``python -m comfyui_lit train`` all read this
table, so a default lives here and nowhere else. Per-mode defaults (``MODE_DEFAULTS``) were chosen by
measurement on held-out Flickr8k photos (``bench/lit_quality.py``; numbers in ``bench/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("head", "lora", "full")
LOSSES = ("softmax", "sigmoid")
INITS = ("ridge", "random")
KEEP = ("refit", "best", "last")
DEFAULT_MODE = "head"
DEFAULT_LOSS = "softmax"


@dataclass(frozen=True)
class Param:
    """One setting. ``kind``: int, float, bool, choice or str. ``lo``/``hi`` bound numbers (inclusive)."""

    name: str
    default: Any
    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    cli: str = ""  # the CLI flag; empty: --<name with dashes>

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (None when it is)."""
        if self.kind == "choice":
            return None if value in self.choices else f"one of {', '.join(self.choices)}"
        if self.kind in ("int", "float"):
            try:
                v = float(value)
            except (TypeError, ValueError):
                return "a number"
            if v != v or (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                return f"a number from {self.lo} to {self.hi}"
        return None


_P = [
    Param("mode", DEFAULT_MODE, "choice", "What is trained. head: a linear projection on frozen text features "
          "(seconds on CPU; level with lora on a few hundred photos). lora: LoRA adapters in the text encoder plus the "
          "projection (minutes). full: the whole text encoder (needs many thousands of pairs).", choices=MODES),
    Param("loss", DEFAULT_LOSS, "choice", "softmax: CLIP/LiT contrastive loss over the batch. sigmoid: SigLIP's "
          "pairwise loss; it needs larger batches to match softmax here.", choices=LOSSES),
    Param("steps", 50, "int", "Optimizer steps (each sees batch_size image-caption pairs). The best validated "
          "state is kept, so too many steps cost time, not quality.", 1, 1_000_000, 1),
    Param("batch_size", 1024, "int", "Images per step (one caption each). Bigger is better for contrastive "
          "learning and cheap with cached embeddings; capped at the number of training images.", 2, 65536, 1),
    Param("lr", 1e-4, "float", "Peak learning rate of the projection and temperature (cosine schedule after a "
          "linear warm-up).", 1e-7, 1.0, 1e-5, cli="--lr"),
    Param("text_lr", 0.0, "float", "Learning rate of the text encoder's own weights (lora/full). 0: lr for "
          "lora, lr/10 for full.", 0.0, 1.0, 1e-5),
    Param("weight_decay", 1.0, "float", "Pull of the weights back toward their start (the closed-form ridge "
          "solution when init is ridge, zero otherwise); the main guard against over-fitting small sets.",
          0.0, 100.0, 1e-3),
    Param("warmup_steps", -1, "int", "Linear warm-up steps; -1: 5% of the steps.", -1, 1_000_000, 1),
    Param("init", "ridge", "choice", "How the projection starts. ridge: the closed-form least-squares map from "
          "text features to the (centred) image embeddings, then fine-tuned contrastively. random: LiT's "
          "original random start.", choices=INITS),
    Param("lora_rank", 8, "int", "LoRA rank (mode lora).", 1, 256, 1),
    Param("text_layers", 2, "int", "lora/full: train only the top N transformer layers of the text encoder (0: "
          "all). The frozen layers below them run once per caption and are cached, so each step runs only the "
          "top N.", 0, 1000, 1),
    Param("lora_alpha", 16.0, "float", "LoRA scale numerator (the update is scaled by alpha/rank).", 0.0, 1024.0,
          0.5),
    Param("val_fraction", 0.15, "float", "Share of the images held out to validate; the state with the highest "
          "validation recall is kept. 0: no validation (the last state is kept).", 0.0, 0.5, 0.01),
    Param("val_every", 5, "int", "Steps between validations.", 1, 100_000, 1),
    Param("patience", 4, "int", "Early stopping: end the run after this many validations in a row without a "
          "higher validation recall than the best so far (0: run every step).", 0, 10_000, 1),
    Param("whiten", -1, "int", "Whitening of the locked image embeddings (PCA to k dims, unit variance: a fixed "
          "statistic of the cache, the tower stays locked). -1: the size is chosen on the validation split among "
          "a few closed-form fits; 0: off; k: k dims.", -1, 65536, 1),
    Param("keep", "refit", "choice", "Which state to end on and save. refit: train again on every image (the "
          "validation ones included) with the settings and step count validation chose, as a closed-form fit is "
          "refitted on all its data (held-out mean R@5 59.3 -> 60.2, zero-shot 53% -> 57%, bench/lit_quality.py); "
          "best: the state with the highest validation recall; last: the final step.", choices=KEEP),
    Param("seed", 0, "int", "Same seed, same split, same run.", 0, 0xFFFFFFFF, 1),
]
PARAMS: dict[str, Param] = {p.name: p for p in _P}

# Measured per mode (bench/lit_quality.py and a dev split of its training images, 2026-12-02): from the closed-form
# start (whitened ridge) contrastive fine-tuning of the head overfits 500 photos within a few steps at any lr tried
# (1e-3 .. 2e-5), so the head takes small steps and stops early; a LoRA step costs a text-encoder forward+backward,
# so it runs smaller batches (its defaults are not tuned by measurement yet: see bench/README.md).
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "head": {"steps": 50, "batch_size": 1024, "lr": 1e-4, "weight_decay": 1.0},
    "lora": {"steps": 100, "batch_size": 128, "lr": 1e-4, "weight_decay": 1.0},
    "full": {"steps": 100, "batch_size": 128, "lr": 1e-4, "weight_decay": 1.0},
}


def default(name: str, mode: str | None = None) -> Any:
    """The default of ``name`` (for ``mode`` when the mode has its own)."""
    if mode is not None and name in MODE_DEFAULTS.get(mode, {}):
        return MODE_DEFAULTS[mode][name]
    return PARAMS[name].default


def node_input(name: str, **override: Any) -> tuple:
    """The ComfyUI input declaration of ``name`` (``(choices, opts)`` or ``(TYPE, opts)``)."""
    p = PARAMS[name]
    opts: dict[str, Any] = {"default": override.pop("default", p.default), "tooltip": override.pop("tooltip", p.help)}
    if p.kind == "choice":
        return (list(p.choices), {**opts, **override})
    kind = {"int": "INT", "float": "FLOAT", "bool": "BOOLEAN", "str": "STRING"}[p.kind]
    if p.kind in ("int", "float"):
        opts.update({"min": p.lo, "max": p.hi, "step": p.step})
        if p.kind == "int":
            opts = {k: (int(v) if k in ("min", "max", "step") and v is not None else v) for k, v in opts.items()}
    return (kind, {**opts, **override})
