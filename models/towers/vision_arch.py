"""Recognise a vision encoder from its weights and build the matching model.

Supported: CLIP vision (OpenAI and OpenCLIP ViT-B/32 ... bigG, in HF layout as ComfyUI's ``clip_vision`` files
are, or OpenCLIP's native ``visual.*`` layout), SigLIP vision (e.g. so400m-384/512), DINOv2, plain ViT, and
EfficientNet-Lite (the embedded default). Sizes come from tensor shapes; the head count from the released
towers' widths unless a ``config.json`` comes with the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from ..common.errors import LitError
from .registry import (
    CONFIG_ERRORS,
    Architecture,
    check_finite_state,
    check_used,
    detect,
    is_ignorable,
    register,
    take_renamed,
)
from .text_arch import load_hf_model, load_state_checked, openclip_blocks_to_hf
from .weights import WeightSource, count_layers, guess_heads

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained with inception-style pixels, (x - 127) / 128 (Google's efficientnet_lite_builder:
# "edge models use inception-style MEAN and STDDEV"), not the ImageNet statistics: with those its ImageNet top-1
# on scikit-image's photos drops (coffee: espresso 0.94 -> 0.82).
EDGE_MEAN, EDGE_STD = (127 / 255,) * 3, (128 / 255,) * 3
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
    ignorable: tuple[str, ...] = ()
    ignored: list[str] = field(default_factory=list)
    layout: str = ""


def _prefix_of(state, suffix: str) -> str | None:
    key = next((k for k in state if k.endswith(suffix)), None)
    return None if key is None else key[: -len(suffix)]


def _under(state, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _sub_config(cfg: dict, key: str) -> dict:
    sub = dict(cfg.get(key) or cfg) if cfg else {}
    return {k: v for k, v in sub.items() if k not in ("architectures", "transformers_version", "torch_dtype",
                                                      "_name_or_path", "dtype")}


def _finish(source: WeightSource, arch: Architecture, kind: str, tower, sub, used, config, *, input_name: str,
            input_size: int, mean, std, crop: bool = True, projection: bool = False) -> VisionArch:
    # Buffers (position_ids, ...) are rebuilt by the model: report them as ignored, never pass them on.
    sub = {k: v for k, v in sub.items() if not is_ignorable(k, ())}
    used = {k for k in used if not is_ignorable(k, ())}
    ignored = check_used(source.path, tower, used, arch.ignorable, what=f"{kind} image encoder", input_name=input_name)
    check_finite_state(sub, path=source.path, input_name=input_name)
    return VisionArch(kind, sub, config, int(input_size), tuple(mean), tuple(std), crop=crop, projection=projection,
                      ignorable=arch.ignorable, ignored=ignored, layout=arch.name)


# --- OpenCLIP native visual tower ---------------------------------------------------------------------------------

def _match_openclip_visual(state) -> bool:
    return _prefix_of(state, "visual.transformer.resblocks.0.attn.in_proj_weight") is not None


def _prepare_openclip_visual(source: WeightSource, *, input_name: str, arch: Architecture,
                             preprocessor: dict | None) -> VisionArch:
    prefix = _prefix_of(source.state, "visual.transformer.resblocks.0.attn.in_proj_weight") + "visual."
    tower = _under(source.state, prefix)
    sub, used = openclip_blocks_to_hf(tower, "vision_model.encoder.layers.")
    rename = {"class_embedding": "vision_model.embeddings.class_embedding",
              "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
              "positional_embedding": "vision_model.embeddings.position_embedding.weight",
              "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
              "ln_post.weight": "vision_model.post_layernorm.weight",
              "ln_post.bias": "vision_model.post_layernorm.bias"}
    take_renamed(tower, sub, used, rename, projection=("proj", "visual_projection.weight"))
    oc = (source.openclip_config or {}).get("model_cfg") or {}
    vcfg = oc.get("vision_cfg") or {}
    overrides = {}
    if vcfg:  # OpenCLIP's own config says what shapes cannot: heads (width / head_width) and the activation
        width = int(vcfg.get("width", sub["vision_model.embeddings.patch_embedding.weight"].shape[0]))
        overrides = {"num_attention_heads": max(1, width // int(vcfg.get("head_width", 64))),
                     "hidden_act": "quick_gelu" if oc.get("quick_gelu") else "gelu"}
    found = _hf_clip_like(sub, {}, "clip", overrides)
    pre = dict(preprocessor or {})
    pcfg = (source.openclip_config or {}).get("preprocess_cfg") or {}
    pre.setdefault("image_mean", pcfg.get("mean", CLIP_MEAN))
    pre.setdefault("image_std", pcfg.get("std", CLIP_STD))
    return _finish(source, arch, "clip", tower, sub, used, found["config"], input_name=input_name,
                   input_size=found["size"], mean=pre["image_mean"], std=pre["image_std"],
                   projection="visual_projection.weight" in sub)


register(Architecture(
    "openclip-visual", "image", _match_openclip_visual, _prepare_openclip_visual,
    description="OpenCLIP native visual tower (visual.conv1, visual.transformer.resblocks, visual.proj)"))


# --- transformers CLIP / SigLIP vision (also ComfyUI's clip_vision files) ----------------------------------------

def _hf_vision_tower(state) -> dict[str, torch.Tensor] | None:
    prefix = _prefix_of(state, "vision_model.embeddings.patch_embedding.weight")
    if prefix is not None:
        return _under(state, prefix)
    if "embeddings.patch_embedding.weight" in state and "post_layernorm.weight" in state:
        # transformers 5 saves a bare CLIP/SigLIP vision model without the `vision_model.` prefix
        return {(k if k.startswith("visual_projection") else "vision_model." + k): v for k, v in state.items()}
    return None


def _match_hf_siglip_vision(state) -> bool:
    tower = _hf_vision_tower(state)
    return tower is not None and "vision_model.embeddings.class_embedding" not in tower


def _match_hf_clip_vision(state) -> bool:
    tower = _hf_vision_tower(state)
    return tower is not None and "vision_model.embeddings.class_embedding" in tower


def _hf_clip_like(sub: dict[str, torch.Tensor], vcfg: dict, kind: str, overrides: dict | None = None) -> dict:
    patch_w = sub["vision_model.embeddings.patch_embedding.weight"]
    patch, hidden = patch_w.shape[-1], patch_w.shape[0]
    n_pos = sub["vision_model.embeddings.position_embedding.weight"].shape[0]
    layers = count_layers(sub, "vision_model.encoder.layers.")
    inter = sub["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    if kind == "siglip":
        config = SiglipVisionConfig(**vcfg) if "hidden_size" in vcfg else SiglipVisionConfig(
            hidden_size=hidden, image_size=patch * math.isqrt(n_pos), patch_size=patch, num_hidden_layers=layers,
            num_attention_heads=guess_heads(hidden), intermediate_size=inter,
            hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
        config.vision_use_head = "vision_model.head.probe" in sub
        return {"config": config, "size": config.image_size}
    if "hidden_size" in vcfg:
        config = CLIPVisionConfig(**vcfg)
    else:
        config = CLIPVisionConfig(**{
            "hidden_size": hidden, "image_size": patch * math.isqrt(n_pos - 1), "patch_size": patch,
            "num_hidden_layers": layers, "num_attention_heads": guess_heads(hidden), "intermediate_size": inter,
            "layer_norm_eps": 1e-5,
            # OpenAI's towers (768/1024 wide) use quick_gelu; OpenCLIP's LAION H/14 and bigG use gelu.
            "hidden_act": "quick_gelu" if hidden <= 1024 else "gelu", **(overrides or {})})
    if "visual_projection.weight" in sub:
        config.projection_dim = sub["visual_projection.weight"].shape[0]
    return {"config": config, "size": config.image_size}


def _prepare_hf_vision(source: WeightSource, *, input_name: str, arch: Architecture,
                       preprocessor: dict | None) -> VisionArch:
    tower = _hf_vision_tower(source.state)
    if tower["vision_model.embeddings.patch_embedding.weight"].dim() != 4:
        raise LitError(f"'{source.path}' is a SigLIP2 NaFlex (variable-resolution) vision tower, which this pack does "
                       "not load.", input_name=input_name,
                       fix="use a fixed-resolution SigLIP / SigLIP2 tower (e.g. siglip2-base-patch16-224) or "
                           "sigclip_vision_patch14_384.")
    sub = {k: v for k, v in tower.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
    cfg = source.config or {}
    kind = "siglip" if arch.name == "hf-siglip-vision" else "clip"
    found = _hf_clip_like(sub, _sub_config(cfg, "vision_config"), kind)
    pre = preprocessor or {}
    if kind == "siglip":
        size = int(pre.get("size", {}).get("height", found["size"]))
        return _finish(source, arch, kind, tower, sub, set(sub), found["config"], input_name=input_name,
                       input_size=size, mean=pre.get("image_mean", HALF), std=pre.get("image_std", HALF), crop=False)
    size = int(pre.get("crop_size", {}).get("height", found["size"]))
    return _finish(source, arch, kind, tower, sub, set(sub), found["config"], input_name=input_name, input_size=size,
                   mean=pre.get("image_mean", CLIP_MEAN), std=pre.get("image_std", CLIP_STD),
                   projection="visual_projection.weight" in sub)


_OTHER_TEXT = (r"^text_model\.", r"^text_projection(\.weight)?$", r"^logit_scale$", r"^logit_bias$")
register(Architecture(
    "hf-siglip-vision", "image", _match_hf_siglip_vision, _prepare_hf_vision,
    model_types=("siglip", "siglip_vision_model"), ignorable=_OTHER_TEXT,
    description="transformers SiglipVisionModel; ComfyUI's sigclip_vision_patch14_384 (vision_model.*)"))
register(Architecture(
    "hf-clip-vision", "image", _match_hf_clip_vision, _prepare_hf_vision,
    model_types=("clip", "clip_vision_model"), ignorable=_OTHER_TEXT,
    description="transformers CLIPVisionModel(WithProjection); ComfyUI's clip_vision_h / clip_vision_g"))


# --- DINOv2 and plain ViT (transformers layout) -------------------------------------------------------------------

def _vit_tower(state):
    prefix = _prefix_of(state, "embeddings.cls_token")
    return None if prefix is None else _under(state, prefix)


def _match_dinov2(state) -> bool:
    tower = _vit_tower(state)
    return tower is not None and ("encoder.layer.0.layer_scale1.lambda1" in tower or "embeddings.mask_token" in tower)


def _match_vit(state) -> bool:
    return _vit_tower(state) is not None


def _prepare_vit_like(source: WeightSource, *, input_name: str, arch: Architecture,
                      preprocessor: dict | None) -> VisionArch:
    tower = _vit_tower(source.state)
    sub = dict(tower)
    cfg = source.config or {}
    pre = preprocessor or {}
    hidden = sub["embeddings.cls_token"].shape[-1]
    patch = sub["embeddings.patch_embeddings.projection.weight"].shape[-1]
    n_pos = sub["embeddings.position_embeddings"].shape[1]
    size = patch * math.isqrt(n_pos - 1)
    layers = count_layers(sub, "encoder.layer.")
    vcfg = _sub_config(cfg, "vision_config")
    if arch.name == "hf-dinov2":
        registers = sub["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in sub else 0
        swiglu = "encoder.layer.0.mlp.weights_in.weight" in sub
        if "hidden_size" in vcfg:
            vcfg.pop("model_type", None)
            config = (Dinov2WithRegistersConfig if registers else Dinov2Config)(**vcfg)
        else:
            fc1 = sub["encoder.layer.0.mlp.weights_in.weight" if swiglu else "encoder.layer.0.mlp.fc1.weight"]
            ratio = max(1, round(fc1.shape[0] / hidden / (2 if swiglu else 1)))
            if swiglu:  # SwiGLU hidden is rounded to a multiple of 8 of 2/3 * ratio * hidden
                ratio = 4
            kwargs = dict(hidden_size=hidden, image_size=size, patch_size=patch, num_hidden_layers=layers,
                          num_attention_heads=guess_heads(hidden, {384: 6, 768: 12, 1024: 16, 1536: 24}),
                          mlp_ratio=ratio, use_swiglu_ffn=swiglu, layer_norm_eps=1e-6)
            config = Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs) if registers else \
                Dinov2Config(**kwargs)
        # DINOv2 is used at 224 (resize 256, crop 224), its positions interpolated, as in its HF processor.
        return _finish(source, arch, "dinov2", tower, sub, set(sub), config, input_name=input_name,
                       input_size=int(pre.get("crop_size", {}).get("height", 224)),
                       mean=pre.get("image_mean", IMAGENET_MEAN), std=pre.get("image_std", IMAGENET_STD))
    if "hidden_size" in vcfg:
        config = ViTConfig(**vcfg)
    else:
        config = ViTConfig(hidden_size=hidden, image_size=size, patch_size=patch, num_hidden_layers=layers,
                           num_attention_heads=guess_heads(hidden, {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}),
                           intermediate_size=sub["encoder.layer.0.intermediate.dense.weight"].shape[0],
                           qkv_bias="encoder.layer.0.attention.attention.query.bias" in sub)
    return _finish(source, arch, "vit", tower, sub, set(sub), config, input_name=input_name,
                   input_size=int(config.image_size), mean=pre.get("image_mean", HALF), std=pre.get("image_std", HALF))


register(Architecture(
    "hf-dinov2", "image", _match_dinov2, _prepare_vit_like, model_types=("dinov2", "dinov2_with_registers"),
    description="transformers Dinov2Model / Dinov2WithRegistersModel (embeddings.cls_token, layer_scale)"))
register(Architecture(
    "hf-vit", "image", _match_vit, _prepare_vit_like, model_types=("vit",),
    ignorable=(r"^pooler\.", r"^classifier\."), description="transformers ViTModel (embeddings.cls_token)"))


# --- timm's ViT layout: recognised so it is refused with a useful message ---------------------------------------

def _match_timm_vit(state) -> bool:
    return "blocks.0.attn.qkv.weight" in state and "patch_embed.proj.weight" in state


def _refuse_timm(source: WeightSource, *, input_name: str, arch: Architecture, preprocessor=None) -> VisionArch:
    raise LitError(f"'{source.path}' is a timm checkpoint (blocks.N.attn.qkv, patch_embed.proj): timm's layout is not "
                   "supported, because the same key names hide different models (DINOv2, SigLIP, ViT, EVA) that differ "
                   "in ways the weights do not show.", input_name=input_name,
                   fix="use the transformers (HF) release of the same model (e.g. facebook/dinov2-*, "
                       "google/siglip-*, google/vit-*), or the OpenCLIP / ComfyUI file.")


register(Architecture("timm-vit", "image", _match_timm_vit, _refuse_timm,
                      description="timm ViT-family state dicts (refused)"))


# --- EfficientNet-Lite (the embedded default) ---------------------------------------------------------------------

def _match_efficientnet(state) -> bool:
    return any(k.endswith("_conv_stem.weight") for k in state) and any("_blocks." in k for k in state)


def _prepare_efficientnet(source: WeightSource, *, input_name: str, arch: Architecture,
                          preprocessor: dict | None = None) -> VisionArch:
    prefix = _prefix_of(source.state, "_conv_stem.weight")
    sub = _under(source.state, prefix)
    variant = _efficientnet_variant(sub, source.path, input_name)
    check_finite_state(sub, path=source.path, input_name=input_name)
    return VisionArch("efficientnet", sub, variant, 224, EDGE_MEAN, EDGE_STD, layout=arch.name)


register(Architecture("efficientnet-lite", "image", _match_efficientnet, _prepare_efficientnet,
                      description="EfficientNet-Lite0..4 (efficientnet_lite_pytorch layout)"))


def detect_vision_arch(source: WeightSource, *, input_name: str, preprocessor: dict | None = None) -> VisionArch:
    """Recognise the vision encoder in ``source``; ``preprocessor`` is an HF preprocessor_config.json if any."""
    try:
        return detect("image", source, input_name=input_name, what="an image encoder", preprocessor=preprocessor,
                      fix="use a CLIP / SigLIP / DINOv2 / ViT vision encoder (.safetensors or HF folder) from "
                          "models/clip_vision, or leave it empty for the embedded EfficientNet-Lite0.")
    except KeyError as err:
        raise LitError(f"'{source.path}' looks like an image encoder but lacks the weight {err}.",
                       input_name=input_name, fix="the file is incomplete or an unsupported variant.") from None
    except CONFIG_ERRORS as err:
        raise LitError(f"the config beside '{source.path}' does not fit this image encoder ({err}).",
                       input_name=input_name, fix="replace the config.json with the model's original one.") from None


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
    """EfficientNet-Lite's convolutional trunk with global average pooling (1280-d for Lite0), made lean for a
    locked tower: batch norms folded into their convolutions, symmetric "same" padding moved into the convolution,
    channels-last memory. The same embeddings (within 1e-4) in about half the CPU time of the library's module,
    which matters because every image a user trains, tags or searches on goes through it once."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = _lean_efficientnet(model).to(memory_format=torch.channels_last)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.model.extract_features(x).mean(dim=(2, 3))


