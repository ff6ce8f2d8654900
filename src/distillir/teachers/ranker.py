"""A re-ranker as the teacher: a cross-encoder's score of every (question, passage) pair of each list, the
signal RocketQAv2, AR2 and Re2G's online distillation take from their rankers, here for any distilling
recipe (fid-kd's `teacher_scores: ranker`). The cross-encoder reads each pair jointly, so it can know more
than the bi-encoder it teaches; whether it does is measured on the lists (`teachers.quality.answer_hits`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distillir.teachers.scores import TeacherScores


def ranker_scores(ranker: Any, examples: Sequence[dict[str, Any]], batch_size: int = 64, name: str = "cross-encoder",
                  show_progress: bool | None = None) -> TeacherScores:
    """Teacher scores for reader examples (the ctxs layout: id, question, answers, ctxs): the ranker's logits,
    all pairs of all lists scored in one length-bucketed pass (a progress bar from 2,048 pairs, unless told)."""
    pairs = [(ex, c) for ex in examples for c in ex["ctxs"]]
    if show_progress is None:
        show_progress = len(pairs) >= 2048
    logits = ranker.score_pairs([ex["question"] for ex, _ in pairs],
                                [(c.get("title") or "", c.get("text") or "") for _, c in pairs],
                                batch_size=batch_size, show_progress=show_progress)
    out = TeacherScores(f"ranker:{name}")
    at = 0
    for ex in examples:
        n = len(ex["ctxs"])
        out.add(str(ex["id"]), [str(c["id"]) for c in ex["ctxs"]], logits[at : at + n], query=ex.get("question"),
                answers=list(ex.get("answers") or []))
        at += n
    return out


__all__ = ["ranker_scores"]
