"""The LiT dual encoder: a locked image tower, a text tower, and the trainable text-side adapter.

Adapter modes:
- ``head``: only a linear projection (text hidden size -> image embedding dim) is trained;
- ``lora``: LoRA on the text tower's attention and MLP linears, plus the head;
- ``full``: the whole text tower plus the head.
The image tower is never trained; its parameters never get gradients and are never given to an optimizer.
Saved adapters hold only the trained tensors, with JSON metadata in the safetensors header.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common.atomic import save_tensors_atomic
from ..common.errors import LitError
from ..common.safetensors_io import load_tensors, read_metadata
from ..towers.spec import DEFAULT_VIEWS
from . import spec
from .layer_cache import top_layer_prefixes, transformer_layers
from .lora import apply_lora, lora_parameters, lora_state_dict
from .losses import LOSSES, make_loss

MODES = ("head", "lora", "full")
FORMAT = "comfyui-lit-adapter"
FORMAT_VERSION = 1
DEFAULT_LORA_TARGETS = ("attention", "mlp")


class LitAdapter(nn.Module):
    """The text-side trainable part that lives outside the text tower: the projection head and the loss's
    temperature (and bias). LoRA / full-mode tensors live inside the text tower and are saved with it."""

    def __init__(self, hidden_size: int, embed_dim: int, loss: str, seed: int = 0) -> None:
        super().__init__()
        self.head = nn.Linear(hidden_size, embed_dim)
        # Seeded init so the same seed gives the same run, whatever the global RNG has been used for.
        g = torch.Generator().manual_seed(int(seed))
        bound = 1.0 / hidden_size ** 0.5
        with torch.no_grad():
            self.head.weight.copy_(torch.empty_like(self.head.weight).uniform_(-bound, bound, generator=g))
            self.head.bias.zero_()
        self.loss = make_loss(loss)
        # The training images' mean raw embedding, subtracted before normalising: a fixed statistic of the locked
        # tower's outputs (like a BatchNorm mean), not a trained weight. Zero: no centring (older adapters).
        self.register_buffer("image_center", torch.zeros(embed_dim))
        # Closed-form whitening of the locked embeddings (PCA to k dims, each scaled to unit variance), also a
        # fixed statistic of the tower's outputs: ``basis`` [D, k] orthonormal, ``scale`` [k]. k = 0: none.
        self.register_buffer("image_basis", torch.zeros(embed_dim, 0))
        self.register_buffer("image_scale", torch.zeros(0))

    def forward(self, text_features: torch.Tensor) -> torch.Tensor:
        return self.head(text_features.to(self.head.weight.dtype))


class LitModel(nn.Module):
    """Locked image tower + text tower + adapter, sharing an ``embed_dim``-dim space (the image tower's).

    ``copy_text_tower`` (default: on for ``lora``/``full``) trains a private copy, so a text tower object that the
    host shares with other nodes is never modified.
    """

    def __init__(self, image_tower, text_tower, *, mode: str = "lora", loss: str = "softmax", lora_rank: int = 8,
                 lora_alpha: float = 16.0, lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS, seed: int = 0,
                 copy_text_tower: bool | None = None, text_layers: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise LitError(f"unknown adapter mode '{mode}'.", input_name="mode", fix=f"use one of {', '.join(MODES)}.")
        if loss not in LOSSES:
            raise LitError(f"unknown loss '{loss}'.", input_name="loss", fix=f"use one of {', '.join(LOSSES)}.")
        # Under ComfyUI's inference mode trainable tensors could never take gradients: nodes build the model
        # inside nodes/host.py's trainable(); the engine does not lift inference mode itself.
        # lora/full: train only the top N transformer layers (0: all; None: the spec's measured default)
        self.text_layers = int(spec.default("text_layers") if text_layers is None else text_layers)
        self._build(image_tower, text_tower, mode, loss, lora_rank, lora_alpha, lora_targets, seed,
                    mode != "head" if copy_text_tower is None else copy_text_tower)
        # Filled by the trainer, written into the adapter's metadata.
        self.training_info: dict[str, Any] = {}

    def _build(self, image_tower, text_tower, mode: str, loss: str, lora_rank: int, lora_alpha: float,
               lora_targets: tuple[str, ...], seed: int, copy_text_tower: bool) -> None:
        if copy_text_tower:
            text_tower = copy.deepcopy(text_tower)  # also turns inference tensors into normal ones
        image_tower.requires_grad_(False)
        image_tower.eval()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.mode = mode
        self.loss_name = loss
        self.lora_rank = int(lora_rank) if mode == "lora" else 0
        self.lora_alpha = float(lora_alpha) if mode == "lora" else 0.0
        self.lora_targets = tuple(lora_targets)
        self.embed_dim = int(image_tower.embed_dim)
        self.adapter = LitAdapter(int(text_tower.hidden_size), self.embed_dim, loss, seed).to(text_tower.device)
        # The top layers' name prefixes (None: the whole tower); a count at or above the depth means all layers.
        self._top = top_layer_prefixes(text_tower.model, self.text_layers) if mode != "head" else None
        if self._top is None:
            self.text_layers = 0
        if mode == "head":
            text_tower.requires_grad_(False)
        elif mode == "lora":
            apply_lora(text_tower.model, self.lora_rank, self.lora_alpha, targets=self.lora_targets, seed=seed,
                       within=self._top)
        else:
            text_tower.requires_grad_(False)
            for p in self._full_parameters():
                p.requires_grad_(True)

    def _full_parameters(self) -> list[nn.Parameter]:
        """Full mode's text-tower parameters: all, or (top-N layers) those layers and what follows the layer
        stack (a final norm, a pooler), never the embeddings or the frozen lower layers."""
        if self._top is None:
            return list(self.text_tower.model.parameters())
        stack = transformer_layers(self.text_tower.model)[0] + "."
        return [p for n, p in self.text_tower.model.named_parameters()
                if n.startswith(self._top) or not (n.startswith(stack) or "embeddings" in n)]

    # -- the contract used by samplers and zero-shot nodes --------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.image_tower.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.adapter.loss.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor:
        return self.adapter.loss.logit_bias

    def train(self, mode: bool = True) -> LitModel:
        super().train(mode)
        self.image_tower.train(False)  # locked: always eval
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,H,W,C]`` 0..1 -> ``[B,D]`` L2-normalised; differentiable w.r.t. ``images`` when grad is on."""
        return self.normalize_image_features(self.image_tower.embed(images))

    def normalize_image_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw image-tower features (e.g. from the embedding cache) -> the shared space: centred on the training
        images' mean (zero unless trained so), whitened when the adapter holds a whitening, L2-normalised. The
        result stays ``[N, D]`` (whitened coordinates are mapped back through the orthonormal basis)."""
        a = self.adapter
        x = features.float() - a.image_center.to(features.device)
        if a.image_scale.numel():
            basis = a.image_basis.to(x.device)
            return F.normalize((x @ basis) * a.image_scale.to(x.device), dim=-1) @ basis.t()
        return F.normalize(x, dim=-1)

    def set_image_center(self, mean: torch.Tensor) -> None:
        """Centre image embeddings on ``mean`` (the training images' raw mean embedding)."""
        with torch.no_grad():
            self.adapter.image_center.copy_(mean.detach().float().to(self.adapter.image_center.device))

    def set_image_whitening(self, basis: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        """Whiten image embeddings with ``basis`` [D, k] (orthonormal columns) and ``scale`` [k]; None: off."""
        a, dev = self.adapter, self.adapter.image_center.device
        if basis is None or scale is None or not scale.numel():
            basis, scale = torch.zeros(self.embed_dim, 0), torch.zeros(0)
        a.image_basis = basis.detach().float().to(dev).contiguous()
        a.image_scale = scale.detach().float().to(dev).contiguous()

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Pooled text-tower features ``[N, hidden]`` (before the head); differentiable in lora/full mode."""
        if isinstance(texts, str):
            texts = [texts]
        return self.text_tower(**self.text_tower.tokenize(list(texts)))

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled text features -> L2-normalised ``[N, D]`` in the image space (inside the whitened subspace when
        the images are whitened, so text and image cosines are taken in the same k dims)."""
        out = self.adapter(features.to(self.adapter.head.weight.device)).float()
        if self.adapter.image_scale.numel():
            basis = self.adapter.image_basis.to(out.device)
            return F.normalize(out @ basis, dim=-1) @ basis.t()
        return F.normalize(out, dim=-1)

    def encode_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> ``[N, D]`` L2-normalised (no grad)."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return torch.zeros(0, self.embed_dim, device=self.device)
        with torch.no_grad():
            outs = [self.project_text(self.text_features(texts[i:i + batch_size]))
                    for i in range(0, len(texts), batch_size)]
        return torch.cat(outs).to(self.device)

    def logits(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """``[B, N]`` = logit_scale * image @ text.T + logit_bias."""
        img = self.encode_image(images)
        txt = self.encode_text(texts).to(img.device)
        return self.logit_scale.to(img.device) * img @ txt.t() + self.logit_bias.to(img.device)

    # -- training helpers -------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Exactly the parameters an optimizer may touch (never the image tower's)."""
        params = list(self.adapter.parameters())
        if self.mode == "lora":
            params += lora_parameters(self.text_tower.model)
        elif self.mode == "full":
            params += self._full_parameters()
        return params

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained tensors only, with stable names: ``head.*``, ``loss.*``, ``text.*`` (lora/full)."""
        out = {f"head.{k}": v for k, v in self.adapter.head.state_dict().items()}
        out.update({f"loss.{k}": v for k, v in self.adapter.loss.state_dict().items()})
        out["center.image"] = self.adapter.image_center
        if self.adapter.image_scale.numel():
            out["whiten.basis"], out["whiten.scale"] = self.adapter.image_basis, self.adapter.image_scale
        if self.mode == "lora":
            out.update({f"text.{k}": v for k, v in lora_state_dict(self.text_tower.model).items()})
        elif self.mode == "full":
            out.update({f"text.{k}": v for k, v in self.text_tower.model.state_dict().items()})
        return {k: v.detach().clone() for k, v in out.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
        """Load what :meth:`trainable_state_dict` returned (or a saved adapter's tensors)."""
        head = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        loss = {k[5:]: v for k, v in state.items() if k.startswith("loss.")}
        text = {k[5:]: v for k, v in state.items() if k.startswith("text.")}
        center = state.get("center.image")
        with torch.no_grad():
            try:
                if center is not None and center.shape != self.adapter.image_center.shape:
                    raise RuntimeError(f"image centre of shape {tuple(center.shape)}")
                # Adapters saved before centring existed have no centre: zero, as they were trained.
                self.adapter.image_center.copy_(center if center is not None else torch.zeros_like(
                    self.adapter.image_center))
                basis, scale = state.get("whiten.basis"), state.get("whiten.scale")
                if basis is not None and (scale is None or basis.shape != (self.embed_dim, scale.shape[0])):
                    raise RuntimeError(f"whitening of shape {tuple(basis.shape)} for {self.embed_dim}-dim images")
                self.set_image_whitening(basis, scale)  # none in the file (older adapters): no whitening
                self.adapter.head.load_state_dict(head, strict=strict)
                self.adapter.loss.load_state_dict(loss, strict=strict)
                if self.mode != "head":
                    missing, unexpected = self.text_tower.model.load_state_dict(text, strict=False)
                    expected = set(lora_state_dict(self.text_tower.model)) if self.mode == "lora" else set(
                        self.text_tower.model.state_dict())
                    lacking = expected - set(text)
                    if strict and (unexpected or lacking):
                        raise RuntimeError(f"missing {sorted(lacking)[:3]}, unexpected {sorted(unexpected)[:3]}")
            except RuntimeError as err:
                raise LitError(f"the adapter's tensors don't fit this model: {str(err)[:300]}", input_name="adapter",
                               fix="load it onto the text/image encoders it was trained with.") from None

    def describe(self) -> dict[str, Any]:
        """Everything save_adapter writes in the metadata (and the node shows)."""
        it, tt = self.image_tower, self.text_tower
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "mode": self.mode, "loss": self.loss_name,
            "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "lora_targets": list(self.lora_targets),
            "text_layers": self.text_layers,
            "embed_dim": self.embed_dim, "text_hidden_size": int(tt.hidden_size),
            "image_tower": {"name": it.name, "fingerprint": it.fingerprint, "kind": getattr(it, "kind", ""),
                            "embed_dim": int(it.embed_dim), "preprocess_id": str(getattr(it, "preprocess_id", ""))},
            "text_tower": {"name": tt.name, "fingerprint": tt.fingerprint, "arch": getattr(tt, "arch", ""),
                           "hidden_size": int(tt.hidden_size)},
            "temperature": float(1.0 / self.logit_scale.detach().float().cpu()),
            "logit_scale": float(self.logit_scale.detach().float().cpu()),
            "logit_bias": float(self.logit_bias.detach().float().cpu()),
            **self.training_info,
        }


def save_adapter(model: LitModel, path: str, *, extra: dict[str, Any] | None = None, overwrite: bool = True,
                 unique: bool = False) -> str:
    """Write the trained tensors (never the towers) to ``path`` (``.safetensors``) atomically; the JSON metadata
    in the header records the towers' fingerprints, dims, mode, loss, temperature, steps and metrics."""
    if not path.lower().endswith((".safetensors", ".sft")):
        path += ".safetensors"
    meta = model.describe()
    if extra:
        meta.update(extra)
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "lit": json.dumps(meta, default=str)}
    return save_tensors_atomic(model.trainable_state_dict(), path, metadata=header, overwrite=overwrite, unique=unique)


def read_adapter_metadata(path: str) -> dict[str, Any]:
    """The adapter's JSON metadata (``LitError`` when the file is not a LiT adapter)."""
    meta = read_metadata(path, input_name="adapter")
    if meta.get("format") != FORMAT or "lit" not in meta:
        raise LitError(f"'{os.path.basename(path)}' is not a LiT adapter (no '{FORMAT}' metadata).",
                       input_name="adapter", fix="choose a file saved by 'LiT Save Adapter' or the CLI.")
    name = os.path.basename(path)
    try:
        info = json.loads(meta["lit"])
    except (json.JSONDecodeError, TypeError):
        info = None
    if not isinstance(info, dict):
        raise LitError(f"'{name}' has damaged LiT metadata (not a JSON object).", input_name="adapter",
                       fix="re-save the adapter, or choose another file.")
    problems = _metadata_problems(info)
    if problems:
        raise LitError(f"'{name}' has damaged LiT metadata: {'; '.join(problems)}.", input_name="adapter",
                       fix="re-save the adapter, or choose another file.")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise LitError(f"'{os.path.basename(path)}' was saved by a newer ComfyUI-LiT (format "
                       f"{info.get('format_version')}).", input_name="adapter", fix="update ComfyUI-LiT.")
    return info


def _metadata_problems(info: dict[str, Any]) -> list[str]:
    out = []
    if info.get("mode") not in MODES:
        out.append(f"mode {info.get('mode')!r} is not one of {', '.join(MODES)}")
    if info.get("loss") not in LOSSES:
        out.append(f"loss {info.get('loss')!r} is not one of {', '.join(LOSSES)}")
    for key in ("format_version", "lora_rank", "embed_dim", "text_hidden_size"):
        value = info.get(key, 0)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))
                                  or not str(value).strip().lstrip("-").isdigit()):
            out.append(f"{key} {value!r} is not an integer")
    if info.get("mode") == "lora" and str(info.get("lora_rank", "8")).isdigit() and int(info.get("lora_rank", 8)) < 1:
        out.append(f"lora_rank {info.get('lora_rank')!r} is not a positive integer")
    try:
        float(info.get("lora_alpha") or 0.0)
    except (TypeError, ValueError):
        out.append(f"lora_alpha {info.get('lora_alpha')!r} is not a number")
    for key in ("image_tower", "text_tower"):
        if not isinstance(info.get(key, {}), dict):
            out.append(f"{key} is not an object")
    return out


