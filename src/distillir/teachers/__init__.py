"""Teachers: relevance scores T(q, p) that retrievers are distilled from.

- `scores`: the one JSONL format for teacher scores (read/write, validation) and `score_with_reader`.
- `attention`: FiD cross-attention aggregations (Izacard & Grave, 2021; Atlas' ADist).
- `likelihood`: per-passage answer likelihood (Atlas' PDist) and leave-one-out (LOOP).
- `answers`: the answer-string teacher (1 if a passage contains an answer): no model, the control.
- `quality`: does a teacher know more than the retriever it teaches (answer hits)?

Only the file format is imported eagerly; the torch-based modules load on first use.
"""

from __future__ import annotations

import importlib

from distillir.teachers.scores import TeacherScores, read_teacher_scores, score_with_reader, write_teacher_scores

_LAZY = {
    "AGGREGATIONS": "attention",
    "Aggregation": "attention",
    "AttentionUnavailableError": "attention",
    "aggregate_cross_attention": "attention",
    "attention_scores": "attention",
    "answer_log_likelihood": "likelihood",
    "answer_hits": "quality",
    "answer_match_scores": "answers",
    "leave_one_out_scores": "likelihood",
}

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "AttentionUnavailableError",
    "TeacherScores",
    "aggregate_cross_attention",
    "answer_hits",
    "answer_log_likelihood",
    "answer_match_scores",
    "attention_scores",
    "leave_one_out_scores",
    "read_teacher_scores",
    "score_with_reader",
    "write_teacher_scores",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"distillir.teachers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'distillir.teachers' has no attribute {name!r}")
