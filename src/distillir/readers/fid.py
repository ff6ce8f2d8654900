"""Fusion-in-Decoder reader (Izacard & Grave, 2021, "Leveraging Passage Retrieval with Generative Models
for Open Domain Question Answering").

Each (question, title, passage) is encoded on its own as "question: q title: t context: p"; the n encoder
outputs of a question are concatenated to (B, n*L, d) and the decoder attends to all of them while it
generates the answer. Encoding passages separately keeps the encoder cost linear in n; fusing in the
decoder lets the answer draw on evidence spread over passages.

`FiDReader` wraps any transformers seq2seq model: T5/BART-style models by hub id or path, an
`EncoderDecoderModel` warm-started from a BERT-like encoder (`from_encoder`), or a small T5 built from a
config (`from_config`). Its forward pass can also return teacher scores for every passage, taken from
the decoder cross-attention of that same pass (Izacard & Grave, 2021, "Distilling Knowledge from Reader
to Retriever"); see `distillir.teachers.attention`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from distillir.errors import ConfigError, InputError
from distillir.teachers.attention import (
    Aggregation,
    AttentionUnavailableError,
    aggregate_cross_attention,
    cross_attentions_from_outputs,
    install_recorder,
    logits_from_probabilities,
    resolve_aggregation,
)
from distillir.utils.io import atomic_dir, iter_jsonl_objects, write_json
from distillir.utils.log import get_logger, transformers_quiet

DEFAULT_TEMPLATE = "question: {question} title: {title} context: {text}"
SETTINGS_FILE = "fid_reader.json"
IGNORE_INDEX = -100  # label value the loss skips (answer padding)
CAPTURES = ("logits", "eager")
_T5_FAMILY = ("t5", "mt5", "umt5", "longt5")

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------------
# Examples and batches
# --------------------------------------------------------------------------------------------------


def _example_id(example: dict, position: int) -> str:
    qid = example.get("id", example.get("qid"))
    return str(position) if qid is None else str(qid)


def _answers_of(example: dict) -> list[str] | None:
    answers = example.get("answers")
    if answers is None:
        return None
    if isinstance(answers, str):
        answers = [answers]
    answers = [str(a) for a in answers if a is not None and str(a).strip()]
    return answers or None


@dataclass
class FiDBatch:
    """Tensors for the reader plus what is needed to map its outputs back to ids.

    input_ids, attention_mask: (B, n, L). context_present: (B, n), false where an example had fewer than
    n passages (those slots hold a question-only filler that the decoder never attends to).
    labels: (B, T) answer token ids ending in EOS, padded with -100; None when built without answers.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    context_present: torch.Tensor
    labels: torch.Tensor | None
    qids: list[str]
    pids: list[list[str]]  # the real passages of each example, in slot order
    answers: list[list[str] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.qids)

    def model_inputs(self) -> dict[str, torch.Tensor | None]:
        """Keyword arguments for `FiDReader.forward`."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "context_present": self.context_present,
            "labels": self.labels,
        }

    def to(self, device: torch.device | str) -> FiDBatch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return FiDBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class FiDCollator:
    """Turns reader examples into a `FiDBatch`.

    An example is a dict in the DPR/FiD layout that `Run.write_jsonl` writes: {"id", "question",
    "answers", "ctxs": [{"id", "title", "text", ...}]}. The first `n_passages` ctxs are used; an example
    with fewer gets question-only filler slots, marked absent in `context_present`.

    Target answer: "first" always trains on answers[0] (deterministic, what teacher scoring uses);
    "random" draws one answer per example, as the official FiD training does, from a `random.Random(seed)`
    owned by this collator, so a run is reproducible for a given seed and example order (each DataLoader
    worker holds its own copy, hence its own identical stream).

    labels: True requires answers on every example; False never builds labels (prediction, first-token
    scoring); None (default) builds them when every example has answers, none when no example has any,
    and raises on a mix.
    """

    def __init__(
        self,
        tokenizer,
        n_passages: int,
        passage_max_length: int = 200,
        answer_max_length: int = 32,
        *,
        eos_token_id: int | None = None,
        template: str = DEFAULT_TEMPLATE,
        answer_choice: str = "first",
        seed: int = 0,
        labels: bool | None = None,
    ):
        if n_passages < 1:
            raise ConfigError(f"n_passages must be at least 1, got {n_passages}")
        if answer_max_length < 2:
            raise ConfigError(f"answer_max_length must leave room for a token and EOS, got {answer_max_length}")
        if answer_choice not in ("first", "random"):
            raise ConfigError(f"answer_choice must be 'first' or 'random', got {answer_choice!r}")
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if eos_token_id is None:
            raise ConfigError("the tokenizer has neither an EOS nor a SEP token; pass eos_token_id")
        self.tokenizer = tokenizer
        self.n_passages = n_passages
        self.passage_max_length = passage_max_length
        self.answer_max_length = answer_max_length
        self.eos_token_id = eos_token_id
        self.template = template
        self.answer_choice = answer_choice
        self.labels = labels
        self._rng = random.Random(seed)

    def passage_text(self, question: str, title: str, text: str) -> str:
        return self.template.format(question=question, title=title, text=text)

    def __call__(self, examples: Sequence[dict]) -> FiDBatch:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        qids, pids, answers, texts, present = [], [], [], [], []
        for position, example in enumerate(examples):
            qid = _example_id(example, position)
            question = example.get("question")
            if not isinstance(question, str):
                raise InputError(None, f"example {qid!r} has no question text", field="question")
            ctxs = list(example.get("ctxs") or [])[: self.n_passages]
            if not ctxs:
                raise InputError(None, f"example {qid!r} has no ctxs (retrieved passages) to read", field="ctxs")
            ids = []
            for ctx in ctxs:
                if not isinstance(ctx, dict) or "text" not in ctx:
                    raise InputError(None, f"example {qid!r}: every ctx needs a 'text'", field="ctxs")
                ids.append(str(ctx.get("id", len(ids))))
                texts.append(self.passage_text(question, str(ctx.get("title") or ""), str(ctx["text"])))
            for _ in range(self.n_passages - len(ctxs)):
                texts.append(self.passage_text(question, "", ""))
            qids.append(qid)
            pids.append(ids)
            answers.append(_answers_of(example))
            present.append([True] * len(ctxs) + [False] * (self.n_passages - len(ctxs)))

        encoded = self.tokenizer(
            texts, max_length=self.passage_max_length, truncation=True, padding="longest", return_tensors="pt"
        )
        shape = (len(examples), self.n_passages, -1)
        return FiDBatch(
            input_ids=encoded["input_ids"].view(shape),
            attention_mask=encoded["attention_mask"].view(shape),
            context_present=torch.tensor(present, dtype=torch.bool),
            labels=self._labels(qids, answers),
            qids=qids,
            pids=pids,
            answers=answers,
        )

    def _labels(self, qids: list[str], answers: list[list[str] | None]) -> torch.Tensor | None:
        if self.labels is False:
            return None
        missing = [q for q, a in zip(qids, answers) if a is None]
        if missing and (self.labels or len(missing) < len(qids)):
            raise InputError(
                None,
                f"example {missing[0]!r} has no answers; the reader needs one to train or score on",
                field="answers",
            )
        if missing:
            return None
        targets = [a[0] if self.answer_choice == "first" else self._rng.choice(a) for a in answers]
        token_ids = self.tokenizer(
            targets, add_special_tokens=False, truncation=True, max_length=self.answer_max_length - 1
        )["input_ids"]
        # EOS is appended here rather than by the tokenizer, so every tokenizer family ends targets the same way.
        token_ids = [ids + [self.eos_token_id] for ids in token_ids]
        width = max(len(ids) for ids in token_ids)
        labels = torch.full((len(token_ids), width), IGNORE_INDEX, dtype=torch.long)
        for row, ids in enumerate(token_ids):
            labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return labels


def load_fid_examples(path: str | Path) -> list[dict]:
    """Read reader examples from the ctxs JSONL that `Run.write_jsonl` writes (one question per line)."""
    path = Path(path)
    examples = []
    for lineno, row in iter_jsonl_objects(path, "reader examples file"):
        if not isinstance(row.get("question"), str):
            raise InputError(path, "missing or non-string question", line=lineno, field="question")
        ctxs = row.get("ctxs")
        if not isinstance(ctxs, list) or not all(isinstance(c, dict) and "text" in c for c in ctxs):
            raise InputError(path, "ctxs must be a list of objects with a 'text'", line=lineno, field="ctxs")
        examples.append(row)
    if not examples:
        raise InputError(path, "no examples in file")
    return examples


def examples_from_run(run, queries, corpus, n_passages: int | None = None) -> list[dict]:
    """Reader examples (the ctxs layout) built in memory from a `Run`, its `Queries` and the `Corpus`."""
    examples = []
    for qid, hits in run.items():
        qi = queries.index_of.get(qid)
        if qi is None:
            continue
        hits = hits if n_passages is None else hits[:n_passages]
        examples.append(
            {
                "id": qid,
                "question": queries.texts[qi],
                "answers": queries.answers[qi],
                "ctxs": [{**corpus.passage(pid), "score": score} for pid, score in hits],
            }
        )
    return examples


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------


@dataclass
class FiDOutput:
    """loss: mean token cross-entropy on the labels (None without labels). logits: (B, T, vocab).
    teacher_scores: (B, n) detached scores when a teacher aggregation was asked for; absent passages -inf."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    teacher_scores: torch.Tensor | None = None


