"""Fusion-in-Decoder reader (Izacard & Grave, 2021, "Leveraging Passage Retrieval with Generative Models
for Open Domain Question Answering").

Each (question, title, passage) is encoded on its own as "question: q title: t context: p"; the n encoder
outputs of a question are concatenated to (B, n*L, d) and the decoder attends to all of them while it
generates the answer. Encoding passages separately keeps the encoder cost linear in n; fusing in the
decoder lets the answer draw on evidence spread over passages.

`FiDReader` wraps any transformers seq2seq model: T5/BART-style models by hub id or path, an
`EncoderDecoderModel` warm-started from a BERT-like encoder (`from_encoder`), or a small T5 built from a
config (`from_config`). Its forward pass can also capture the decoder cross-attention of that same pass
(`distillir.readers.attention`), which `distillir.teachers.attention` turns into one teacher score per passage
(Izacard & Grave, 2021, "Distilling Knowledge from Reader to Retriever"). Examples and batches live in
`distillir.readers.fid_data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distillir.errors import ConfigError
from distillir.models.seq2seq import (
    IGNORE_INDEX,
    Seq2SeqLM,
    load_seq2seq,
    t5_from_config,
    warm_started_encoder_decoder,
)
from distillir.readers.attention import (
    AttentionCapture,
    AttentionUnavailableError,
    cross_attentions_from_outputs,
    install_recorder,
    logits_from_probabilities,
)
from distillir.readers.fid_data import (
    DEFAULT_TEMPLATE,
    FiDBatch,
    FiDCollator,
    batched,
    examples_from_run,
    load_fid_examples,
)

CAPTURES = ("logits", "eager")


# --------------------------------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------------------------------


@dataclass
class FiDOutput:
    """loss: mean token cross-entropy on the labels (None without labels). logits: (B, T, vocab).
    cross_attention: (layers, B, heads, out_tokens, n * L), detached, when an `AttentionCapture` was asked for
    (heads already averaged by the recording capture: heads = 1); passage_mask: (B, n, L), true on the tokens
    the decoder could attend to (real tokens of present passages)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    cross_attention: torch.Tensor | None = None
    passage_mask: torch.Tensor | None = None


class FiDReader(Seq2SeqLM):
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
        if capture not in CAPTURES:
            raise ConfigError(f"capture must be one of {CAPTURES}, got {capture!r}")
        if not getattr(model.config, "is_encoder_decoder", False):
            raise ConfigError(f"{type(model).__name__} is not an encoder-decoder model; a FiD reader needs one")
        super().__init__(model, tokenizer, decoder_start_token_id=decoder_start_token_id, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id)
        self.n_passages = n_passages
        self.passage_max_length = passage_max_length
        self.answer_max_length = answer_max_length
        self.template = template
        self.capture = capture
        self._recorder = install_recorder(model) if capture == "logits" else None

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, capture: str = "logits", **settings) -> FiDReader:
        """Load a saved reader, or any seq2seq model by hub id or path (T5, BART, an EncoderDecoderModel)."""
        model, tokenizer, saved = load_seq2seq(name_or_path, eager=capture == "eager")
        return cls(model, tokenizer, capture=capture, **{**saved, **settings})

    @classmethod
    def from_encoder(
        cls, path: str | Path, *, tokenizer=None, capture: str = "logits", model_kwargs: dict | None = None, **settings
    ) -> FiDReader:
        """Warm-start an `EncoderDecoderModel` with a BERT-like encoder as both encoder and decoder (see
        `distillir.models.seq2seq.warm_started_encoder_decoder`); its cross-attention is new: train it."""
        model, tokenizer, ids = warm_started_encoder_decoder(path, tokenizer, model_kwargs)
        if capture == "eager":
            model.set_attn_implementation("eager")
        return cls(model, tokenizer, capture=capture, **ids, **settings)

    @classmethod
    def from_config(
        cls, tokenizer, config=None, *, capture: str = "logits", settings: dict | None = None, **config_overrides
    ) -> FiDReader:
        """A randomly initialised seq2seq reader (see `distillir.models.seq2seq.t5_from_config`)."""
        model, tokenizer = t5_from_config(tokenizer, config, eager=capture == "eager", **config_overrides)
        return cls(model, tokenizer, capture=capture, **(settings or {}))

    def settings(self) -> dict:
        """What `save_pretrained` records beside the model, and `from_pretrained` restores."""
        return {
            "n_passages": self.n_passages,
            "passage_max_length": self.passage_max_length,
            "answer_max_length": self.answer_max_length,
            "template": self.template,
            **super().settings(),
        }

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

    # ---- the FiD computation ---------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encode each passage separately; return the concatenation (B, n*L, d)."""
        batch, n, length = input_ids.shape
        hidden = self.encode_sequences(input_ids.reshape(batch * n, length), attention_mask.reshape(batch * n, length))
        return hidden.reshape(batch, n * length, hidden.shape[-1])

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
        attention: AttentionCapture | None = None,
    ) -> FiDOutput:
        """Loss on `labels` and, when `attention` says what to capture, the decoder cross-attention of this
        same pass (see `distillir.readers.attention`; `distillir.teachers.attention` aggregates it)."""
        batch, n, length = input_ids.shape
        if attention is not None and attention.output_tokens == "all" and labels is None:
            raise ConfigError("capturing the cross-attention of every answer token needs labels")
        encoder_hidden = self.encode(input_ids, attention_mask)
        passage_mask = self.passage_mask(attention_mask, context_present)
        encoder_mask = passage_mask.reshape(batch, n * length)
        decoder_input_ids = self.decoder_inputs(labels, batch, input_ids.device)

        captured = None
        if attention is None:
            outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids)
        elif self.capture == "logits":
            with self._recorder.recording(attention):
                outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids)
                captured = self._recorder.attention()
        else:
            if attention.source == "value_weighted":
                raise AttentionUnavailableError(
                    "value-weighted attention needs value vectors, which output_attentions does not return; use "
                    "capture='logits'"
                )
            outputs = self.decode(encoder_hidden, encoder_mask, decoder_input_ids, output_attentions=True)
            captured = cross_attentions_from_outputs(outputs)
            if attention.source == "logits":
                captured = logits_from_probabilities(captured)

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                outputs.logits.float().reshape(-1, outputs.logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return FiDOutput(loss=loss, logits=outputs.logits, cross_attention=captured,
                         passage_mask=passage_mask if captured is not None else None)

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


__all__ = ["CAPTURES", "DEFAULT_TEMPLATE", "FiDBatch", "FiDCollator", "FiDOutput", "FiDReader", "batched",
           "examples_from_run", "load_fid_examples"]
