"""Recognise a text encoder from its weights and build the matching transformers model.

Supported: BERT-family sentence encoders (BERT, MiniLM, and any ``AutoModel`` type when a ``config.json`` comes
with the weights), CLIP text (OpenAI ViT-L/14 ``clip_l`` and OpenCLIP bigG ``clip_g`` as ComfyUI users have
them, in HF layout or OpenCLIP's native layout) and SigLIP text. Without a config the architecture sizes are read
from tensor shapes; the head count, which shapes cannot show, comes from the released towers' widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers
from transformers import (
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    SiglipTextConfig,
    SiglipTextModel,
)

from ..common.errors import LitError
from .weights import KNOWN_HEADS, WeightSource, count_layers, guess_heads

# Buffers or training-only tensors that checkpoints carry and models don't need.
_IGNORABLE = ("position_ids", "logit_scale", "logit_bias", "pooler.", "cls.", "lm_head.")
_TEXT_HEADS = {**KNOWN_HEADS, 1280: 20}  # OpenCLIP bigG text tower: 1280 wide, 20 heads


@dataclass
class TextArch:
    """What a text encoder is, before the model is built."""

    arch: str  # "bert" | "clip" | "siglip"
    state: dict[str, torch.Tensor]  # keys in the transformers layout of the model class
    config: transformers.PretrainedConfig
    pooling: str  # "mean" | "eos" | "pooler"
    projection: bool = False  # CLIP text with text_projection

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)


def _openclip_text_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP's native text layout (``transformer.resblocks``) -> transformers' CLIPTextModel layout."""
    out: dict[str, torch.Tensor] = {}
    rename = {
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    for k, v in state.items():
        if k in rename:
            out[rename[k]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()  # OpenCLIP stores x @ P, nn.Linear stores P^T
        elif k.startswith("transformer.resblocks."):
            i, rest = k[len("transformer.resblocks."):].split(".", 1)
            base = f"text_model.encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                q, kk, vv = v.chunk(3, dim=0)
                out[base + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[base + f"self_attn.k_proj.{kind}"] = kk.contiguous()
                out[base + f"self_attn.v_proj.{kind}"] = vv.contiguous()
                continue
            rest = (rest.replace("attn.out_proj", "self_attn.out_proj").replace("ln_1", "layer_norm1")
                    .replace("ln_2", "layer_norm2").replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2"))
            out[base + rest] = v
    return out


def _select(state: dict[str, torch.Tensor], anchor: str, keep_top: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Keys under the prefix that ends in ``anchor`` (e.g. ``cond_stage_model.transformer.text_model.``)."""
    prefix = None
    for k in state:
        if anchor in k:
            prefix = k[: k.index(anchor)]
            break
    if prefix is None:
        return {}
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix + anchor)}
    for top in keep_top:
        if prefix + top in state:
            out[top] = state[prefix + top]
    return out


def detect_text_arch(source: WeightSource, *, input_name: str) -> TextArch:
    """Recognise the text encoder in ``source`` and prepare a config (head count etc.) for it."""
    try:
        return _detect_text_arch(source, input_name=input_name)
    except KeyError as err:
        raise LitError(f"'{source.path}' looks like a text encoder but lacks the weight {err}.",
                       input_name=input_name, fix="the file is incomplete or an unsupported variant.") from None


def _detect_text_arch(source: WeightSource, *, input_name: str) -> TextArch:
    state = source.state
    cfg = source.config or {}
    model_type = cfg.get("model_type", "")

    if any(k.endswith("transformer.resblocks.0.attn.in_proj_weight") for k in state) and any(
            k.endswith("token_embedding.weight") for k in state) and not any(k.startswith("visual.") for k in state
                                                                              if "token_embedding" in k):
        prefix = next(k for k in state if k.endswith("token_embedding.weight"))[: -len("token_embedding.weight")]
        state = _openclip_text_to_hf({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
                                      and not k[len(prefix):].startswith("visual.")})

    if "embeddings.token_embedding.weight" in state and "final_layer_norm.weight" in state:
        # transformers 5 saves bare SiglipTextModel/CLIP text towers without the `text_model.` prefix
        state = {(k if k == "text_projection.weight" else "text_model." + k): v for k, v in state.items()}

    if any("text_model.embeddings.token_embedding.weight" in k for k in state):
        sub = _select(state, "text_model.", keep_top=("text_projection.weight",))
        is_siglip = "text_model.head.weight" in sub or model_type.startswith("siglip")
        text_cfg = dict(cfg.get("text_config") or cfg) if cfg else {}
        if is_siglip:
            return TextArch("siglip", sub, _siglip_config(sub, text_cfg), pooling="pooler")
        projection = "text_projection.weight" in sub
        return TextArch("clip", sub, _clip_config(sub, text_cfg, cfg), pooling="eos", projection=projection)

    word = next((k for k in state if k.endswith("embeddings.word_embeddings.weight")), None)
    if word is not None:
        prefix = word[: -len("embeddings.word_embeddings.weight")]
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if cfg and model_type and model_type != "bert":
            config = transformers.AutoConfig.for_model(**cfg)
        else:
            config = _bert_config(sub, cfg)
        return TextArch("bert", sub, config, pooling="mean")

    sample = ", ".join(sorted(state)[:4])
    raise LitError(f"'{source.path}' is not a text encoder this pack recognises (first keys: {sample}).",
                   input_name=input_name,
                   fix="use a BERT/MiniLM sentence encoder, a CLIP text encoder (clip_l, clip_g) or a SigLIP text "
                       "encoder in .safetensors, or an HF folder with config.json.")


def _bert_config(sub: dict[str, torch.Tensor], cfg: dict) -> BertConfig:
    if cfg:
        return BertConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    vocab, hidden = sub["embeddings.word_embeddings.weight"].shape
    return BertConfig(
        vocab_size=vocab, hidden_size=hidden,
        num_hidden_layers=count_layers(sub, "encoder.layer."),
        num_attention_heads=guess_heads(hidden),
        intermediate_size=sub["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sub["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sub["embeddings.token_type_embeddings.weight"].shape[0]
        if "embeddings.token_type_embeddings.weight" in sub else 2,
    )


def _clip_config(sub: dict[str, torch.Tensor], text_cfg: dict, top_cfg: dict) -> CLIPTextConfig:
    if text_cfg and "hidden_size" in text_cfg:
        config = CLIPTextConfig(**{k: v for k, v in text_cfg.items() if k not in ("architectures",)})
        if "text_projection.weight" in sub:
            config.projection_dim = sub["text_projection.weight"].shape[0]
        return config
    vocab, hidden = sub["text_model.embeddings.token_embedding.weight"].shape
    return CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        num_hidden_layers=count_layers(sub, "text_model.encoder.layers."),
        num_attention_heads=guess_heads(hidden, _TEXT_HEADS),
        intermediate_size=sub["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sub["text_model.embeddings.position_embedding.weight"].shape[0],
        projection_dim=sub["text_projection.weight"].shape[0] if "text_projection.weight" in sub else hidden,
        # OpenAI's towers (512/768 wide) use quick_gelu; OpenCLIP's larger LAION towers use gelu.
        hidden_act="quick_gelu" if hidden <= 768 else "gelu",
        layer_norm_eps=1e-5,
    )


def _siglip_config(sub: dict[str, torch.Tensor], text_cfg: dict) -> SiglipTextConfig:
    if text_cfg and "hidden_size" in text_cfg:
        return SiglipTextConfig(**{k: v for k, v in text_cfg.items() if k not in ("architectures",)})
    vocab, hidden = sub["text_model.embeddings.token_embedding.weight"].shape
    return SiglipTextConfig(
        vocab_size=vocab, hidden_size=hidden,
        num_hidden_layers=count_layers(sub, "text_model.encoder.layers."),
        num_attention_heads=guess_heads(hidden),
        intermediate_size=sub["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        max_position_embeddings=sub["text_model.embeddings.position_embedding.weight"].shape[0],
        projection_size=sub["text_model.head.weight"].shape[0],
        hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
    )


def build_text_model(arch: TextArch, *, attn_implementation: str, input_name: str, path: str) -> torch.nn.Module:
    """Instantiate the transformers model for ``arch`` and load its weights."""
    config = arch.config
    if arch.arch == "clip":
        cls = CLIPTextModelWithProjection if arch.projection else CLIPTextModel
    elif arch.arch == "siglip":
        cls = SiglipTextModel
    elif isinstance(config, BertConfig) and config.model_type == "bert":
        return load_hf_model(BertModel, config, arch.state, attn_implementation=attn_implementation,
                             input_name=input_name, path=path, what="BERT text encoder", add_pooling_layer=False)
    else:
        cls = transformers.AutoModel._model_mapping[type(config)]
    return load_hf_model(cls, config, arch.state, attn_implementation=attn_implementation, input_name=input_name,
                         path=path, what=f"{arch.arch} text encoder")


def load_hf_model(cls, config, state: dict[str, torch.Tensor], *, attn_implementation: str, input_name: str,
                  path: str, what: str, **kwargs) -> torch.nn.Module:
    """``from_pretrained`` on in-memory weights (so transformers applies its own checkpoint-key conversions),
    refusing what it would only warn about: missing weights would be left randomly initialised."""
    verbosity = transformers.logging.get_verbosity()
    # We check the loading report ourselves (below); transformers' own printout of it is only noise.
    transformers.logging.set_verbosity_error()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True,
                                          attn_implementation=attn_implementation, **kwargs)
    except (RuntimeError, ValueError) as err:
        raise LitError(f"'{path}' does not fit a {what}: {str(err).splitlines()[0][:300]}", input_name=input_name,
                       fix="the config beside the file does not match the weights, or the file is another "
                           "model; remove the config.json or pick another file.") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if not any(s in k for s in _IGNORABLE)]
    mismatched = info.get("mismatched_keys", [])
    if missing or mismatched:
        example = missing[0] if missing else mismatched[0]
        raise LitError(f"'{path}' is missing {len(missing) + len(mismatched)} weights of a {what} (e.g. {example}).",
                       input_name=input_name, fix="the file is incomplete or a different model; download it again.")
    return model.eval()


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, input_name: str, path: str,
                       what: str) -> None:
    """``load_state_dict`` for plain (non-transformers) modules, explaining a mismatch in words."""
    own = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise LitError(f"'{path}': {len(wrong)} weights have the wrong shape for a {what} (e.g. {k}: file {got}, "
                       f"model {want}).", input_name=input_name, fix="pick the file that matches this architecture.")
    result = model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    missing = [k for k in result.missing_keys if not any(s in k for s in _IGNORABLE)]
    if missing:
        raise LitError(f"'{path}' is missing {len(missing)} weights of a {what} (e.g. {missing[0]}).",
                       input_name=input_name, fix="the file is incomplete or a different model; download it again.")
