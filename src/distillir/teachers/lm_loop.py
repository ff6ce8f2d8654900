"""LOOP for a causal LM (Atlas' leave-one-out perplexity distillation, Izacard et al., 2022, section 2.2): the
LM reads a question's n passages concatenated and scores the answer; passage k's score is how much the answer's
loss rises when k is left out of that context:

    T_k = -log p(answer | q, D \\ {k}) - (-log p(answer | q, D))

Atlas uses the first term alone; the second is a constant per question, so softmaxes over the list agree and
a score of 0 means "the answer is as likely without it". It costs n + 1 forwards of the concatenated context
per question, against n short ones for pdist: the context-aware teacher, for few questions or a GPU. Scores go
through the same cache as the other LM teachers (a killed run resumes).
"""

from __future__ import annotations

from collections.abc import Sequence

from distillir.readers.causal_lm import CausalLMReader
from distillir.teachers.lm_attention import attention_prompt
from distillir.teachers.lm_likelihood import ScoreCache, score_pairs
from distillir.teachers.scores import TeacherScores


def loop_pairs(reader: CausalLMReader, question: str, ctxs: Sequence[dict], answer: str) -> list[tuple[str, str]]:
    """The n + 1 (prompt, answer) pairs of one question: the full context first, then the context without
    passage k for each k (a single passage is compared with itself: score 0)."""
    prompts = [attention_prompt(reader, question, ctxs)[0]]
    for k in range(len(ctxs)):
        rest = [c for i, c in enumerate(ctxs) if i != k] or list(ctxs)
        prompts.append(attention_prompt(reader, question, rest)[0])
    return [(p, answer) for p in prompts]


def lm_loop_scores(reader: CausalLMReader, examples: Sequence[dict], *, n_passages: int | None = None,
                   reduce: str = "mean", batch_size: int = 4, cache: ScoreCache | None = None,
                   progress: str | None = "lm loop teacher") -> TeacherScores:
    """LOOP scores for reader examples with answers (the first answer is the scored target; questions without
    one are left out)."""
    pairs: list[tuple[str, str]] = []
    slots = []
    for ex in examples:
        ctxs = list(ex.get("ctxs") or [])[:n_passages]
        answers = [a for a in ex.get("answers") or [] if a.strip()]
        if not ctxs or not answers:
            continue
        slots.append((ex, [str(c["id"]) for c in ctxs], len(pairs)))
        pairs.extend(loop_pairs(reader, ex["question"], ctxs, answers[0]))
    values = score_pairs(reader, pairs, cache=cache, batch_size=batch_size, reduce=reduce, progress=progress)
    out = TeacherScores(f"lm-loop:{reader.name}")
    for ex, pids, at in slots:
        full = values[at]
        out.add(str(ex["id"]), pids, [full - values[at + 1 + k] for k in range(len(pids))], query=ex["question"],
                answers=list(ex.get("answers") or []))
    return out


__all__ = ["lm_loop_scores", "loop_pairs"]
