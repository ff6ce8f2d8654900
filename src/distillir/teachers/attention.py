"""Teacher scores from a Fusion-in-Decoder reader's cross-attention.

Izacard & Grave (2021), "Distilling Knowledge from Reader to Retriever", use the reader's decoder
cross-attention over the tokens of passage p as a relevance score T(q, p). The official aggregation
("fid") takes the *pre-softmax* attention logits of the *first* decoded token, sums them over heads,
layers and the passage's non-padding tokens, and divides by (tokens x layers x heads): a plain mean.
The paper compares other choices, and Atlas (Izacard et al., 2022) adds ADist, attention probability
times the norm of the attended value vector. Every variant is an `Aggregation`.

How the scores are captured. `install_recorder` switches the model to the attention implementation
registered here under `ATTENTION_IMPLEMENTATION`. Every attention layer keeps running through
PyTorch's fused SDPA kernel; while a recorder is active, each decoder cross-attention call also
recomputes, from the query and key it was handed, the exact pre-softmax logits (q.k * scaling + position
bias, before the padding mask) of just the decoder positions the aggregation keeps (one row for the
first token), and stores them averaged over heads. The scores therefore come out of the same forward
pass that computes the reader's training loss, with no second pass and no generation, and the layer
outputs are bit-identical to a plain forward.

The fallback for architectures whose cross-attention does not go through transformers'
AttentionInterface is `cross_attentions_from_outputs` on a model loaded with
attn_implementation="eager" and run with output_attentions=True. It only sees post-softmax
probabilities; `logits_from_probabilities` recovers the logits up to a constant per
(layer, head, output token) that all passages of a question share (log softmax(x) = x - logsumexp(x)).
Shift-invariant uses of T, such as KL between softmaxes over a question's passages, are unaffected;
MSE on raw scores is not.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from distillir.errors import ConfigError

# The key under which the recording attention function is registered with transformers.
ATTENTION_IMPLEMENTATION = "distillir_fid"

EAGER_HINT = (
    'load the model with attn_implementation="eager" (transformers 5 defaults to "sdpa", which returns no '
    "attention weights)"
)


class AttentionUnavailableError(ConfigError):
    """The model did not expose the cross-attention needed for attention-based teacher scores."""


# --------------------------------------------------------------------------------------------------
# Aggregations
# --------------------------------------------------------------------------------------------------

_SOURCES = ("logits", "probs", "value_weighted")
_OUTPUT_TOKENS = ("first", "all")
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
        if self.source not in _SOURCES:
            raise ConfigError(f"aggregation source must be one of {_SOURCES}, got {self.source!r}")
        if self.output_tokens not in _OUTPUT_TOKENS:
            raise ConfigError(f"aggregation output_tokens must be one of {_OUTPUT_TOKENS}, got {self.output_tokens!r}")
        if self.reduce not in _REDUCTIONS:
            raise ConfigError(f"aggregation reduce must be one of {_REDUCTIONS}, got {self.reduce!r}")

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


def logits_from_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """log of post-softmax attention: the logits minus a per-(layer, head, output token) constant.

    Softmax over a question's passages of any "mean"-reduced score is unchanged by that constant, so KL
    distillation sees exact FiD scores; MSE does not. Zero probabilities are clamped to the smallest
    positive float so that the logs stay finite.
    """
    return probs.float().clamp(min=torch.finfo(torch.float32).tiny).log()


def cross_attentions_from_outputs(outputs) -> torch.Tensor:
    """(layers, B, heads, out_tokens, keys) from a transformers seq2seq output run with output_attentions=True.

    Raises `AttentionUnavailableError` when the model returned no cross-attention (SDPA or flash
    attention compute none).
    """
    cross = getattr(outputs, "cross_attentions", None)
    if not cross or any(a is None or a.numel() == 0 for a in cross):
        raise AttentionUnavailableError(f"the reader returned no cross-attention weights: {EAGER_HINT}.")
    return torch.stack([a.detach() for a in cross])


# --------------------------------------------------------------------------------------------------
# Capturing exact logits during the reader's forward pass
# --------------------------------------------------------------------------------------------------


class CrossAttentionRecorder:
    """Keeps, per decoder layer, the cross-attention an `Aggregation` needs, while `recording(...)` is active.

    What is kept is already averaged over heads, (B, out_tokens, keys) per layer, detached, float32; with
    output_tokens="first" only the first decoder position is kept, so memory stays small.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._aggregation: Aggregation | None = None
        self._store: dict[int, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self._aggregation is not None

    @contextlib.contextmanager
    def recording(self, aggregation: str | Aggregation) -> Iterator[CrossAttentionRecorder]:
        self._aggregation = resolve_aggregation(aggregation)
        self._store = {}
        try:
            yield self
        finally:
            self._aggregation = None

    def record(self, layer: int, query, key, value, attention_mask, scaling, position_bias=None) -> None:
        """Store, for one cross-attention call, what the aggregation needs (heads averaged, no gradient).

        Only the kept decoder positions are recomputed here (one row for output_tokens="first"), with the same
        maths as transformers' eager attention; the layer's output itself still comes from SDPA, so a recorded
        forward computes exactly what a plain one does.
        """
        # The first call per layer wins: gradient checkpointing re-runs the forward during backward.
        if layer in self._store:
            return
        agg = self._aggregation
        rows = 1 if agg.output_tokens == "first" else query.shape[2]
        with torch.no_grad():
            if key.shape[1] != query.shape[1]:  # grouped-query attention: share each key/value head
                repeat = query.shape[1] // key.shape[1]
                key = key.repeat_interleave(repeat, dim=1)
                value = value.repeat_interleave(repeat, dim=1)
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            # contiguous() first: keys arrive as a transposed view, which matmul copies far more slowly itself.
            logits = torch.matmul(query[:, :, :rows], key.contiguous().transpose(-1, -2)) * scaling
            if position_bias is not None:  # T5 adds its relative bias (zero for cross-attention) to the scores
                logits = logits + position_bias[:, :, :rows, : key.shape[-2]]
            if agg.source == "logits":
                kept = logits
            else:
                masked = logits
                if attention_mask is not None:
                    attention_mask = attention_mask[:, :, :rows, : key.shape[-2]]
                    if attention_mask.dtype == torch.bool:
                        masked = logits.masked_fill(~attention_mask, torch.finfo(logits.dtype).min)
                    else:
                        masked = logits + attention_mask
                kept = torch.softmax(masked.float(), dim=-1)
                if agg.source == "value_weighted":
                    kept = kept * value.float().norm(dim=-1)[:, :, None, :]
            self._store[layer] = kept.float().mean(dim=1)

    def attention(self) -> torch.Tensor:
        """(layers, B, 1, out_tokens, keys) of the last recorded forward (heads already averaged)."""
        missing = [i for i in range(self.n_layers) if i not in self._store]
        if missing:
            raise AttentionUnavailableError(
                f"no cross-attention was recorded for decoder layers {missing}: this architecture does not route "
                "cross-attention through transformers' AttentionInterface. Build the reader with capture='eager' "
                f"and {EAGER_HINT}."
            )
        return torch.stack([self._store[i] for i in range(self.n_layers)])[:, :, None]


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The registered attention function: SDPA everywhere; recorded cross-attention also keeps its scores."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    recorder = getattr(module, "_distillir_recorder", None)
    if recorder is not None and recorder.active:
        recorder.record(
            module._distillir_layer, query, key, value, attention_mask, scaling, kwargs.get("position_bias")
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _recording_attention)
    # Self-attention is delegated to SDPA, so it must receive SDPA-style (boolean) masks.
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)


