"""Exact match and token F1 of generated answers, as the official SQuAD v1.1 script computes them.

Normalisation: lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.
Each prediction is scored against every gold answer and keeps the best. Scores are fractions in
[0, 1] (the official script prints percentages).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping

from distillir.data.types import Queries

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalize_answer: lower, remove punctuation, remove articles, fix whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    # As in SQuAD v1.1, no overlap (including two empty strings) scores 0.
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answers: Iterable[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    return max((_exact(prediction, a) for a in answers), default=0.0)


def f1_score(prediction: str, answers: Iterable[str]) -> float:
    """Best bag-of-tokens F1 between the normalised prediction and any gold answer."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def evaluate_answers(predictions: Mapping[str, str], queries: Queries) -> dict[str, float | int]:
    """Mean EM and F1 over the queries that have answers: {"EM", "F1", "queries", "missing"}.

    A query with no prediction scores 0 (as in the official script); predictions for queries not in
    `queries` are ignored.
    """
    em = f1 = 0.0
    n = missing = 0
    for qid, answers in zip(queries.ids, queries.answers):
        if answers is None:
            continue
        n += 1
        prediction = predictions.get(qid)
        if prediction is None:
            missing += 1
            continue
        em += exact_match(prediction, answers)
        f1 += f1_score(prediction, answers)
    return {"EM": em / n if n else 0.0, "F1": f1 / n if n else 0.0, "queries": n, "missing": missing}
