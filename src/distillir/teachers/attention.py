"""Teacher scores from a Fusion-in-Decoder reader's cross-attention: how the captured attention is aggregated.

Izacard & Grave (2021), "Distilling Knowledge from Reader to Retriever", use the reader's decoder
cross-attention over the tokens of passage p as a relevance score T(q, p). The official aggregation
("fid") takes the *pre-softmax* attention logits of the *first* decoded token, sums them over heads,
layers and the passage's non-padding tokens, and divides by (tokens x layers x heads): a plain mean.
The paper compares other choices, and Atlas (Izacard et al., 2022) adds ADist, attention probability
times the norm of the attended value vector. Every variant is an `Aggregation`. The reader captures the
attention an aggregation needs (`distillir.readers.attention`); `aggregate_cross_attention` turns it into
one score per passage, and `attention_scores` does both for a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from distillir.errors import ConfigError
from distillir.models.seq2seq import IGNORE_INDEX
from distillir.readers.attention import AttentionCapture, AttentionUnavailableError

# --------------------------------------------------------------------------------------------------
# Aggregations
# --------------------------------------------------------------------------------------------------

_REDUCTIONS = ("mean", "max", "sum")


@dataclass(frozen=True)
class Aggregation:
    """How cross-attention becomes one score per passage.

    source: "logits" (pre-softmax), "probs" (post-softmax) or "value_weighted" (probability x the
        norm of the value vector it weighs, Atlas' ADist).
    output_tokens: "first" (the decoder position that predicts the first answer token, i.e. the
        decoder-start input, as in the official FiD code) or "all" (mean over non-padding answer tokens).
    reduce: over the passage's non-padding input tokens: "mean", "max" or "sum".
    layers: decoder layer indices to keep (negative counts from the end); None keeps all.

    Heads, layers and the chosen output tokens are always averaged first; `reduce` then runs over the
    passage's tokens. For "mean" this equals the official sum / (tokens x layers x heads).
    """

    name: str
    source: str = "logits"
    output_tokens: str = "first"
    reduce: str = "mean"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        AttentionCapture(self.source, self.output_tokens)  # checks both
        if self.reduce not in _REDUCTIONS:
            raise ConfigError(f"aggregation reduce must be one of {_REDUCTIONS}, got {self.reduce!r}")

    @property
    def capture(self) -> AttentionCapture:
        """What the reader must keep of its cross-attention for this aggregation."""
        return AttentionCapture(self.source, self.output_tokens)

    @property
    def label(self) -> str:
        """Name plus the layer choice, e.g. "fid" or "fid@layers=-1": what teacher-score files record."""
        if self.layers is None:
            return self.name
        return f"{self.name}@layers=" + ",".join(str(i) for i in self.layers)


AGGREGATIONS: dict[str, Aggregation] = {
    # Izacard & Grave (2021), official code: pre-softmax, first token, mean over heads/layers/tokens.
    "fid": Aggregation("fid"),
    "post_softmax": Aggregation("post_softmax", source="probs"),
    "all_tokens": Aggregation("all_tokens", output_tokens="all"),
    "max": Aggregation("max", reduce="max"),
    # Atlas: attention x value norm, over all answer tokens, summed over the passage's tokens. Atlas divides
    # that sum by a fixed 256 (its passage length) where this divides by nothing: scale tau accordingly.
    "adist": Aggregation("adist", source="value_weighted", output_tokens="all", reduce="sum"),
}


def resolve_aggregation(spec: str | Aggregation, layers: Sequence[int] | None = None) -> Aggregation:
    """An `Aggregation` from a preset name (see `AGGREGATIONS`) or an instance; `layers` overrides its layers."""
    if isinstance(spec, Aggregation):
        agg = spec
    else:
        try:
            agg = AGGREGATIONS[spec]
        except KeyError:
            raise ConfigError(f"unknown attention aggregation {spec!r}; choose one of {sorted(AGGREGATIONS)}") from None
    if layers is not None:
        layers = tuple(int(i) for i in layers)
        if not layers:
            raise ConfigError("layers must name at least one decoder layer")
        agg = replace(agg, layers=layers)
    return agg


def aggregate_cross_attention(
    attention: torch.Tensor,
    passage_mask: torch.Tensor,
    aggregation: str | Aggregation = "fid",
    target_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One score per passage from decoder cross-attention.

    attention: (layers, B, heads, out_tokens, n * L) -- logits, probabilities or value-weighted
        probabilities, as `aggregation.source` says; the keys are the n passages of L tokens, concatenated.
    passage_mask: (B, n, L), true on the passages' non-padding tokens.
    target_mask: (B, out_tokens), true on non-padding answer tokens; used by output_tokens="all"
        (None counts every output token).
    Returns (B, n) float32. A passage with no tokens (absent, or all padding) scores -inf.
    """
    agg = resolve_aggregation(aggregation)
    if attention.dim() != 5:
        raise ValueError(f"attention must be (layers, B, heads, out_tokens, n*L), got shape {tuple(attention.shape)}")
    n_layers, batch, _, n_out, keys = attention.shape
    if (
        passage_mask.dim() != 3
        or passage_mask.shape[0] != batch
        or passage_mask.shape[1] * passage_mask.shape[2] != keys
    ):
        raise ValueError(
            f"passage_mask of shape {tuple(passage_mask.shape)} does not match attention over {keys} keys for {batch} questions"
        )
    if agg.layers is not None:
        bad = [i for i in agg.layers if not -n_layers <= i < n_layers]
        if bad:
            raise ConfigError(f"layers {bad} out of range for a decoder with {n_layers} layers")
        attention = attention[list(agg.layers)]

    # Heads and layers are averaged first (a sum divided by their counts, as in the official code).
    per_key = attention.float().mean(dim=(0, 2))  # (B, out_tokens, n*L)
    if agg.output_tokens == "first":
        per_key = per_key[:, 0]
    else:
        if target_mask is None:
            weights = per_key.new_ones(batch, n_out)
        else:
            weights = target_mask[:, :n_out].to(per_key.dtype)
        per_key = (per_key * weights[:, :, None]).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)[:, None]

    n_passages, length = passage_mask.shape[1:]
    per_token = per_key.view(batch, n_passages, length)
    mask = passage_mask.bool()
    n_tokens = mask.sum(dim=-1)
    if agg.reduce == "max":
        scores = per_token.masked_fill(~mask, -math.inf).amax(dim=-1)
    else:
        # torch.where, not multiplication: padding may hold -inf (log of a zero probability).
        total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=-1)
        scores = total / n_tokens.clamp(min=1) if agg.reduce == "mean" else total
    return scores.masked_fill(n_tokens == 0, -math.inf)