def _views_of(preprocess_id: str) -> str:
    """The views an adapter was trained on, from its recorded preprocessing id (older adapters: centre crop)."""
    try:
        return str(json.loads(preprocess_id).get("views", DEFAULT_VIEWS))
    except (ValueError, AttributeError):
        return DEFAULT_VIEWS


def load_adapter(path: str, image_tower, text_tower, *, force: bool = False,
                 device: torch.device | str | None = None) -> LitModel:
    """Rebuild the :class:`LitModel` saved at ``path`` on these towers.

    Refused with ``LitError`` when a tower's fingerprint differs from the one it was trained with, unless
    ``force`` (dims must still match: a head of the wrong shape can't be loaded at all).
    """
    info = read_adapter_metadata(path)
    problems = []
    for key, tower, what in (("image_tower", image_tower, "image"), ("text_tower", text_tower, "text")):
        want = info.get(key, {})
        if want.get("fingerprint") != tower.fingerprint:
            problems.append(f"{what} encoder is '{tower.name}' ({tower.fingerprint}) but the adapter was trained "
                            f"on '{want.get('name')}' ({want.get('fingerprint')})")
    trained_views = _views_of(info.get("image_tower", {}).get("preprocess_id", ""))
    views = getattr(image_tower, "views", DEFAULT_VIEWS)
    if trained_views != views:  # the head maps text to embeddings of these views: others score lower, silently
        raise LitError(f"this adapter was trained on the image encoder's '{trained_views}' views, but the encoder "
                       f"connected is set to '{views}'.", input_name="adapter",
                       fix=f"set the image encoder loader's views to '{trained_views}'.")
    dims_ok = (int(info.get("embed_dim", -1)) == int(image_tower.embed_dim)
               and int(info.get("text_hidden_size", -1)) == int(text_tower.hidden_size))
    if problems and (not force or not dims_ok):
        raise LitError("this adapter belongs to other encoders: " + "; ".join(problems) + ".", input_name="adapter",
                       fix="load the encoders it was trained with" + ("" if not dims_ok else
                                                                     ", or set force to load it anyway") + ".")
    model = LitModel(image_tower, text_tower, mode=info["mode"], loss=info["loss"],
                     lora_rank=int(info.get("lora_rank") or 8), lora_alpha=float(info.get("lora_alpha") or 16.0),
                     lora_targets=tuple(info.get("lora_targets") or DEFAULT_LORA_TARGETS),
                     text_layers=int(info.get("text_layers") or 0))
    tensors = load_tensors(path, input_name="adapter")
    from ..towers.registry import check_finite_state

    check_finite_state(tensors, path=path, input_name="adapter")  # NaN weights give NaN scores downstream
    model.load_trainable_state_dict(tensors)
    keep = {k: v for k, v in info.items() if k in ("steps", "dataset_size", "metrics", "trained_at", "seed")}
    model.training_info = keep
    if device is not None:
        model.adapter.to(device)
        model.text_tower.to(device)
    model.eval()
    return model