_register()


# Names of cross-attention modules in transformers' encoder-decoders: T5/mT5 (EncDecAttention), BART and its
# relatives (encoder_attn); BERT-like decoders use a class named ...CrossAttention.
_CROSS_ATTENTION_NAMES = ("EncDecAttention", "encoder_attn")


def find_cross_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The decoder's cross-attention modules (the ones that call the attention function), in layer order."""
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in _CROSS_ATTENTION_NAMES or type(module).__name__.endswith("CrossAttention")
    ]
    # T5 wraps EncDecAttention in a T5LayerCrossAttention: keep the innermost module only.
    return [(n, m) for n, m in candidates if not any(o.startswith(n + ".") for o, _ in candidates)]


def install_recorder(model: nn.Module) -> CrossAttentionRecorder:
    """Switch `model` to the recording attention implementation and attach a recorder to its cross-attention."""
    modules = find_cross_attention_modules(model)
    if not modules:
        raise AttentionUnavailableError(
            f"found no decoder cross-attention modules in {type(model).__name__}; build the reader with "
            f"capture='eager' and {EAGER_HINT}."
        )
    if not getattr(model, "_supports_sdpa", False):
        raise AttentionUnavailableError(
            f"{type(model).__name__} does not support SDPA, which exact-logit capture builds on; build the reader "
            f"with capture='eager' and {EAGER_HINT}."
        )
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    recorder = CrossAttentionRecorder(len(modules))
    for layer, (_, module) in enumerate(modules):
        # Plain attributes (not submodules or buffers): nothing is added to the state dict.
        module._distillir_recorder = recorder
        module._distillir_layer = layer
    return recorder
