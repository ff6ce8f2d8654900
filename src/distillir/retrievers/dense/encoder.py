"""The bi-encoder: a query tower and a passage tower that map text to vectors scored by inner product.

Modeling only (as in Tevatron): `encode_query`, `encode_passage` and `similarity` keep gradients for
training; losses live in `distillir.losses`. The inference helpers (`encode_queries`, `encode_corpus`)
tokenize once, sort by length and pad per batch, which is what makes corpus encoding affordable on CPU.

Passage input: a passage is tokenized as the pair (title, text), i.e. `[CLS] title [SEP] text [SEP]` with
segment ids 0 and 1 (the DPR convention). Truncation trims the longer part, so the text is cut and the
title survives; a passage with an empty title is its text alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillir.errors import ConfigError, InputError
from distillir.models import is_model_dir, model_dir, write_model_manifest
from distillir.retrievers.dense.files import (
    ENCODER_FORMAT,
    PASSAGE_INPUT,
    POOLINGS,
    SETTINGS_FILE,
    EncoderSettings,
    read_settings,
    write_encoder_files,
)
from distillir.retrievers.dense.inference import DTYPES, encode_corpus_cached, encode_features
from distillir.utils.io import atomic_dir, fingerprint_strings

# Bumped whenever tokenization or pooling code changes what a given model embeds; part of cache keys.
_EMBEDDING_CODE_VERSION = "1"


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """One vector per sequence: the [CLS] state, or the mean of the states under the attention mask."""
    if pooling == "cls":
        return hidden[:, 0].float()  # right padding keeps [CLS] at position 0
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    # Sum in float32: under half-precision autocast a 256-token sum loses digits.
    return (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def tensor_fingerprint(named_tensors: Sequence[tuple[str, Tensor]]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes: tells apart weights changed in memory."""
    h = hashlib.sha256()
    for name, t in named_tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class BiEncoder(nn.Module):
    """Query and passage towers (one shared module by default; `shared=False` gives separate ones).

    Build with `BiEncoder.from_pretrained(hub id or path)`; the constructor takes ready HF models.
    """

    def __init__(
        self,
        query_model: nn.Module,
        tokenizer: Any,
        passage_model: nn.Module | None = None,
        settings: EncoderSettings | None = None,
    ):
        super().__init__()
        settings = settings or EncoderSettings()
        if (passage_model is None) != settings.shared:
            raise ConfigError("give a passage_model exactly when settings.shared is False")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("BiEncoder needs a fast (Rust) tokenizer; this model only has a slow one")
        self.query_model = query_model
        if passage_model is None:
            # Shared: a plain alias, not a registered submodule, so the tower is listed and saved once.
            object.__setattr__(self, "passage_model", query_model)
        else:
            self.passage_model = passage_model
        self.tokenizer = tokenizer
        self.settings = settings
        self.name_or_path: str | None = None
        # Where these exact weights live on disk, and their hash then, to know if training changed them.
        self._disk_path: Path | None = None
        self._disk_weights: str | None = None
        self._quantized: dict[str, tuple[tuple, nn.Module]] = {}

    # --- towers and settings -------------------------------------------------------------------
    @property
    def shared(self) -> bool:
        return self.passage_model is self.query_model

    @property
    def dim(self) -> int:
        return int(self.query_model.config.hidden_size)

    def towers(self) -> dict[str, nn.Module]:
        return (
            {"shared": self.query_model} if self.shared else {"query": self.query_model, "passage": self.passage_model}
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.settings).items())

    def freeze_passage_tower(self) -> None:
        """Stop training the passage tower (query-side fine-tuning): its corpus embeddings stay valid, so an
        index built before training serves the trained encoder too. Needs separate towers."""
        if self.shared:
            raise ConfigError("freezing the passage tower needs separate towers (load with shared=False)")
        self.passage_model.requires_grad_(False)

    @property
    def passage_tower_frozen(self) -> bool:
        return not self.shared and not any(p.requires_grad for p in self.passage_model.parameters())

    def gradient_checkpointing_enable(self) -> None:
        for tower in self.towers().values():
            tower.gradient_checkpointing_enable()

    # --- loading and saving --------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        shared: bool | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
        scale: float | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        attn_implementation: str = "sdpa",
        **model_kwargs: Any,
    ) -> BiEncoder:
        """Load a hub id, a plain HF/sentence-transformers directory, or a directory from `save_pretrained`.

        Settings not given follow the directory: distillir_encoder.json if present, else the
        sentence-transformers pooling files (MiniLM: mean pooling, normalised), else mean pooling,
        unnormalised. `model_kwargs` go to `AutoModel.from_pretrained` (e.g. `num_hidden_layers=2`).
        """
        from transformers import AutoModel, AutoTokenizer

        directory = model_dir(name_or_path)
        saved = directory / SETTINGS_FILE
        settings = read_settings(directory, shared=shared, pooling=pooling, normalize=normalize, scale=scale,
                                 query_max_length=query_max_length, passage_max_length=passage_max_length)

        saved_separate = (directory / "query").is_dir() and (directory / "passage").is_dir() and saved.is_file()
        if saved_separate and settings.shared:
            raise ConfigError(f"{directory} holds separate query and passage towers; it cannot load as shared")
        load_kwargs = {"attn_implementation": attn_implementation, **model_kwargs}
        if saved_separate:
            query_model = AutoModel.from_pretrained(directory / "query", **load_kwargs)
            passage_model = AutoModel.from_pretrained(directory / "passage", **load_kwargs)
        else:
            query_model = AutoModel.from_pretrained(directory, **load_kwargs)
            # Separate towers from one checkpoint start as two copies (DPR/RocketQA initialisation).
            passage_model = None if settings.shared else AutoModel.from_pretrained(directory, **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        encoder = cls(query_model, tokenizer, passage_model, settings).eval()
        encoder.name_or_path = str(name_or_path)
        if not model_kwargs:  # weights as on disk (kwargs such as num_hidden_layers change the model)
            encoder._mark_on_disk(directory)
        return encoder

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the tower(s) as plain HF models, the tokenizer and distillir_encoder.json, atomically.

        A shared encoder is one HF model directory (loads with `AutoModel.from_pretrained`) that also
        carries sentence-transformers module files; separate towers go to query/ and passage/.
        """
        directory = Path(directory)
        with atomic_dir(directory, owned=is_model_dir) as tmp:
            self.write_files(tmp)
            write_model_manifest(tmp)
        self._mark_on_disk(directory)
        if self.name_or_path is None:
            self.name_or_path = str(directory)
        return directory

    def write_files(self, directory: Path) -> None:
        """The files of `save_pretrained`, into a directory being assembled (e.g. an index's encoder/)."""
        write_encoder_files(self, directory)

    def _mark_on_disk(self, directory: Path) -> None:
        self._disk_path = Path(directory).resolve()
        self._disk_weights = self.weights_fingerprint()

    def pretrained_path(self) -> Path | None:
        """The directory these exact weights load from, or None once they changed in memory (training)."""
        if self._disk_path is None or not self._disk_path.is_dir():
            return None
        return self._disk_path if self.weights_fingerprint() == self._disk_weights else None

    def weights_fingerprint(self, towers: Sequence[str] | None = None) -> str:
        """Hash of the weights in memory (all towers, or those named: "query", "passage")."""
        chosen = {"query": self.query_model, "passage": self.passage_model}
        names = ["query", "passage"] if towers is None else list(towers)
        if self.shared:
            names = ["query"]  # one module: hash it once, whichever tower was asked for
        if len(names) == 1:  # one tower: the same weights hash alike in a shared or a separate-tower encoder
            return tensor_fingerprint([(f"tower.{k}", v) for k, v in chosen[names[0]].state_dict().items()])
        return tensor_fingerprint([(f"{n}.{k}", v) for n in names for k, v in chosen[n].state_dict().items()])

    def tokenizer_fingerprint(self) -> str:
        """Hash of the vocabulary and text-splitting rules (not of the per-call truncation state)."""
        spec = json.loads(self.tokenizer.backend_tokenizer.to_str())
        spec.pop("truncation", None)  # the fast tokenizer records the last call's truncation and padding here
        spec.pop("padding", None)
        return fingerprint_strings([json.dumps(spec, sort_keys=True)])

    # --- tokenization --------------------------------------------------------------------------
    def _query_features(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        if not texts:
            return []
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.settings.query_max_length)
        return self._features(enc, len(texts))

    def _passage_features(self, titles: Sequence[str] | None, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        texts = list(texts)
        titles = [""] * len(texts) if titles is None else list(titles)
        if len(titles) != len(texts):
            raise InputError(None, f"{len(titles)} titles for {len(texts)} passage texts")
        features: list[dict[str, list[int]] | None] = [None] * len(texts)
        with_title = [i for i, t in enumerate(titles) if t]
        without = [i for i, t in enumerate(titles) if not t]
        max_length = self.settings.passage_max_length
        if with_title:
            enc = self.tokenizer(
                [titles[i] for i in with_title],
                [texts[i] for i in with_title],
                truncation="longest_first",
                max_length=max_length,
            )
            for i, f in zip(with_title, self._features(enc, len(with_title))):
                features[i] = f
        if without:
            enc = self.tokenizer([texts[i] for i in without], truncation=True, max_length=max_length)
            for i, f in zip(without, self._features(enc, len(without))):
                features[i] = f
        return features  # type: ignore[return-value]

    @staticmethod
    def _features(enc: Any, n: int) -> list[dict[str, list[int]]]:
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(n)]

    def _collate(self, features: Sequence[dict[str, list[int]]]) -> dict[str, Tensor]:
        """Right-pad to the longest sequence in this batch."""
        width = max(len(f["input_ids"]) for f in features)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        has_types = "token_type_ids" in features[0]
        token_type_ids = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"])
            attention_mask[row, :n] = 1
            if has_types:
                token_type_ids[row, :n] = torch.tensor(f["token_type_ids"])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if has_types:
            batch["token_type_ids"] = token_type_ids
        return batch

    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """A padded batch for `encode_query`."""
        return self._collate(self._query_features(texts))

    def tokenize_passages(self, titles: Sequence[str] | None, texts: Sequence[str]) -> dict[str, Tensor]:
        """A padded batch for `encode_passage` (titles may be None or empty strings)."""
        return self._collate(self._passage_features(titles, texts))

    # --- modeling (with gradients) -------------------------------------------------------------
    def _embed(self, tower: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        device = next(tower.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = tower(**batch).last_hidden_state
        emb = pool(hidden, batch["attention_mask"], self.settings.pooling)
        return F.normalize(emb, dim=-1) if self.settings.normalize else emb

    def encode_query(self, batch: dict[str, Tensor]) -> Tensor:
        """(batch, dim) float32 query embeddings; keeps gradients."""
        return self._embed(self.query_model, batch)

    def encode_passage(self, batch: dict[str, Tensor]) -> Tensor:
        """(batch, dim) float32 passage embeddings; keeps gradients."""
        return self._embed(self.passage_model, batch)

    def similarity(self, q: Tensor, p: Tensor) -> Tensor:
        """(num queries, num passages) scores: inner products times `scale`."""
        return (q @ p.transpose(0, 1)) * self.settings.scale

    def forward(
        self, query: dict[str, Tensor] | None = None, passage: dict[str, Tensor] | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(query embeddings, passage embeddings); going through forward lets DDP sync the gradients."""
        q = self.encode_query(query) if query is not None else None
        p = self.encode_passage(passage) if passage is not None else None
        return q, p

    # --- inference -----------------------------------------------------------------------------
    def encode_queries(self, texts: Sequence[str], batch_size: int = 128, **options: Any) -> Tensor:
        """(len(texts), dim) float32 CPU tensor, in input order. `options`: device, dtype, quantize,
        show_progress (see `distillir.retrievers.dense.inference.encode_features`)."""
        return encode_features(self, self.query_model, self._query_features(texts), batch_size, desc="queries",
                               **options)

    def encode_passages(self, titles: Sequence[str] | None, texts: Sequence[str], batch_size: int = 64,
                        **options: Any) -> Tensor:
        """(len(texts), dim) float32 CPU tensor, in input order; `options` as for `encode_queries`."""
        return encode_features(self, self.passage_model, self._passage_features(titles, texts), batch_size,
                               desc="passages", **options)

    def encode_corpus(self, corpus: Any, batch_size: int = 64, **options: Any) -> Tensor:
        """Embeddings of a `Corpus`, one row per passage in corpus order; `options` as for `encode_queries`."""
        return self.encode_passages(corpus.titles, corpus.texts, batch_size, **options)

    def inference_device(self, device: str | None = None) -> torch.device:
        """The given device; else where the encoder already is if that is an accelerator; else cuda if any."""
        if device is not None:
            return torch.device(device)
        current = next(self.query_model.parameters()).device
        if current.type != "cpu":
            return current
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def passage_embedding_key(self, dtype: str = "float32", quantize: str | None = None) -> str:
        """Identifies what `encode_passages` would produce: passage weights, vocabulary, settings, precision."""
        s = self.settings
        return fingerprint_strings(
            [
                _EMBEDDING_CODE_VERSION,
                self.weights_fingerprint(["passage"]),
                self.tokenizer_fingerprint(),
                s.pooling,
                str(s.normalize),
                str(s.passage_max_length),
                dtype,
                str(quantize),
            ]
        )


__all__ = ["DTYPES", "ENCODER_FORMAT", "PASSAGE_INPUT", "POOLINGS", "SETTINGS_FILE", "BiEncoder", "EncoderSettings",
           "encode_corpus_cached", "pool", "tensor_fingerprint"]
