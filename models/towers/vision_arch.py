"""Recognise a vision encoder from its weights and build the matching model.

Supported: CLIP vision (OpenAI and OpenCLIP ViT-B/32 ... bigG, in HF layout as ComfyUI's ``clip_vision`` files
are, or OpenCLIP's native ``visual.*`` layout), SigLIP vision (e.g. so400m-384/512), DINOv2, plain ViT, and
EfficientNet-Lite (the embedded default). Sizes come from tensor shapes; the head count from the released
towers' widths unless a ``config.json`` comes with the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from ..common.errors import LitError
from .text_arch import load_hf_model, load_state_checked
from .weights import WeightSource, count_layers, guess_heads

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass
class VisionArch:
    """A recognised vision encoder, before the model is built."""

    kind: str  # "clip" | "siglip" | "dinov2" | "vit" | "efficientnet"
    state: dict[str, torch.Tensor]
    config: object  # a transformers config, or the EfficientNet variant name
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: bool = True
    projection: bool = False


def _openclip_visual_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP's native ``visual.*`` layout -> transformers' CLIPVisionModelWithProjection layout."""
    rename = {"class_embedding": "vision_model.embeddings.class_embedding",
              "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
              "positional_embedding": "vision_model.embeddings.position_embedding.weight",
              "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
              "ln_post.weight": "vision_model.post_layernorm.weight",
              "ln_post.bias": "vision_model.post_layernorm.bias"}
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k in rename:
            out[rename[k]] = v
        elif k == "proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k.startswith("transformer.resblocks."):
            i, rest = k[len("transformer.resblocks."):].split(".", 1)
            base = f"vision_model.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0), strict=True):
                    out[base + f"self_attn.{name}.{kind}"] = part.contiguous()
                continue
            rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[base + rest] = v
    return out


def _sub_config(cfg: dict, key: str) -> dict:
    sub = dict(cfg.get(key) or cfg) if cfg else {}
    return {k: v for k, v in sub.items() if k not in ("architectures", "transformers_version")}


def detect_vision_arch(source: WeightSource, *, input_name: str, preprocessor: dict | None = None) -> VisionArch:
    """Recognise the vision encoder in ``source``; ``preprocessor`` is an HF preprocessor_config.json if any."""
    try:
        return _detect_vision_arch(source, input_name=input_name, preprocessor=preprocessor)
    except KeyError as err:
        raise LitError(f"'{source.path}' looks like an image encoder but lacks the weight {err}.",
                       input_name=input_name, fix="the file is incomplete or an unsupported variant.") from None


