"""Tiny towers built from transformers configs, saved the way users have them, for loader round-trip tests."""

from __future__ import annotations

import json
import os
import string

import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizerFast,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    Dinov2Config,
    Dinov2Model,
    SiglipTextConfig,
    SiglipTextModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from comfyui_lit.models.towers.text_tower import _from_vocab_files

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "green", "circle", "square", "bright", "dark", "the", "on"]
HIDDEN, HEADS = 128, 2  # 64-wide heads, as the loader assumes for widths it doesn't know


def checkpoint_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights with the key names checkpoint files use (transformers 5 renames some modules internally)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return dict(model.state_dict())
    return dict(revert_weight_conversion(model, model.state_dict()))


def save_state(state: dict[str, torch.Tensor] | torch.nn.Module, path: str) -> str:
    if isinstance(state, torch.nn.Module):
        state = checkpoint_state(state)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, path)
    return path


def write_bert_vocab(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *string.ascii_lowercase]
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(vocab) + "\n")
    return folder


def bert_tokenizer(folder: str) -> BertTokenizerFast:
    write_bert_vocab(folder)
    tok = _from_vocab_files(BertTokenizerFast, vocab=os.path.join(folder, "vocab.txt"))
    tok.save_pretrained(folder)
    return tok


def write_clip_bpe(folder: str) -> str:
    """A minimal CLIP BPE tokenizer: single characters (with and without the word-end mark) and a few merges."""
    os.makedirs(folder, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'")
    vocab = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("c", "a"), ("ca", "t</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w") as fh:
        json.dump(vocab, fh)
    with open(os.path.join(folder, "merges.txt"), "w") as fh:
        fh.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = _from_vocab_files(CLIPTokenizerFast, vocab=os.path.join(folder, "vocab.json"),
                            merges=os.path.join(folder, "merges.txt"))
    tok.save_pretrained(folder)
    return folder


def tiny_bert(vocab_size: int = 64) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                     intermediate_size=256, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


def tiny_clip_text(vocab_size: int, *, hidden: int = HIDDEN, heads: int = HEADS, act: str = "quick_gelu",
                   eos: int = 1) -> CLIPTextModelWithProjection:
    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                         intermediate_size=256, max_position_embeddings=32, projection_dim=96, hidden_act=act,
                         eos_token_id=eos, bos_token_id=eos - 1)
    return CLIPTextModelWithProjection(cfg).eval()


def tiny_siglip_text(vocab_size: int) -> SiglipTextModel:
    torch.manual_seed(2)
    cfg = SiglipTextConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                           intermediate_size=256, max_position_embeddings=16, projection_size=HIDDEN)
    return SiglipTextModel(cfg).eval()


def tiny_clip_vision() -> CLIPVisionModelWithProjection:
    torch.manual_seed(3)
    cfg = CLIPVisionConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=256,
                           image_size=32, patch_size=8, projection_dim=64, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(cfg).eval()


def tiny_siglip_vision() -> SiglipVisionModel:
    torch.manual_seed(4)
    cfg = SiglipVisionConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                             intermediate_size=256, image_size=32, patch_size=8)
    return SiglipVisionModel(cfg).eval()


def tiny_dinov2() -> Dinov2Model:
    torch.manual_seed(5)
    cfg = Dinov2Config(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, image_size=32,
                       patch_size=8, mlp_ratio=2, layer_norm_eps=1e-6)
    return Dinov2Model(cfg).eval()


def tiny_vit() -> ViTModel:
    torch.manual_seed(6)
    cfg = ViTConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=256,
                    image_size=32, patch_size=8)
    return ViTModel(cfg, add_pooling_layer=False).eval()


def hf_to_openclip_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of the loader's conversion, to produce OpenCLIP-native files for tests."""
    out = {"token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": state["text_model.final_layer_norm.weight"],
           "ln_final.bias": state["text_model.final_layer_norm.bias"],
           "text_projection": state["text_projection.weight"].t().contiguous()}
    i = 0
    while f"text_model.encoder.layers.{i}.layer_norm1.weight" in state:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{p}_proj.{kind}"]
                                                           for p in ("q", "k", "v")])
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
        i += 1
    return out


