"""Capturing a reader's decoder cross-attention, for attention-based teacher scores.

What is captured is an `AttentionCapture`: the source ("logits" before softmax, "probs" after it, or
"value_weighted", probability x the norm of the attended value vector, Atlas' ADist) and the decoder positions
("first": the one that predicts the first answer token; "all": every answer position). How the captured tensor
becomes one score per passage is the teachers' business (`distillir.teachers.attention`).

How it is captured. `install_recorder` switches the model to the attention implementation registered here
under `ATTENTION_IMPLEMENTATION`. Every attention layer keeps running through PyTorch's fused SDPA kernel;
while a recorder is active, each decoder cross-attention call also recomputes, from the query and key it was
handed, the exact pre-softmax logits (q.k * scaling + position bias, before the padding mask) of just the
decoder positions the capture keeps (one row for the first token), and stores them averaged over heads. The
scores therefore come out of the same forward pass that computes the reader's training loss, with no second
pass and no generation, and the layer outputs are bit-identical to a plain forward.

The fallback for architectures whose cross-attention does not go through transformers' AttentionInterface is
`cross_attentions_from_outputs` on a model loaded with attn_implementation="eager" and run with
output_attentions=True. It only sees post-softmax probabilities; `logits_from_probabilities` recovers the
logits up to a constant per (layer, head, output token) that all passages of a question share
(log softmax(x) = x - logsumexp(x)). Shift-invariant uses of the scores, such as KL between softmaxes over a
question's passages, are unaffected; MSE on raw scores is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from distillir.errors import ConfigError

# The key under which the recording attention function is registered with transformers.
ATTENTION_IMPLEMENTATION = "distillir_fid"

EAGER_HINT = (
    'load the model with attn_implementation="eager" (transformers 5 defaults to "sdpa", which returns no '
    "attention weights)"
)

SOURCES = ("logits", "probs", "value_weighted")
OUTPUT_TOKENS = ("first", "all")


class AttentionUnavailableError(ConfigError):
    """The model did not expose the cross-attention needed for attention-based teacher scores."""


@dataclass(frozen=True)
class AttentionCapture:
    """What a reader's forward pass keeps of its decoder cross-attention (see the module docstring)."""

    source: str = "logits"
    output_tokens: str = "first"

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"aggregation source must be one of {SOURCES}, got {self.source!r}")
        if self.output_tokens not in OUTPUT_TOKENS:
            raise ConfigError(f"aggregation output_tokens must be one of {OUTPUT_TOKENS}, got {self.output_tokens!r}")


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
    """Keeps, per decoder layer, the cross-attention an `AttentionCapture` asks for, while `recording(...)` is
    active.

    What is kept is already averaged over heads, (B, out_tokens, keys) per layer, detached, float32; with
    output_tokens="first" only the first decoder position is kept, so memory stays small.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._capture: AttentionCapture | None = None
        self._store: dict[int, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self._capture is not None

    @contextlib.contextmanager
    def recording(self, capture: AttentionCapture) -> Iterator[CrossAttentionRecorder]:
        self._capture = capture
        self._store = {}
        try:
            yield self
        finally:
            self._capture = None

    def record(self, layer: int, query, key, value, attention_mask, scaling, position_bias=None) -> None:
        """Store, for one cross-attention call, what the capture asks for (heads averaged, no gradient).

        Only the kept decoder positions are recomputed here (one row for output_tokens="first"), with the same
        maths as transformers' eager attention; the layer's output itself still comes from SDPA, so a recorded
        forward computes exactly what a plain one does.
        """
        # The first call per layer wins: gradient checkpointing re-runs the forward during backward.
        if layer in self._store:
            return
        agg = self._capture
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
