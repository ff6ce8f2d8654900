"""A cross-encoder re-ranker: any Hugging Face encoder reading [query; title: passage] and giving one logit."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distillir.errors import ConfigError, InputError
from distillir.models import is_model_dir, model_dir, write_model_manifest
from distillir.rankers.base import Passage, Ranker
from distillir.utils.io import atomic_dir, write_json
from distillir.utils.log import get_logger, transformers_quiet

logger = get_logger(__name__)

SETTINGS_FILE = "distillir_cross_encoder.json"
FORMAT_VERSION = 1
DEFAULT_QUERY_MAX_LENGTH = 64


def _resolve(name_or_path: str | Path) -> str:
    """A hub id or path as `from_pretrained` should load it (packaged copies stand in for hub ids; a hub id
    is fetched once), checked to hold a model."""
    return str(model_dir(name_or_path))


class CrossEncoder(nn.Module, Ranker):
    """Scores a (query, passage) pair jointly with a sequence-pair classifier that has a single output.

    The input is the query as the first segment and "title: text" as the second; only the passage is
    truncated to fit `max_length` tokens, and queries are first clipped to `query_max_length` tokens
    (default: 64, or half of `max_length` if less) so that a long question cannot squeeze the passage out.
    `forward` keeps gradients (training); `score_pairs` is the fast inference path.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_length: int = 256,
        query_max_length: int | None = None,
        title_separator: str = ": ",
    ):
        super().__init__()
        if query_max_length is None:
            query_max_length = min(DEFAULT_QUERY_MAX_LENGTH, max_length // 2)
        if query_max_length < 1 or query_max_length > max_length // 2:
            raise ConfigError(
                f"query_max_length must be between 1 and max_length // 2 = {max_length // 2} "
                f"(so the passage keeps at least half the input), got {query_max_length}"
            )
        num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
        if num_labels != 1:
            raise ConfigError(f"a cross-encoder needs a classifier with one output, this one has {num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.title_separator = title_separator
        # score_pairs' precision: "bfloat16" autocast is ~2x float32 where the CPU has native bf16 (and 5-6x
        # slower where it does not); "auto" picks it only where native. Training is unaffected.
        self.inference_dtype = "float32"
        default_inputs = ("input_ids", "attention_mask", "token_type_ids")
        self._input_names = set(getattr(tokenizer, "model_input_names", default_inputs))

    # --- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        max_length: int | None = None,
        query_max_length: int | None = None,
        device: str | torch.device | None = None,
        **model_kwargs: Any,
    ) -> CrossEncoder:
        """Load a saved cross-encoder, or start one from any encoder (hub id or local directory).

        Starting from a plain encoder adds a freshly initialised one-output head (logged); train it before
        use. Settings saved with the model apply unless given here.
        """
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = _resolve(name_or_path)
        settings = _read_settings(path)
        config = AutoConfig.from_pretrained(path)
        is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if is_classifier and config.num_labels != 1 and not model_kwargs.get("ignore_mismatched_sizes"):
            raise ConfigError(
                f"{name_or_path} is a classifier with {config.num_labels} outputs; a cross-encoder scores with "
                "one. Pass ignore_mismatched_sizes=True to replace its head with a new one-output head."
            )
        if is_classifier:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **model_kwargs)
        else:  # a plain encoder: the new head (and an unused pooler or LM head) are expected, so one line says it
            with transformers_quiet():
                model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **model_kwargs)
            logger.info("cross-encoder started from the encoder %s: its one-output head is new (train it)", path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        max_length = max_length or settings.get("max_length", 256)
        positions = getattr(config, "max_position_embeddings", None)
        if positions is not None and max_length > positions:
            raise ConfigError(f"max_length {max_length} exceeds the {positions} positions {name_or_path} can encode")
        saved_query_max_length = settings.get("query_max_length")
        if query_max_length is None and saved_query_max_length and saved_query_max_length <= max_length // 2:
            query_max_length = saved_query_max_length  # a saved value that no longer fits falls back to the default
        encoder = cls(
            model,
            tokenizer,
            max_length=max_length,
            query_max_length=query_max_length,
            title_separator=settings.get("title_separator", ": "),
        )
        if device is not None:
            encoder.to(device)
        return encoder

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a plain transformers model directory (AutoModelForSequenceClassification loads it) plus
        distillir's settings, atomically: a reader never sees half a model."""
        directory = Path(directory)
        with atomic_dir(directory, owned=is_model_dir) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / SETTINGS_FILE, self.settings())
            write_model_manifest(tmp)
        return directory

    def settings(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "cross_encoder",
            "max_length": self.max_length,
            "query_max_length": self.query_max_length,
            "title_separator": self.title_separator,
        }

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def head_and_body_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(head, body): the classifier with the pooler that feeds it, and the rest of the encoder.

        A head started fresh on a pretrained encoder needs a far larger learning rate than the encoder can
        take. The pooler (BERT's dense + tanh over [CLS]) counts as head: only the classifier reads it, and
        encoders trained for embeddings (mean pooling) leave it at its initialisation.
        """
        prefix = getattr(self.model, "base_model_prefix", "")
        body_module = getattr(self.model, prefix, None) if prefix else None
        if body_module is None or body_module is self.model:
            raise ConfigError(f"{type(self.model).__name__} has no separate encoder (base_model_prefix "
                              f"{prefix!r}): head and encoder learning rates cannot be told apart")
        pooler = getattr(body_module, "pooler", None)
        pooler_ids = {id(p) for p in pooler.parameters()} if isinstance(pooler, nn.Module) else set()
        body_ids = {id(p) for p in body_module.parameters()} - pooler_ids
        head = [p for p in self.model.parameters() if id(p) not in body_ids]
        body = [p for p in self.model.parameters() if id(p) in body_ids]
        return head, body

    # --- tokenization ------------------------------------------------------------------------
    def format_passage(self, title: str, text: str) -> str:
        return f"{title}{self.title_separator}{text}" if title else text

    def _clip_queries(self, queries: Sequence[str]) -> list[str]:
        """Cut queries longer than `query_max_length` tokens at a token boundary (in characters, so the
        text is not re-decoded). Each distinct query is tokenized once: re-ranking repeats it n times."""
        distinct = list(dict.fromkeys(queries))
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(distinct, add_special_tokens=False, return_offsets_mapping=True)
            clipped = {}
            for query, offsets in zip(distinct, encoded["offset_mapping"]):
                too_long = len(offsets) > self.query_max_length
                clipped[query] = query[: offsets[self.query_max_length - 1][1]] if too_long else query
        else:  # slow tokenizers have no offsets: clip through the tokens
            clipped = {}
            for query in distinct:
                tokens = self.tokenizer.tokenize(query)
                if len(tokens) > self.query_max_length:
                    query_text = self.tokenizer.convert_tokens_to_string(tokens[: self.query_max_length])
                else:
                    query_text = query
                clipped[query] = query_text
        return [clipped[q] for q in queries]

    def _encode(self, queries: Sequence[str], titles: Sequence[str], texts: Sequence[str]) -> dict[str, list]:
        if not (len(queries) == len(titles) == len(texts)):
            raise ValueError(
                f"got {len(queries)} queries, {len(titles)} titles and {len(texts)} texts; they must pair up"
            )
        if not queries:
            return {"input_ids": []}
        seconds = [self.format_passage(title, text) for title, text in zip(titles, texts)]
        return dict(
            self.tokenizer(self._clip_queries(queries), seconds, truncation="only_second", max_length=self.max_length)
        )

    def tokenize(self, queries: Sequence[str], titles: Sequence[str], texts: Sequence[str]) -> Mapping[str, Tensor]:
        """Padded tensors for `forward`: pair i is (queries[i], titles[i]: texts[i])."""
        encoded = self._encode(queries, titles, texts)
        return self.tokenizer.pad(encoded, return_tensors="pt")

    # --- scoring -----------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Logits (N,) for a tokenized batch, with gradients."""
        device = self.device
        inputs = {k: v.to(device) for k, v in batch.items() if k in self._input_names}
        return self.model(**inputs).logits.squeeze(-1)

    def list_scores(self, batch: Mapping[str, Tensor], list_size: int) -> Tensor:
        """Logits of a batch holding B queries' lists of `list_size` passages each, query-major, as (B, n)."""
        logits = self.forward(batch)
        if logits.shape[0] % list_size:
            raise ValueError(f"{logits.shape[0]} pairs do not split into lists of {list_size}")
        return logits.view(-1, list_size)

    def score_pairs(
        self,
        queries: Sequence[str],
        passages: Sequence[Passage],
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> list[float]:
        """Scores in input order. Pairs are tokenized once and batched by length (longest first), so each
        batch pads little; scores do not depend on the batching."""
        if len(queries) != len(passages):
            raise ValueError(f"got {len(queries)} queries and {len(passages)} passages; they must pair up")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for i, passage in enumerate(passages):
            if not (isinstance(passage, (tuple, list)) and len(passage) == 2):
                raise InputError(None, f"passage {i} must be a (title, text) pair, got {type(passage).__name__}")
        encoded = self._encode(queries, [p[0] for p in passages], [p[1] for p in passages])
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        if show_progress:
            batches = _progress(batches, desc="re-ranking")

        scores = [0.0] * len(lengths)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), self._autocast():
                for rows in batches:
                    features = [{key: values[i] for key, values in encoded.items()} for i in rows]
                    logits = self.forward(self.tokenizer.pad(features, return_tensors="pt"))
                    for i, score in zip(rows, logits.float().cpu().tolist()):
                        scores[i] = score
        finally:
            self.train(was_training)
        return scores

    def with_inference_dtype(self, dtype: str) -> CrossEncoder:
        """Score in `dtype` from now on: "float32", "bfloat16", or "auto" (bfloat16 where the CPU has it
        natively, else float32)."""
        if dtype == "auto":
            from distillir.retrievers.dense.inference import default_encoding_dtype

            dtype = default_encoding_dtype()
        if dtype not in INFERENCE_DTYPES[1:]:
            raise ConfigError(f"ranker inference dtype must be float32, bfloat16 or auto, got {dtype!r}")
        self.inference_dtype = dtype
        return self

    def _autocast(self):
        enabled = self.inference_dtype == "bfloat16"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)


INFERENCE_DTYPES = ("auto", "float32", "bfloat16")  # what with_inference_dtype accepts


def _read_settings(path: str) -> dict[str, Any]:
    settings_path = Path(path) / SETTINGS_FILE
    if not settings_path.is_file():
        return {}
    try:
        return json.loads(settings_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(settings_path, f"invalid JSON: {e.msg}", line=e.lineno) from None


def _progress(items: list, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar, same results
        return items
    return tqdm(items, desc=desc, unit="batch")