def _lean_efficientnet(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm of an efficientnet_lite_pytorch model into the convolution before it, and
    replace the library's zero-pad module by the convolution's own padding where the pad is symmetric."""
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for block in model._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, norm_name in pairs:
        conv, norm = getattr(owner, conv_name), getattr(owner, norm_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                      norm.eps, norm.weight, norm.bias)
        setattr(owner, norm_name, nn.Identity())
    model.requires_grad_(False)
    for owner in [model, *model._blocks]:  # in place: a fresh 100 MB activation per call cost page faults
        if isinstance(owner._swish, nn.ReLU6):
            owner._swish = nn.ReLU6(inplace=True)
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding, module.static_padding = (top, left), nn.Identity()
    return model


def build_vision_backbone(arch: VisionArch, *, attn_implementation: str, input_name: str,
                          path: str) -> tuple[nn.Module, int]:
    """Instantiate and load the model; returns the backbone and its embedding dim."""
    if arch.kind == "efficientnet":
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name(arch.config)
        # The Lite models keep the ReLU6 the library builds them with: set_swish() would swap in the swish of the
        # full EfficientNets, which these weights never saw (the tower then calls the coffee cup a coil).
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
        cls = Dinov2WithRegistersModel if isinstance(config, Dinov2WithRegistersConfig) else Dinov2Model
        dim = config.hidden_size
    else:
        cls, dim = ViTModel, config.hidden_size
        kwargs["add_pooling_layer"] = False
    model = load_hf_model(cls, config, arch.state, attn_implementation=attn_implementation, input_name=input_name,
                          path=path, what=f"{arch.kind} image encoder", ignorable=arch.ignorable, **kwargs)
    return HFVisionBackbone(model, arch.kind), int(dim)
