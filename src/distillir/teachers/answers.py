"""The answer-string teacher: T(q, p) = 1 if passage p contains one of q's answers (DPR's matching), else 0.

No model: the distant supervision DPR (Karpukhin et al., 2020) used to pick positives for questions without a
gold passage. As a teacher it is the control for any model teacher in the same lists: a reader whose scores
distil worse than this knows less about where the answer is than string matching does.
"""

from __future__ import annotations

from collections.abc import Iterable

from distillir.data.answers import has_answer
from distillir.teachers.scores import TeacherScores

ANSWER_MATCH_TEACHER = "answer-match"


def answer_match_scores(examples: Iterable[dict], *, include_title: bool = False) -> TeacherScores:
    """Teacher scores for reader examples (the ctxs layout: id, question, answers, ctxs); examples without
    answers are skipped."""
    scores = TeacherScores(ANSWER_MATCH_TEACHER)
    for ex in examples:
        answers = ex.get("answers")
        if not answers:
            continue
        ctxs = ex["ctxs"]
        scores.add(str(ex["id"]), [str(c["id"]) for c in ctxs],
                   [float(has_answer(answers, c["text"], c.get("title"), include_title=include_title)) for c in ctxs],
                   query=ex.get("question"), answers=answers)
    return scores


__all__ = ["ANSWER_MATCH_TEACHER", "answer_match_scores"]