def token_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(label token) with 0 at ignored (-100) positions."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    safe = labels.clamp(min=0)
    picked = log_probs.gather(-1, safe[..., None]).squeeze(-1)
    return picked.masked_fill(labels == IGNORE_INDEX, 0.0)


class FiDReader(nn.Module):
    """A Fusion-in-Decoder reader around a transformers seq2seq model.

    capture: how teacher scores are read from cross-attention. "logits" (default) installs distillir's
    recording attention function (exact pre-softmax logits, SDPA elsewhere). "eager" reads
    `output_attentions` from a model loaded with attn_implementation="eager" (post-softmax only; logits
    recovered up to a per-question constant, see `distillir.teachers.attention`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        n_passages: int = 100,
        passage_max_length: int = 200,
        answer_max_length: int = 32,
        template: str = DEFAULT_TEMPLATE,
        capture: str = "logits",
        decoder_start_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ):
        super().__init__()
        if capture not in CAPTURES:
            raise ConfigError(f"capture must be one of {CAPTURES}, got {capture!r}")
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"{type(model).__name__} is not an encoder-decoder model; a FiD reader needs one")
        self.model = model
        self.tokenizer = tokenizer
        self.n_passages = n_passages
        self.passage_max_length = passage_max_length
        self.answer_max_length = answer_max_length
        self.template = template
        self.capture = capture
        self.pad_token_id = self._token_id(pad_token_id, "pad_token_id", tokenizer.pad_token_id)
        self.eos_token_id = self._token_id(
            eos_token_id,
            "eos_token_id",
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id,
        )
        t5_start = self.pad_token_id if getattr(model.config, "model_type", "") in _T5_FAMILY else None
        self.decoder_start_token_id = self._token_id(decoder_start_token_id, "decoder_start_token_id", t5_start)
        self._recorder = install_recorder(model) if capture == "logits" else None

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
        raise ConfigError(f"cannot tell the reader's {name}; pass {name}=... to FiDReader")

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, capture: str = "logits", **settings) -> FiDReader:
        """Load a saved reader, or any seq2seq model by hub id or path (T5, BART, an EncoderDecoderModel)."""
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

        name_or_path = str(name_or_path)
        settings_file = Path(name_or_path) / SETTINGS_FILE
        saved = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        saved.pop("format_version", None)
        saved.update(settings)
        config = AutoConfig.from_pretrained(name_or_path)
        model_class = EncoderDecoderModel if config.model_type == "encoder-decoder" else AutoModelForSeq2SeqLM
        model = model_class.from_pretrained(name_or_path)
        if capture == "eager":
            model.set_attn_implementation("eager")
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return cls(model, tokenizer, capture=capture, **saved)

    @classmethod
    def from_encoder(
        cls, path: str | Path, *, tokenizer=None, capture: str = "logits", model_kwargs: dict | None = None, **settings
    ) -> FiDReader:
        """Warm-start an `EncoderDecoderModel` with a BERT-like encoder as both encoder and decoder.

        The decoder's cross-attention is new (random), so the reader must be trained. Start token = the
        tokenizer's CLS (or BOS), EOS = SEP (or EOS). `model_kwargs` go to
        `from_encoder_decoder_pretrained` (e.g. {"encoder_num_hidden_layers": 2, "decoder_num_hidden_layers": 2}).
        """
        from transformers import AutoTokenizer, EncoderDecoderModel

        path = str(path)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        # transformers reports every new cross-attention weight and every unused encoder layer as a
        # "load report"; both are expected in a warm start, so one line says it instead.
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
        if capture == "eager":
            model.set_attn_implementation("eager")
        return cls(model, tokenizer, capture=capture, **ids, **settings)

    @classmethod
    def from_config(
        cls, tokenizer, config=None, *, capture: str = "logits", settings: dict | None = None, **config_overrides
    ) -> FiDReader:
        """A randomly initialised seq2seq reader: `config` (any seq2seq config), or by default a T5Config
        sized to `tokenizer` (path, hub id or tokenizer object) with its PAD as decoder start (T5's
        convention) and its EOS/SEP as EOS. `config_overrides` set config fields (d_model=32, ...)."""
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config

        if isinstance(tokenizer, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if config is None:
            eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
            base = {
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": eos,
                "decoder_start_token_id": tokenizer.pad_token_id,
            }
            config = T5Config(**{**base, **config_overrides})
        else:
            for name, value in config_overrides.items():
                setattr(config, name, value)
        implementation = "eager" if capture == "eager" else "sdpa"
        model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation=implementation)
        return cls(model, tokenizer, capture=capture, **(settings or {}))

    def settings(self) -> dict:
        """What `save_pretrained` records beside the model, and `from_pretrained` restores."""
        return {
            "n_passages": self.n_passages,
            "passage_max_length": self.passage_max_length,
            "answer_max_length": self.answer_max_length,
            "template": self.template,
            "decoder_start_token_id": self.decoder_start_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a plain transformers model directory (+ tokenizer) and fid_reader.json, atomically."""
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / SETTINGS_FILE, {"format_version": 1, **self.settings()})
        return Path(path)

    def collator(self, n_passages: int | None = None, **kwargs) -> FiDCollator:
        """A `FiDCollator` with this reader's tokenizer, lengths, template and EOS (kwargs override)."""
        options = {
            "passage_max_length": self.passage_max_length,
            "answer_max_length": self.answer_max_length,
            "eos_token_id": self.eos_token_id,
            "template": self.template,
            **kwargs,
        }
        return FiDCollator(self.tokenizer, n_passages or self.n_passages, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- the FiD computation ---------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode each passage separately; return the concatenation (B, n*L, d)."""
        batch, n, length = input_ids.shape
        encoder = self.model.get_encoder()
        hidden = encoder(
            input_ids=input_ids.reshape(batch * n, length), attention_mask=attention_mask.reshape(batch * n, length)
        ).last_hidden_state
        return hidden.reshape(batch, n * length, hidden.shape[-1])

    def decode(
        self,
        encoder_hidden: torch.Tensor,
        encoder_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
        output_attentions: bool = False,
    ):
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

    @staticmethod
    def passage_mask(attention_mask: torch.Tensor, context_present: torch.Tensor | None) -> torch.Tensor:
        """(B, n, L) true on the tokens the decoder may attend to: real tokens of present passages."""
        mask = attention_mask.bool()
        return mask if context_present is None else mask & context_present.bool()[:, :, None]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        context_present: torch.Tensor | None = None,
        teacher: str | Aggregation | None = None,
        layers: Sequence[int] | None = None,
    ) -> FiDOutput:
        """Loss on `labels` and, when `teacher` names an aggregation, per-passage scores from this same pass.

        First-token aggregations ("fid", "post_softmax", "max") need no labels: the first decoder
        position only sees the start token, so its cross-attention is the same with or without them.
        """
        batch, n, length = input_ids.shape
        aggregation = None if teacher is None else resolve_aggregation(teacher, layers)
        if aggregation is not None and aggregation.output_tokens == "all" and labels is None:
            raise ConfigError(f"aggregation {aggregation.name!r} averages over answer tokens and needs labels")
        encoder_hidden = self.encode(input_ids, attention_mask)
        passage_mask = self.passage_mask(attention_mask, context_present)
        encoder_mask = passage_mask.reshape(batch, n * length)
        decoder_input_ids = self.decoder_inputs(labels, batch, input_ids.device)

        attention = None
        if aggregation is None:
            outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids)
        elif self.capture == "logits":
            with self._recorder.recording(aggregation):
                outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids)
                attention = self._recorder.attention()
        else:
            if aggregation.source == "value_weighted":
                raise AttentionUnavailableError(
                    f"aggregation {aggregation.name!r} needs value vectors, which output_attentions does not "
                    "return; use capture='logits'"
                )
            outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids, output_attentions=True)
            attention = cross_attentions_from_outputs(outputs)
            if aggregation.source == "logits":
                attention = logits_from_probabilities(attention)

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                outputs.logits.float().reshape(-1, outputs.logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        scores = None
        if attention is not None:
            target_mask = None if labels is None else labels != IGNORE_INDEX
            scores = aggregate_cross_attention(attention, passage_mask, aggregation, target_mask)
        return FiDOutput(loss=loss, logits=outputs.logits, teacher_scores=scores)

    # ---- answering -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        context_present: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
        **generate_kwargs,
    ) -> list[str]:
        """Greedy (num_beams=1) or beam-search answers, decoded to strings."""
        from transformers.modeling_outputs import BaseModelOutput

        batch, n, length = input_ids.shape
        encoder_hidden = self.encode(input_ids, attention_mask)
        encoder_mask = self.passage_mask(attention_mask, context_present).reshape(batch, n * length).long()
        generated = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden),
            attention_mask=encoder_mask,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            decoder_start_token_id=self.decoder_start_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            **generate_kwargs,
        )
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def predict(
        self,
        examples: Iterable[dict],
        batch_size: int = 8,
        n_passages: int | None = None,
        max_new_tokens: int = 32,
        num_beams: int = 1,
    ) -> dict[str, str]:
        """{qid: answer} for reader examples (the ctxs layout), in eval mode."""
        examples = list(examples)
        collate = self.collator(n_passages, labels=False)
        was_training = self.training
        self.eval()
        predictions: dict[str, str] = {}
        try:
            for chunk in batched(examples, batch_size):
                batch = collate(chunk).to(self.device)
                answers = self.generate(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.context_present,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                )
                predictions.update(zip(batch.qids, answers))
        finally:
            self.train(was_training)
        return predictions
