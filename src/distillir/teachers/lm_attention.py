"""The attention teacher of a causal LM: the decoder-only analogue of FiD-KD's cross-attention scores.

The LM reads a question's n passages concatenated in one prompt and is scored on the answer; in that same
forward pass, the attention of the positions that predict the answer's tokens over each passage's token span is
summed per passage and averaged over the chosen layers, the heads and those positions (post-softmax attention
mass, as FiD-KD's `post_softmax` aggregation and Atlas' ADist). A model whose attention kernel hides the weights
(SDPA, flash) is loaded with `attn_implementation="eager"`; attention that still comes back empty is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from distillir.errors import ConfigError
from distillir.readers.causal_lm import CausalLMReader
from distillir.teachers.scores import TeacherScores


class AttentionUnavailableError(RuntimeError):
    """The model returned no attention weights (a fused kernel): load it with attn_implementation="eager"."""


def span_attention(attentions: Sequence[torch.Tensor], spans: Sequence[tuple[int, int]], rows: Sequence[int],
                   layers: Sequence[int] | None = None) -> torch.Tensor:
    """(n,) attention mass on each token span [start, end), from the query positions `rows`: for each layer's
    (heads, L, L) weights, sum over the span's columns, then the mean over heads, rows and the chosen layers
    (negative indices from the end; None: all)."""
    if not attentions or any(a is None or a.numel() == 0 for a in attentions):
        raise AttentionUnavailableError("the model returned no attention weights: load it with "
                                        "attn_implementation='eager' (SDPA and flash kernels do not expose them)")
    chosen = range(len(attentions)) if layers is None else [i % len(attentions) for i in layers]
    rows_t = torch.as_tensor(list(rows))
    per_layer = []
    for i in chosen:
        a = attentions[i].float()
        a = a[0] if a.dim() == 4 else a  # (heads, L, L)
        a = a[:, rows_t]  # (heads, rows, L)
        per_layer.append(torch.stack([a[..., s:e].sum(-1) for s, e in spans], dim=-1).mean(dim=(0, 1)))
    return torch.stack(per_layer).mean(0)


def attention_prompt(reader: CausalLMReader, question: str, ctxs: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The read prompt with every passage in the context ("[k] passage", blank-line separated), and each
    passage's character span in the rendered prompt."""
    texts = [reader._passage(c.get("title", ""), c.get("text", "")) for c in ctxs]
    joined = "\n\n".join(f"[{k + 1}] {t}" for k, t in enumerate(texts))
    rendered = reader._render(reader.prompts.read.format(passage=joined, question=question),
                              reader.prompts.answer_cue)
    spans, at = [], 0
    for k, t in enumerate(texts):
        start = rendered.index(f"[{k + 1}] {t}", at)
        spans.append((start, start + len(f"[{k + 1}] {t}")))
        at = spans[-1][1]
    return rendered, spans


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans -> [first, last + 1) token spans, from a fast tokenizer's offset mapping."""
    out = []
    for s, e in char_spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        if not inside:
            raise ConfigError(f"no token covers characters {s}-{e} of the prompt")
        out.append((inside[0], inside[-1] + 1))
    return out


@torch.no_grad()
def lm_attention_scores(reader: CausalLMReader, examples: Sequence[dict], *, n_passages: int | None = None,
                        layers: Sequence[int] | None = None) -> TeacherScores:
    """Attention teacher scores for reader examples with answers (the first answer is the scored target;
    questions without one are left out), one forward per question."""
    out = TeacherScores(f"lm-attention:{reader.name}")
    for ex in examples:
        ctxs = list(ex.get("ctxs") or [])[:n_passages]
        answers = [a for a in ex.get("answers") or [] if a.strip()]
        if not ctxs or not answers:
            continue
        prompt, char_spans = attention_prompt(reader, ex["question"], ctxs)
        enc = reader.tokenizer(prompt, add_special_tokens=not reader.chat, return_offsets_mapping=True)
        target = reader.tokenizer(reader.target_text(answers[0]), add_special_tokens=False)["input_ids"]
        ids = enc["input_ids"] + target
        rows = [len(enc["input_ids"]) - 1 + j for j in range(len(target))]
        result = reader.model(input_ids=torch.tensor([ids], device=reader.device), output_attentions=True)
        scores = span_attention(result.attentions, token_spans(enc["offset_mapping"], char_spans), rows, layers)
        out.add(str(ex["id"]), [str(c["id"]) for c in ctxs], [float(v) for v in scores], query=ex["question"],
                answers=list(ex.get("answers") or []))
    return out


__all__ = ["AttentionUnavailableError", "attention_prompt", "lm_attention_scores", "span_attention", "token_spans"]
