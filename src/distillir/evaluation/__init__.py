"""Evaluation the way the papers report it: qrels metrics (nDCG@10, MRR@10, R@k, MAP), DPR's answer-string
recall ("Top-k"), gold-passage MRR for QA data, and SQuAD EM/F1 for generated answers.

Kept light to import: `distillir.data.run` is imported by every retriever, so pytrec_eval and
the tokenisers load only when a metric is computed.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from distillir.data.run import Run
from distillir.data.types import Corpus, Qrels, Queries
from distillir.errors import DistillirError
from distillir.evaluation.report import format_table

DEFAULT_KS = (1, 5, 20, 100)

# Public names served from submodules on first use (PEP 562), so importing this package stays cheap.
_LAZY = {
    "evaluate_qrels": "metrics",
    "gold_mrr": "metrics",
    "qrels_from_gold": "metrics",
    "parse_metric": "metrics",
    "DEFAULT_METRICS": "metrics",
    "answer_recall": "answers",
    "has_answer": "answers",
    "dpr_tokens": "answers",
    "AnswerMatcher": "answers",
    "evaluate_answers": "qa",
    "exact_match": "qa",
    "f1_score": "qa",
    "normalize_answer": "qa",
    "top1_concentration": "diagnostics",
}

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_METRICS",
    "AnswerMatcher",
    "Run",
    "answer_recall",
    "dpr_tokens",
    "evaluate_answers",
    "evaluate_qrels",
    "evaluate_run",
    "exact_match",
    "f1_score",
    "format_table",
    "gold_mrr",
    "has_answer",
    "normalize_answer",
    "parse_metric",
    "qrels_from_gold",
    "top1_concentration",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def _merge(result: dict, part: dict, label: str) -> None:
    """Add one part's metrics; its query counts go under suffixed keys when they differ from earlier ones."""
    for key, value in part.items():
        if key in ("queries", "missing") and key in result and result[key] != value:
            result[f"{key} ({label})"] = value
        else:
            result.setdefault(key, value)


def evaluate_run(
    run: Run,
    *,
    qrels: Qrels | None = None,
    queries: Queries | None = None,
    corpus: Corpus | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] | None = None,
    include_title: bool = False,
) -> dict:
    """Every metric the inputs allow, in one flat dict:

    * qrels given: `metrics` (default nDCG@10, MRR@10, R@100, MAP) and R@k for each k in `ks`;
    * queries with answers and a corpus: DPR answer recall "Top-k" for each k in `ks`;
    * queries with gold passage ids and no qrels: gold MRR@10 and R@k for each k.

    "queries" and "missing" count the evaluated queries and those absent from the run (scored 0).
    """
    # pytrec_eval (qrels metrics) and regex (answer matching) load only when something is evaluated.
    from distillir.data import answers
    from distillir.evaluation import metrics as qrels_metrics

    result: dict = {}
    recall_at_ks = [f"recall_{k}" for k in ks]
    if qrels is not None:
        wanted = [*(metrics or qrels_metrics.DEFAULT_METRICS), *recall_at_ks]
        _merge(result, qrels_metrics.evaluate_qrels(run, qrels, wanted), "qrels")
    elif queries is not None and any(queries.gold_ids):
        gold = qrels_metrics.qrels_from_gold(queries)
        _merge(result, qrels_metrics.evaluate_qrels(run, gold, ["recip_rank@10", *recall_at_ks]), "gold")
    if queries is not None and queries.has_answers and corpus is not None:
        part = answers.answer_recall(run, queries, corpus, ks, include_title=include_title)
        _merge(result, part, "answers")
    if not result:
        raise DistillirError(
            "nothing to evaluate: give qrels, or queries with gold passage ids, or queries with answers and a corpus"
        )
    return result
