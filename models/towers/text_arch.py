"""Text encoder layouts: recognise one from its weights, map its keys, build the transformers model, load strictly.

Registered layouts (see ``registry.py``): OpenCLIP's native text tower (``transformer.resblocks``, LayerScale folded
into the projections), transformers' CLIP and SigLIP text towers (also as ComfyUI's ``clip_l``/``clip_g`` files,
also the text half of a full CLIP/SigLIP file), BERT-family sentence encoders (BERT, MiniLM; any ``AutoModel``
encoder type such as XLM-R when a ``config.json`` comes with the weights) and T5 encoders. Without a config the
sizes are read from tensor shapes; the head count and activation, which shapes cannot show, come from the
released towers' widths (or an OpenCLIP ``open_clip_config.json`` beside the file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    T5Config,
)

from ..common.errors import LitError
from .registry import (
    BUFFERS,
    CONFIG_ERRORS,
    Architecture,
    check_finite_state,
    check_used,
    detect,
    is_ignorable,
    refuse_mismatch,
    take_renamed,
)
from .registry import register as _register
from .weights import KNOWN_HEADS, WeightSource, count_layers, guess_heads

_TEXT_HEADS = {**KNOWN_HEADS, 1280: 20}  # OpenCLIP bigG text tower: 1280 wide, 20 heads
_NOT_CONFIG = ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype")


@dataclass
class TextArch:
    """What a text encoder is, before the model is built."""

    arch: str  # "bert" | "clip" | "siglip" | "t5"
    state: dict[str, torch.Tensor]  # keys in the transformers layout of the model class
    config: transformers.PretrainedConfig
    pooling: str  # "mean" | "eos" | "pooler"
    projection: bool = False  # CLIP text with text_projection
    ignorable: tuple[str, ...] = ()  # what the model may leave unused (see registry.Architecture.ignorable)
    ignored: list[str] = field(default_factory=list)  # file tensors knowingly unused
    layout: str = ""  # the registry entry's name

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)


# --- OpenCLIP's residual blocks (shared with the vision side) ---------------------------------------------------

_BLOCK_RENAME = {f"{a}.{kind}": f"{b}.{kind}" for kind in ("weight", "bias") for a, b in (
    ("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
    ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))}
# LayerScale multiplies a branch's output: gamma * (W a + b) == (diag(gamma) W) a + gamma * b, so folding gamma into
# the branch's last projection gives the same block in a model without LayerScale.
_LAYER_SCALE = {"ls_1.gamma": "attn.out_proj", "ls_2.gamma": "mlp.c_proj"}


def openclip_blocks_to_hf(state: Mapping[str, torch.Tensor], dst: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """``transformer.resblocks.N.*`` -> transformers' ``{dst}N.*``; returns the mapped tensors and the keys used.

    Only the tensor names of a plain pre-norm block (optionally with LayerScale) are taken: anything else (extra
    norms, other attention kinds) stays unused and is refused by the caller.
    """
    src = "transformer.resblocks."
    gammas = {}
    used: set[str] = set()
    for k, v in state.items():
        if k.startswith(src):
            i, rest = k[len(src):].split(".", 1)
            if rest in _LAYER_SCALE and v.dim() == 1:
                gammas[(i, _LAYER_SCALE[rest])] = v
                used.add(k)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if not k.startswith(src):
            continue
        i, rest = k[len(src):].split(".", 1)
        base = f"{dst}{i}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = "weight" if rest.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0), strict=True):
                out[base + f"self_attn.{name}.{kind}"] = part.contiguous()
        elif rest in _BLOCK_RENAME:
            gamma = gammas.get((i, rest.rsplit(".", 1)[0]))
            if gamma is not None:
                v = (v * gamma.to(v.dtype)[:, None]) if v.dim() == 2 else v * gamma.to(v.dtype)
            out[base + _BLOCK_RENAME[rest]] = v
        else:
            continue
        used.add(k)
    return out, used


def _prefix_of(state: Mapping[str, torch.Tensor], suffix: str) -> str | None:
    key = next((k for k in state if k.endswith(suffix)), None)
    return None if key is None else key[: -len(suffix)]


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _clean(cfg: Mapping) -> dict:
    return {k: v for k, v in cfg.items() if k not in _NOT_CONFIG}


def _finish(source: WeightSource, arch: Architecture, kind: str, tower: dict[str, torch.Tensor],
            sub: dict[str, torch.Tensor], used: set[str], config, *, input_name: str, pooling: str,
            projection: bool = False) -> TextArch:
    # Buffers (position_ids, ...) are rebuilt by the model: report them as ignored, never pass them on.
    sub = {k: v for k, v in sub.items() if not is_ignorable(k, ())}
    used = {k for k in used if not is_ignorable(k, ())}
    ignored = check_used(source.path, tower, used, arch.ignorable, what=f"{kind} text encoder", input_name=input_name)
    check_finite_state(sub, path=source.path, input_name=input_name)
    return TextArch(kind, sub, config, pooling=pooling, projection=projection, ignorable=arch.ignorable,
                    ignored=ignored, layout=arch.name)


# --- OpenCLIP native text tower -----------------------------------------------------------------------------------

def _match_openclip_text(state) -> bool:
    prefix = _prefix_of(state, "token_embedding.weight")
    return prefix is not None and not prefix.endswith("embeddings.") and \
        prefix + "transformer.resblocks.0.attn.in_proj_weight" in state


def _prepare_openclip_text(source: WeightSource, *, input_name: str, arch: Architecture) -> TextArch:
    prefix = _prefix_of(source.state, "token_embedding.weight")
    tower = _under(source.state, prefix)
    sub, used = openclip_blocks_to_hf(tower, "text_model.encoder.layers.")
    top = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
           "positional_embedding": "text_model.embeddings.position_embedding.weight",
           "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias"}
    take_renamed(tower, sub, used, top, projection=("text_projection", "text_projection.weight"))
    oc = (source.openclip_config or {}).get("model_cfg") or {}
    text_cfg = oc.get("text_cfg") or {}
    overrides = {}
    if text_cfg:  # OpenCLIP's own config says what shapes cannot: heads and the activation
        overrides = {"hidden_act": "quick_gelu" if oc.get("quick_gelu") else "gelu"}
        if "heads" in text_cfg:
            overrides["num_attention_heads"] = int(text_cfg["heads"])
    config = _clip_config(sub, {}, {}, overrides)
    return _finish(source, arch, "clip", tower, sub, used, config, input_name=input_name, pooling="eos",
                   projection="text_projection.weight" in sub)


_register(Architecture(
    "openclip-text", "text", _match_openclip_text, _prepare_openclip_text,
    ignorable=(r"^visual\.", r"^logit_scale$", r"^logit_bias$"),
    description="OpenCLIP native text tower (token_embedding, transformer.resblocks, ln_final, text_projection)"))


# --- transformers CLIP / SigLIP text (also ComfyUI's clip_l / clip_g files) --------------------------------------

def _hf_text_tower(state) -> tuple[str, dict[str, torch.Tensor]] | None:
    prefix = _prefix_of(state, "text_model.embeddings.token_embedding.weight")
    if prefix is not None:
        return prefix, _under(state, prefix)
    if "embeddings.token_embedding.weight" in state and "final_layer_norm.weight" in state:
        # transformers 5 saves a bare CLIP/SigLIP text model without the `text_model.` prefix
        return "", {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in state.items()}
    return None


def _match_hf_siglip_text(state) -> bool:
    found = _hf_text_tower(state)
    return found is not None and "text_model.head.weight" in found[1]


def _match_hf_clip_text(state) -> bool:
    return _hf_text_tower(state) is not None


def _prepare_hf_text(source: WeightSource, *, input_name: str, arch: Architecture) -> TextArch:
    _, tower = _hf_text_tower(source.state)
    sub = {k: v for k, v in tower.items() if k.startswith("text_model.") or k == "text_projection.weight"}
    if "text_projection" in tower and "text_projection.weight" not in tower and tower["text_projection"].dim() == 2:
        sub["text_projection.weight"] = tower["text_projection"].t().contiguous()  # ComfyUI's old CLIPSave layout
    used = set(sub) | ({"text_projection"} if "text_projection" in tower else set())
    cfg = source.config or {}
    text_cfg = _clean(cfg.get("text_config") or cfg) if cfg else {}
    if arch.name == "hf-siglip-text":
        return _finish(source, arch, "siglip", tower, sub, used, _siglip_config(sub, text_cfg),
                       input_name=input_name, pooling="pooler")
    return _finish(source, arch, "clip", tower, sub, used, _clip_config(sub, text_cfg, cfg), input_name=input_name,
                   pooling="eos", projection="text_projection.weight" in sub)


_OTHER_VISION = (r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$", r"^logit_bias$")
_register(Architecture(
    "hf-siglip-text", "text", _match_hf_siglip_text, _prepare_hf_text, model_types=("siglip", "siglip_text_model"),
    ignorable=_OTHER_VISION, description="transformers SiglipTextModel (text_model.*, head)"))
_register(Architecture(
    "hf-clip-text", "text", _match_hf_clip_text, _prepare_hf_text, model_types=("clip", "clip_text_model"),
    ignorable=_OTHER_VISION,
    description="transformers CLIPTextModel(WithProjection); ComfyUI's clip_l / clip_g files (text_model.*)"))


# --- T5 encoder ----------------------------------------------------------------------------------------------------

_T5_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"


def _match_t5(state) -> bool:
    return _prefix_of(state, _T5_ANCHOR) is not None


def _prepare_t5(source: WeightSource, *, input_name: str, arch: Architecture) -> TextArch:
    prefix = _prefix_of(source.state, _T5_ANCHOR)
    tower = _under(source.state, prefix)
    sub = {k: v for k, v in tower.items() if k.startswith("encoder.") or k == "shared.weight"}
    if "shared.weight" not in sub and "encoder.embed_tokens.weight" in sub:
        sub["shared.weight"] = sub["encoder.embed_tokens.weight"]
    sub.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight in the model
    used = set(sub) | ({"encoder.embed_tokens.weight"} if "encoder.embed_tokens.weight" in tower else set())
    cfg = _clean(source.config or {})
    if cfg:
        config = T5Config(**cfg)
    else:
        heads = sub["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
        gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sub
        wi = sub["encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")]
        config = T5Config(vocab_size=sub["shared.weight"].shape[0], d_model=sub["shared.weight"].shape[1],
                          d_kv=sub[_T5_ANCHOR].shape[0] // heads, d_ff=wi.shape[0], num_heads=heads,
                          num_layers=count_layers(sub, "encoder.block."),
                          relative_attention_num_buckets=sub[
                              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[0],
                          feed_forward_proj="gated-gelu" if gated else "relu")
    return _finish(source, arch, "t5", tower, sub, used, config, input_name=input_name, pooling="mean")


_register(Architecture(
    "t5-encoder", "text", _match_t5, _prepare_t5, model_types=("t5", "mt5", "umt5"),
    ignorable=(r"^decoder\.", r"^lm_head\."), description="T5 / mT5 encoder (shared, encoder.block.*)"))


# --- BERT-family sentence encoders (and any AutoModel encoder with a config.json) ---------------------------------

def _match_bert(state) -> bool:
    return _prefix_of(state, "embeddings.word_embeddings.weight") is not None


def _prepare_bert(source: WeightSource, *, input_name: str, arch: Architecture) -> TextArch:
    prefix = _prefix_of(source.state, "embeddings.word_embeddings.weight")
    tower = _under(source.state, prefix)
    cfg = source.config or {}
    model_type = cfg.get("model_type", "")
    if cfg and model_type and model_type != "bert":
        try:
            config = transformers.AutoConfig.for_model(**_clean(cfg))
        except (*CONFIG_ERRORS, KeyError) as err:
            raise LitError(f"the config.json beside '{source.path}' is not a valid {model_type} config ({err}).",
                           input_name=input_name, fix="replace it with the model's original config.json.") from None
    else:
        config = _bert_config(tower, _clean(cfg))
    return _finish(source, arch, "bert", tower, tower, set(tower), config, input_name=input_name, pooling="mean")


_register(Architecture(
    "bert-family", "text", _match_bert, _prepare_bert, model_types=("*",),
    ignorable=(r"^pooler\.", r"^cls\.", r"^lm_head\."),
    description="BERT / MiniLM (also XLM-R and other AutoModel encoders with their config.json)"))


def detect_text_arch(source: WeightSource, *, input_name: str) -> TextArch:
    """Recognise the text encoder in ``source`` and prepare a config (head count etc.) for it."""
    try:
        return detect("text", source, input_name=input_name, what="a text encoder",
                      fix="use a BERT/MiniLM sentence encoder, a CLIP text encoder (clip_l, clip_g), a SigLIP or T5 "
                          "text encoder in .safetensors, or an HF folder with config.json.")
    except KeyError as err:
        raise LitError(f"'{source.path}' looks like a text encoder but lacks the weight {err}.",
                       input_name=input_name, fix="the file is incomplete or an unsupported variant.") from None
    except CONFIG_ERRORS as err:
        raise LitError(f"the config beside '{source.path}' does not fit this text encoder ({err}).",
                       input_name=input_name, fix="replace the config.json with the model's original one.") from None


def _bert_config(sub: dict[str, torch.Tensor], cfg: dict) -> BertConfig:
    if cfg:
        return BertConfig(**cfg)
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


def _clip_config(sub: dict[str, torch.Tensor], text_cfg: dict, top_cfg: dict,
                 overrides: dict | None = None) -> CLIPTextConfig:
    if text_cfg and "hidden_size" in text_cfg:
        config = CLIPTextConfig(**text_cfg)
        if "text_projection.weight" in sub:
            config.projection_dim = sub["text_projection.weight"].shape[0]
        return config
    vocab, hidden = sub["text_model.embeddings.token_embedding.weight"].shape
    return CLIPTextConfig(**{
        "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": count_layers(sub, "text_model.encoder.layers."),
        "num_attention_heads": guess_heads(hidden, _TEXT_HEADS),
        "intermediate_size": sub["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        "max_position_embeddings": sub["text_model.embeddings.position_embedding.weight"].shape[0],
        "projection_dim": sub["text_projection.weight"].shape[0] if "text_projection.weight" in sub else hidden,
        # OpenAI's towers (512/768 wide) use quick_gelu; OpenCLIP's larger LAION towers use gelu.
        "hidden_act": "quick_gelu" if hidden <= 768 else "gelu",
        "layer_norm_eps": 1e-5, **(overrides or {})})


def _siglip_config(sub: dict[str, torch.Tensor], text_cfg: dict) -> SiglipTextConfig:
    if text_cfg and "hidden_size" in text_cfg:
        return SiglipTextConfig(**text_cfg)
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
    kwargs = {}
    if arch.arch == "clip":
        cls = CLIPTextModelWithProjection if arch.projection else CLIPTextModel
    elif arch.arch == "siglip":
        cls = SiglipTextModel
    elif arch.arch == "t5":
        cls = transformers.T5EncoderModel
    elif isinstance(config, BertConfig) and config.model_type == "bert":
        cls, kwargs = BertModel, {"add_pooling_layer": False}
    else:
        cls = transformers.AutoModel._model_mapping[type(config)]
    return load_hf_model(cls, config, arch.state, attn_implementation=attn_implementation, input_name=input_name,
                         path=path, what=f"{arch.arch} text encoder", ignorable=arch.ignorable, **kwargs)


def load_hf_model(cls, config, state: dict[str, torch.Tensor], *, attn_implementation: str, input_name: str,
                  path: str, what: str, ignorable: tuple[str, ...] = (), **kwargs) -> torch.nn.Module:
    """``from_pretrained`` on in-memory weights (so transformers applies its own checkpoint-key conversions),
    refusing what it would only warn about: unused tensors (a dropped tensor changes the outputs), missing weights
    (left randomly initialised) and wrong shapes."""
    verbosity = transformers.logging.get_verbosity()
    # We check the loading report ourselves (below); transformers' own printout of it is only noise.
    transformers.logging.set_verbosity_error()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=state, output_loading_info=True,
                                          attn_implementation=attn_implementation, **kwargs)
    except (RuntimeError, ValueError, TypeError) as err:
        raise LitError(f"'{path}' does not fit a {what}: {str(err).splitlines()[0][:300]}", input_name=input_name,
                       fix="the config beside the file does not match the weights, or the file is another "
                           "model; remove the config.json or pick another file.") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    unexpected = [k for k in info.get("unexpected_keys", []) if not is_ignorable(k, ignorable)]
    # A model may hold parameters no file carries because inference never reads them (the pooler of an encoder
    # we mean-pool); everything else the model has must come from the file.
    missing = [k for k in info.get("missing_keys", []) if not is_ignorable(k, (*BUFFERS, r"^pooler\."))]
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys", [])]
    refuse_mismatch(path, unexpected=unexpected, missing=missing + mismatched, what=what, input_name=input_name)
    return model.eval()


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, input_name: str, path: str,
                       what: str) -> None:
    """Strict ``load_state_dict`` for plain (non-transformers) modules, explaining a mismatch in words."""
    own = model.state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise LitError(f"'{path}': {len(wrong)} weights have the wrong shape for a {what} (e.g. {k}: file {got}, "
                       f"model {want}).", input_name=input_name, fix="pick the file that matches this architecture.")
    unexpected = [k for k in state if k not in own and not is_ignorable(k, ())]
    missing = [k for k in own if k not in state and not is_ignorable(k, ())]
    refuse_mismatch(path, unexpected=unexpected, missing=missing, what=what, input_name=input_name)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