def _detect_vision_arch(source: WeightSource, *, input_name: str, preprocessor: dict | None) -> VisionArch:
    state = source.state
    cfg = source.config or {}
    model_type = cfg.get("model_type", "")
    pre = preprocessor or {}

    if any(k.startswith("visual.transformer.resblocks.") for k in state):
        state = _openclip_visual_to_hf({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})

    if "embeddings.patch_embedding.weight" in state and "post_layernorm.weight" in state:
        # transformers 5 saves a bare SiglipVisionModel without the `vision_model.` prefix
        state = {(k if k == "visual_projection.weight" else "vision_model." + k): v for k, v in state.items()}

    if any(k.endswith("vision_model.embeddings.patch_embedding.weight") for k in state):
        anchor = next(k for k in state if k.endswith("vision_model.embeddings.patch_embedding.weight"))
        prefix = anchor[: -len("vision_model.embeddings.patch_embedding.weight")]
        sub = {k[len(prefix):]: v for k, v in state.items()
               if k.startswith(prefix + "vision_model.") or k == prefix + "visual_projection.weight"}
        patch = sub["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        hidden = sub["vision_model.embeddings.patch_embedding.weight"].shape[0]
        n_pos = sub["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = count_layers(sub, "vision_model.encoder.layers.")
        inter = sub["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        vcfg = _sub_config(cfg, "vision_config")
        is_siglip = "vision_model.embeddings.class_embedding" not in sub or model_type.startswith("siglip")
        if is_siglip:
            size = patch * math.isqrt(n_pos)
            config = SiglipVisionConfig(**vcfg) if "hidden_size" in vcfg else SiglipVisionConfig(
                hidden_size=hidden, image_size=size, patch_size=patch, num_hidden_layers=layers,
                num_attention_heads=guess_heads(hidden), intermediate_size=inter,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
            config.vision_use_head = "vision_model.head.probe" in sub
            return VisionArch("siglip", sub, config, int(pre.get("size", {}).get("height", config.image_size)),
                              tuple(pre.get("image_mean", HALF)), tuple(pre.get("image_std", HALF)), crop=False)
        size = patch * math.isqrt(n_pos - 1)
        projection = "visual_projection.weight" in sub
        if "hidden_size" in vcfg:
            config = CLIPVisionConfig(**vcfg)
        else:
            config = CLIPVisionConfig(
                hidden_size=hidden, image_size=size, patch_size=patch, num_hidden_layers=layers,
                num_attention_heads=guess_heads(hidden), intermediate_size=inter, layer_norm_eps=1e-5,
                # OpenAI's towers (768/1024 wide) use quick_gelu; OpenCLIP's LAION H/14 and bigG use gelu.
                hidden_act="quick_gelu" if hidden <= 1024 else "gelu")
        if projection:
            config.projection_dim = sub["visual_projection.weight"].shape[0]
        return VisionArch("clip", sub, config, int(pre.get("crop_size", {}).get("height", config.image_size)),
                          tuple(pre.get("image_mean", CLIP_MEAN)), tuple(pre.get("image_std", CLIP_STD)),
                          crop=True, projection=projection)

    cls_key = next((k for k in state if k.endswith("embeddings.cls_token")), None)
    if cls_key is not None:
        prefix = cls_key[: -len("embeddings.cls_token")]
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hidden = sub["embeddings.cls_token"].shape[-1]
        patch = sub["embeddings.patch_embeddings.projection.weight"].shape[-1]
        n_pos = sub["embeddings.position_embeddings"].shape[1]
        size = patch * math.isqrt(n_pos - 1)
        layers = count_layers(sub, "encoder.layer.")
        vcfg = _sub_config(cfg, "vision_config")
        if "encoder.layer.0.layer_scale1.lambda1" in sub or model_type == "dinov2":
            swiglu = "encoder.layer.0.mlp.weights_in.weight" in sub
            if "hidden_size" in vcfg:
                config = Dinov2Config(**vcfg)
            else:
                fc1 = sub["encoder.layer.0.mlp.weights_in.weight" if swiglu else "encoder.layer.0.mlp.fc1.weight"]
                ratio = max(1, round(fc1.shape[0] / hidden / (2 if swiglu else 1)))
                if swiglu:  # SwiGLU hidden is rounded to a multiple of 8 of 2/3 * ratio * hidden
                    ratio = 4
                config = Dinov2Config(hidden_size=hidden, image_size=size, patch_size=patch,
                                      num_hidden_layers=layers, num_attention_heads=guess_heads(hidden, {
                                          384: 6, 768: 12, 1024: 16, 1536: 24}), mlp_ratio=ratio,
                                      use_swiglu_ffn=swiglu, layer_norm_eps=1e-6)
            # DINOv2 is used at 224 (resize 256, crop 224), its positions interpolated, as in its HF processor.
            return VisionArch("dinov2", sub, config, int(pre.get("crop_size", {}).get("height", 224)),
                              tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD)))
        if "hidden_size" in vcfg:
            config = ViTConfig(**vcfg)
        else:
            config = ViTConfig(hidden_size=hidden, image_size=size, patch_size=patch, num_hidden_layers=layers,
                               num_attention_heads=guess_heads(hidden, {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}),
                               intermediate_size=sub["encoder.layer.0.intermediate.dense.weight"].shape[0],
                               qkv_bias="encoder.layer.0.attention.attention.query.bias" in sub)
        return VisionArch("vit", sub, config, int(config.image_size),
                          tuple(pre.get("image_mean", HALF)), tuple(pre.get("image_std", HALF)))

    if any(k.endswith("_conv_stem.weight") for k in state) and any("_blocks." in k for k in state):
        prefix = next(k for k in state if k.endswith("_conv_stem.weight"))[: -len("_conv_stem.weight")]
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        variant = _efficientnet_variant(sub, source.path, input_name)
        return VisionArch("efficientnet", sub, variant, 224, IMAGENET_MEAN, IMAGENET_STD)

    sample = ", ".join(sorted(state)[:4])
    raise LitError(f"'{source.path}' is not an image encoder this pack recognises (first keys: {sample}).",
                   input_name=input_name,
                   fix="use a CLIP / SigLIP / DINOv2 / ViT vision encoder (.safetensors or HF folder) from "
                       "models/clip_vision, or leave it empty for the embedded EfficientNet-Lite0.")


def _efficientnet_variant(sub: dict[str, torch.Tensor], path: str, input_name: str) -> str:
    from efficientnet_lite_pytorch import EfficientNet

    blocks = count_layers(sub, "_blocks.")
    for i in range(5):
        name = f"efficientnet-lite{i}"
        model = EfficientNet.from_name(name)
        if len(model._blocks) == blocks and model._conv_head.weight.shape == sub["_conv_head.weight"].shape:
            return name
    raise LitError(f"'{path}' looks like an EfficientNet but matches no EfficientNet-Lite0..4 layout.",
                   input_name=input_name, fix="use an EfficientNet-Lite checkpoint converted to safetensors.")


class HFVisionBackbone(nn.Module):
    """A transformers vision model reduced to one embedding per image."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "dinov2":
            # Positions are interpolated when the input size differs from pretraining (518 -> 224).
            return self.model(pixel_values=pixel_values).pooler_output
        if self.kind == "vit":
            return self.model(pixel_values=pixel_values, interpolate_pos_encoding=True).last_hidden_state[:, 0]
        out = self.model(pixel_values=pixel_values)
        if self.kind == "clip" and hasattr(out, "image_embeds"):
            return out.image_embeds
        if out.pooler_output is not None:
            return out.pooler_output
        return out.last_hidden_state.mean(1)  # SigLIP without its attention-pool head (ComfyUI's files)


class EfficientNetBackbone(nn.Module):
    """EfficientNet-Lite's convolutional trunk with global average pooling (1280-d for Lite0)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(pixel_values).mean(dim=(2, 3))


def build_vision_backbone(arch: VisionArch, *, attn_implementation: str, input_name: str,
                          path: str) -> tuple[nn.Module, int]:
    """Instantiate and load the model; returns the backbone and its embedding dim."""
    if arch.kind == "efficientnet":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(arch.config)
        model.set_swish(memory_efficient=False)  # plain swish: autograd-friendly for guidance
        load_state_checked(model, arch.state, input_name=input_name, path=path, what="EfficientNet-Lite")
        return EfficientNetBackbone(model.eval()), int(model._conv_head.weight.shape[0])
    config = arch.config
    kwargs = {}
    if arch.kind == "clip":
        cls = CLIPVisionModelWithProjection if arch.projection else CLIPVisionModel
        dim = config.projection_dim if arch.projection else config.hidden_size
    elif arch.kind == "siglip":
        cls, dim = SiglipVisionModel, config.hidden_size
    elif arch.kind == "dinov2":
        cls, dim = Dinov2Model, config.hidden_size
    else:
        cls, dim = ViTModel, config.hidden_size
        kwargs["add_pooling_layer"] = False
    model = load_hf_model(cls, config, arch.state, attn_implementation=attn_implementation, input_name=input_name,
                          path=path, what=f"{arch.kind} image encoder", **kwargs)
    return HFVisionBackbone(model, arch.kind), int(dim)
