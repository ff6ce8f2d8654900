"""A transformers encoder-decoder with its tokenizer and special-token ids: what every seq2seq part shares.

The FiD reader (`distillir.readers.fid`) and the generative retriever (`distillir.retrievers.generative`)
both run a seq2seq model this way: encode once, then teacher-forced decoder passes over precomputed encoder
states (for losses and log-likelihoods) or `generate`. `Seq2SeqLM` holds the model, the tokenizer and the
three token ids a decoder needs (decoder start, EOS, PAD), resolved once from the arguments, the model's
generation config, its config and the tokenizer, and saves them beside the model.

Models come from a hub id or path (T5, BART, a saved `EncoderDecoderModel`), from a BERT-like encoder
warm-started as encoder and decoder (`warm_started_encoder_decoder`), or from a config (`t5_from_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from distillir.errors import ConfigError
from distillir.models import is_model_dir, write_model_manifest
from distillir.utils.io import atomic_dir, write_json
from distillir.utils.log import get_logger, transformers_quiet

# Written beside every saved seq2seq model. The name predates this module: saved readers carry it.
SETTINGS_FILE = "fid_reader.json"
IGNORE_INDEX = -100  # label value the loss skips (answer padding)
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
TOKEN_SETTINGS = ("decoder_start_token_id", "eos_token_id", "pad_token_id")

logger = get_logger(__name__)


def token_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(label token) with 0 at ignored (-100) positions."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    safe = labels.clamp(min=0)
    picked = log_probs.gather(-1, safe[..., None]).squeeze(-1)
    return picked.masked_fill(labels == IGNORE_INDEX, 0.0)


def load_seq2seq(name_or_path: str | Path, *, eager: bool = False):
    """(model, tokenizer, saved settings) of a saved distillir seq2seq part, or of any seq2seq model by hub id or
    path; `eager` loads it with attn_implementation="eager" (attention weights returned)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

    name_or_path = str(name_or_path)
    settings_file = Path(name_or_path) / SETTINGS_FILE
    saved = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    saved.pop("format_version", None)
    config = AutoConfig.from_pretrained(name_or_path)
    model_class = EncoderDecoderModel if config.model_type == "encoder-decoder" else AutoModelForSeq2SeqLM
    model = model_class.from_pretrained(name_or_path)
    if eager:
        model.set_attn_implementation("eager")
    return model, AutoTokenizer.from_pretrained(name_or_path), saved


def warm_started_encoder_decoder(path: str | Path, tokenizer=None, model_kwargs: dict | None = None):
    """(model, tokenizer, token ids): an `EncoderDecoderModel` with a BERT-like encoder as both encoder and decoder.

    The decoder's cross-attention is new (random), so the model must be trained. Start token = the tokenizer's
    CLS (or BOS), EOS = SEP (or EOS). `model_kwargs` go to `from_encoder_decoder_pretrained` (e.g.
    {"encoder_num_hidden_layers": 2, "decoder_num_hidden_layers": 2}).
    """
    from transformers import AutoTokenizer, EncoderDecoderModel

    path = str(path)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    # transformers reports every new cross-attention weight and every unused encoder layer as a "load report";
    # both are expected in a warm start, so one line says it instead.
    with transformers_quiet():
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, **(model_kwargs or {}))
    logger.info("reader warm-started from %s: decoder cross-attention and LM head are newly initialised", path)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or eos is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"the tokenizer at {path} lacks a CLS/BOS, SEP/EOS or PAD token for the decoder")
    ids = {"decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id}
    for name, value in ids.items():
        setattr(model.config, name, value)
        setattr(model.generation_config, name, value)
    return model, tokenizer, ids


def t5_from_config(tokenizer, config=None, *, eager: bool = False, **config_overrides):
    """(model, tokenizer): a randomly initialised seq2seq model, `config` (any seq2seq config) or by default a
    T5Config sized to `tokenizer` (path, hub id or tokenizer object) with its PAD as decoder start (T5's
    convention) and its EOS/SEP as EOS. `config_overrides` set config fields (d_model=32, ...)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config

    if isinstance(tokenizer, (str, Path)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    if config is None:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        base = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "eos_token_id": eos,
                "decoder_start_token_id": tokenizer.pad_token_id}
        config = T5Config(**{**base, **config_overrides})
    else:
        for name, value in config_overrides.items():
            setattr(config, name, value)
    model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager" if eager else "sdpa")
    return model, tokenizer


class Seq2SeqLM(nn.Module):
    """A transformers encoder-decoder, its tokenizer and its decoder token ids."""

    def __init__(self, model: nn.Module, tokenizer, *, decoder_start_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None):
        super().__init__()
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"{type(model).__name__} is not an encoder-decoder model; a seq2seq part needs one")
        self.model = model
        self.tokenizer = tokenizer
        self.pad_token_id = self._token_id(pad_token_id, "pad_token_id", tokenizer.pad_token_id)
        self.eos_token_id = self._token_id(
            eos_token_id, "eos_token_id",
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        )
        t5_start = self.pad_token_id if getattr(model.config, "model_type", "") in T5_FAMILY else None
        self.decoder_start_token_id = self._token_id(decoder_start_token_id, "decoder_start_token_id", t5_start)

    def _token_id(self, given: int | None, name: str, fallback: int | None) -> int:
        candidates = [
            given,
            getattr(self.model.generation_config, name, None) if hasattr(self.model, "generation_config") else None,
        ]
        candidates += [getattr(self.model.config, name, None), fallback]
        for value in candidates:
            if isinstance(value, list):  # generation configs may list several EOS ids
                value = value[0] if value else None
            if value is not None:
                return int(value)
        raise ConfigError(f"cannot tell the model's {name}; pass {name}=...")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> Seq2SeqLM:
        """A saved seq2seq part (its token ids restored; other saved settings ignored) or any seq2seq model."""
        model, tokenizer, saved = load_seq2seq(name_or_path)
        return cls(model, tokenizer, **{k: saved[k] for k in TOKEN_SETTINGS if k in saved})

    def settings(self) -> dict:
        """What `save_pretrained` records beside the model (subclasses add their own)."""
        return {name: getattr(self, name) for name in TOKEN_SETTINGS}

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a plain transformers model directory (+ tokenizer) and the settings file, atomically."""
        with atomic_dir(path, owned=is_model_dir) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / SETTINGS_FILE, {"format_version": 1, **self.settings()})
            write_model_manifest(tmp)
        return Path(path)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_sequences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, d) encoder states of (B, L) inputs."""
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def decode(self, encoder_hidden: torch.Tensor, encoder_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
               output_attentions: bool = False):
        """One teacher-forced decoder pass over precomputed encoder states (B, K, d) with mask (B, K)."""
        from transformers.modeling_outputs import BaseModelOutput

        return self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
            attention_mask=encoder_mask.long(),
            decoder_input_ids=decoder_input_ids,
            output_attentions=output_attentions,
            use_cache=False,
            return_dict=True,
        )

    def decoder_inputs(self, labels: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        """Labels shifted right behind the decoder-start token; just the start token without labels."""
        start = torch.full((batch_size, 1), self.decoder_start_token_id, dtype=torch.long, device=device)
        if labels is None:
            return start
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.pad_token_id)


__all__ = ["IGNORE_INDEX", "SETTINGS_FILE", "Seq2SeqLM", "load_seq2seq", "t5_from_config", "token_log_likelihood",
           "warm_started_encoder_decoder"]