def attention_scores(reader, batch, aggregation: str | Aggregation = "fid", layers: Sequence[int] | None = None):
    """(B, n) detached scores of a reader batch (`FiDBatch`) from one forward pass: the reader captures the
    cross-attention the aggregation needs, which is then aggregated. Absent passages score -inf.

    First-token aggregations need no labels: the first decoder position only sees the start token, so its
    cross-attention is the same with or without them. The others average over answer tokens and need them.
    """
    agg = resolve_aggregation(aggregation, layers)
    if agg.output_tokens == "all" and batch.labels is None:
        raise ConfigError(f"aggregation {agg.name!r} averages over answer tokens and needs labels")
    return output_scores(reader(**batch.model_inputs(), attention=agg.capture), batch.labels, agg)


def output_scores(output, labels, aggregation: str | Aggregation = "fid") -> torch.Tensor:
    """(B, n) scores from a reader output that captured `aggregation.capture` (e.g. the training forward,
    whose loss comes from the same pass); `labels` (B, T) or None mark the answer tokens."""
    agg = resolve_aggregation(aggregation)
    target_mask = None if labels is None else labels != IGNORE_INDEX
    return aggregate_cross_attention(output.cross_attention, output.passage_mask, agg, target_mask)


__all__ = ["AGGREGATIONS", "Aggregation", "AttentionUnavailableError", "aggregate_cross_attention",
           "attention_scores", "output_scores",
           "resolve_aggregation"]
