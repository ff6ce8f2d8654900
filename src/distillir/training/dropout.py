"""Attention-probability dropout, set at training time.

On a CPU, dropout over the (batch, heads, length, length) attention probabilities is much of a passage-length
training step: it draws one random number per attention weight and takes SDPA off its fused kernel. MiniLM on 2
AVX-512 cores (bench/results/train_step.md): a bi-encoder step over 16 x 8 passages takes 24.1 s in bf16 with the
model's 0.1 against 7.0 s with 0, a cross-encoder step over 32 pairs 1.80 s against 1.14.
"""

from __future__ import annotations

from torch import nn

# The attributes attention modules keep their dropout under: an nn.Dropout (BERT, RoBERTa, XLM-R, MPNet,
# DistilBERT, ELECTRA) or a float passed to the attention kernel (Llama, Gemma, Qwen, ModernBERT, T5).
_NAMES = ("dropout", "attn_dropout", "attention_dropout", "dropout_rate")


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention-probability dropout of every attention module in `model` to `p`; returns how many
    modules changed. Only modules whose class name ends in "Attention" are touched, so the hidden-state
    dropout after attention (BERT's `BertSelfOutput`) and elsewhere keeps the model's own rate."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"attention dropout must be in [0, 1), got {p}")
    changed = 0
    for module in model.modules():
        if not type(module).__name__.endswith("Attention"):
            continue
        found = False
        for name in _NAMES:
            value = getattr(module, name, None)
            if isinstance(value, nn.Dropout):
                value.p = p
                found = True
            elif isinstance(value, float) and not isinstance(value, bool):
                setattr(module, name, p)
                found = True
        changed += found
    return changed


__all__ = ["set_attention_dropout"]