def hf_to_openclip_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIPVisionModelWithProjection layout -> OpenCLIP ``visual.*`` layout."""
    p = "vision_model."
    out = {"visual.class_embedding": state[p + "embeddings.class_embedding"],
           "visual.conv1.weight": state[p + "embeddings.patch_embedding.weight"],
           "visual.positional_embedding": state[p + "embeddings.position_embedding.weight"],
           "visual.ln_pre.weight": state[p + "pre_layrnorm.weight"],
           "visual.ln_pre.bias": state[p + "pre_layrnorm.bias"],
           "visual.ln_post.weight": state[p + "post_layernorm.weight"],
           "visual.ln_post.bias": state[p + "post_layernorm.bias"],
           "visual.proj": state["visual_projection.weight"].t().contiguous()}
    i = 0
    while f"{p}encoder.layers.{i}.layer_norm1.weight" in state:
        src, dst = f"{p}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{q}_proj.{kind}"]
                                                           for q in ("q", "k", "v")])
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
        i += 1
    return out


# --- ComfyUI's layouts ---------------------------------------------------------------------------------------------
# ComfyUI's clip_vision files and its CLIP_VISION object use transformers' key names (comfy/clip_model.py mirrors
# them) under `vision_model.` / `visual_projection.`, with these differences: no `position_ids` buffers, and its
# SigLIP vision model (comfy/clip_vision_siglip_384.json, model_type siglip_vision_model) has no pre-norm and no
# attention-pool head, so `get_sd()` holds no `vision_model.head.*`. Its text files (clip_l, clip_g) hold
# `text_model.*` plus `text_projection.weight`. Values below are from comfy/clip_vision_config_h.json, _g.json,
# clip_vision_siglip_384.json, sd1_clip_config.json and clip_config_bigg.json (ComfyUI source, read, not copied).
COMFY_VISION = {
    "clip_vision_h": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, patch_size=14,
                          projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5),
    "clip_vision_g": dict(hidden_size=1664, intermediate_size=8192, num_attention_heads=16, patch_size=14,
                          projection_dim=1280, hidden_act="gelu", layer_norm_eps=1e-5),
    "sigclip_vision_patch14_384": dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16,
                                       patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
}
COMFY_TEXT = {
    "clip_l": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, hidden_act="quick_gelu",
                   max_position_embeddings=77, projection_dim=768, layer_norm_eps=1e-5),
    "clip_g": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, hidden_act="gelu",
                   max_position_embeddings=77, projection_dim=1280, layer_norm_eps=1e-5),
}


def comfy_vision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's names: everything under `vision_model.` except `visual_projection.weight` (transformers 5 saves a
    bare SiglipVisionModel without the prefix; ComfyUI's files and models always have it)."""
    return {(k if k.startswith(("vision_model.", "visual_projection.")) else "vision_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def comfy_vision_keys(state: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """The state dict ComfyUI's CLIPVisionModelProjection holds for these weights (what get_sd() returns)."""
    out = comfy_vision_names(state)
    if model_type == "siglip_vision_model":
        out = {k: v for k, v in out.items() if not k.startswith("vision_model.head.")}
    return out


class FakeComfyClipVision:
    """What ComfyUI's 'Load CLIP Vision' returns, as far as we use it: ``get_sd()`` in ComfyUI's key layout (see
    ``comfy_vision_keys``), inference-mode tensors in the loading dtype, and the preprocessing constants."""

    def __init__(self, state: dict[str, torch.Tensor], *, image_size: int, model_type: str = "clip_vision_model",
                 dtype: torch.dtype = torch.float16, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711)):
        with torch.inference_mode():
            self._sd = {k: v.detach().to(dtype).clone() for k, v in comfy_vision_keys(state, model_type).items()}
        self.image_size = image_size
        self.image_mean = list(mean)
        self.image_std = list(std)

    def get_sd(self):
        return self._sd


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Move every weight off its initial value (norms at exactly 1/0, LayerScale at its init value would hide a
    misread or dropped tensor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def photo_batch(size: int = 224) -> torch.Tensor:
    """Four real photos from scikit-image, centre-cropped square and resized: ``[4, size, size, 3]`` in 0..1."""
    import numpy as np
    import torch.nn.functional as F
    from skimage import data

    imgs = []
    for img in (data.chelsea(), data.astronaut(), data.coffee(), data.rocket()):
        h, w = img.shape[:2]
        s = min(h, w)
        crop = np.ascontiguousarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3])
        t = torch.from_numpy(crop).float().div(255).movedim(-1, 0)[None]
        imgs.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(imgs).movedim(1, -1).clamp(0, 1)


def openclip_ids(ids: torch.Tensor, context_length: int, pad_id: int) -> torch.Tensor:
    """Token ids padded to OpenCLIP's fixed context (its text tower adds the whole positional table)."""
    out = torch.full((ids.shape[0], context_length), pad_id, dtype=ids.dtype)
    out[:, :ids.shape[1]] = ids
    return out
