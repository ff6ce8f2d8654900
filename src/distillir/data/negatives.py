"""Hard negatives mined from any run, and the training lists recipes train on.

A hard negative is a passage a retriever ranks high that is not relevant. Mining one naively also picks up
*false* negatives: relevant passages nobody labelled. Three controls, all on by default where data allows:
known positives are never negatives; passages containing an answer string are dropped (DPR's rule, when
the queries have answers); and, given re-ranker scores, passages the re-ranker scores above `max_score`
are dropped (RocketQA's denoising).

Training lists are JSONL, one query a line, so they can be read, grepped and diffed:
    {"qid": "q1", "query": "...", "positives": ["p1"], "negatives": ["p7", "p3"]}
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distillir.data.answers import AnswerMatcher
from distillir.data.types import Corpus, Dataset, Qrels, Queries
from distillir.errors import ConfigError, InputError
from distillir.utils.io import atomic_write, iter_jsonl_objects
from distillir.utils.log import get_logger

logger = get_logger(__name__)


@dataclass
class TrainingExample:
    """One query with its positive passages and its negatives (passage ids), as recipes consume them."""

    qid: str
    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)


def relevant_passages(queries: Queries, qrels: Qrels | None = None, min_relevance: int = 1) -> dict[str, set[str]]:
    """Relevant passage ids per query: from `qrels` (relevance >= min_relevance) when given, else from the
    queries' gold passage ids. Queries with neither are left out."""
    if qrels:
        judged = ((qid, {pid for pid, rel in docs.items() if rel >= min_relevance}) for qid, docs in qrels.items())
    else:
        judged = ((qid, set(gold or ())) for qid, gold in zip(queries.ids, queries.gold_ids))
    return {qid: pids for qid, pids in judged if pids}


def positives_from_dataset(dataset: Dataset, min_relevance: int = 1) -> dict[str, set[str]]:
    """Relevant passage ids per query of a split (`relevant_passages` of its queries and qrels).

    Queries with neither are left out. Raises InputError when the split has no relevance information at all.
    """
    positives = relevant_passages(dataset.queries, dataset.qrels, min_relevance)
    if not positives:
        raise InputError(
            dataset.queries.source or dataset.name,
            f"split {dataset.split!r} has no qrels and no gold passage ids: there is nothing to train on",
        )
    return positives


def answer_positives(run: Mapping[str, list[tuple[str, float]]], queries: Queries, corpus: Corpus,
                     depth: int = 100, per_query: int = 1) -> dict[str, set[str]]:
    """Distant supervision from question-answer pairs alone (DPR, Karpukhin et al. 2020, §5.2): each query's
    `per_query` best-ranked passages of `run`'s top-`depth` that contain one of its answer strings. Queries
    without an answer, or without such a passage, are left out. No relevance label is read."""
    from distillir.data.answers import has_answer

    out: dict[str, set[str]] = {}
    for qid, answers in zip(queries.ids, queries.answers):
        if not answers:
            continue
        found = [pid for pid, _ in run.get(qid, [])[:depth]
                 if has_answer(answers, corpus.texts[corpus.index_of[pid]])][:per_query]
        if found:
            out[qid] = set(found)
    return out


def mine_negatives(
    run: Mapping[str, list[tuple[str, float]]],
    queries: Queries,
    corpus: Corpus,
    positives: Mapping[str, Iterable[str]],
    n: int = 8,
    rank_range: tuple[int, int] = (0, 100),
    *,
    exclude_answers: bool = True,
    rerank_scores: Mapping[str, Mapping[str, float]] | None = None,
    max_score: float | None = None,
    sample: bool = True,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Up to `n` negatives per query of `queries`, taken from ranks [start, end) of its run (0-based).

    Excluded: the query's positives; with `exclude_answers`, passages containing one of the query's answers
    (queries without answers skip this test); with `rerank_scores` and `max_score`, passages whose re-ranker
    score exceeds `max_score` (passages the re-ranker did not score are kept).
    `sample=True` draws `n` at random from what is left (seeded per query by (seed, qid), so the result does
    not depend on query order); `sample=False` keeps the `n` best ranked. Negatives are returned in rank
    order. Queries missing from the run get an empty list.
    """
    start, end = rank_range
    if not 0 <= start < end:
        raise ConfigError(f"rank_range must be (start, end) with 0 <= start < end, got {rank_range}")
    if n < 0:
        raise ConfigError(f"n must not be negative, got {n}")
    if max_score is not None and rerank_scores is None:
        raise ConfigError("max_score filters on re-ranker scores: pass rerank_scores too")
    matcher = None
    if exclude_answers and queries.has_answers:
        matcher = AnswerMatcher(corpus)

    mined: dict[str, list[str]] = {}
    dropped = {"positive": 0, "answer": 0, "reranker": 0}
    short = 0
    for qid, answers in zip(queries.ids, queries.answers):
        hits = run.get(qid)
        if hits is None:
            mined[qid] = []
            continue
        known = set(positives.get(qid, ()))
        candidates = []
        for pid, _ in hits[start:end]:
            if pid in known:
                dropped["positive"] += 1
            elif max_score is not None and rerank_scores.get(qid, {}).get(pid, float("-inf")) > max_score:
                dropped["reranker"] += 1
            else:
                candidates.append(pid)
        if matcher is not None and answers:
            contains = matcher.hits(answers, candidates)
            dropped["answer"] += sum(contains)
            candidates = [pid for pid, hit in zip(candidates, contains) if not hit]
        if len(candidates) > n:
            if sample:
                rng = random.Random(f"{seed}/{qid}")
                keep = set(rng.sample(range(len(candidates)), n))
                candidates = [pid for i, pid in enumerate(candidates) if i in keep]
            else:
                candidates = candidates[:n]
        short += len(candidates) < n
        mined[qid] = candidates
    logger.info(
        "mined negatives for %d queries from ranks %d-%d: dropped %d positives, %d answer-containing, %d by "
        "re-ranker score; %d queries got fewer than %d", len(mined), start, end, dropped["positive"],
        dropped["answer"], dropped["reranker"], short, n,
    )
    return mined


def build_examples(
    queries: Queries, positives: Mapping[str, Iterable[str]], negatives: Mapping[str, list[str]] | None = None
) -> list[TrainingExample]:
    """A TrainingExample for each query that has a positive, in the order of `queries`."""
    examples = []
    for qid, text in zip(queries.ids, queries.texts):
        pos = sorted(positives.get(qid, ()))
        if pos:
            examples.append(TrainingExample(qid, text, pos, list((negatives or {}).get(qid, []))))
    return examples


def write_training_lists(path: str | Path, examples: Iterable[TrainingExample]) -> Path:
    """Write examples as JSONL (atomically): {"qid", "query", "positives", "negatives"} per line."""
    path = Path(path)
    with atomic_write(path) as f:
        for ex in examples:
            row = {"qid": ex.qid, "query": ex.query, "positives": list(ex.positives), "negatives": list(ex.negatives)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_training_lists(path: str | Path, corpus: Corpus | None = None) -> list[TrainingExample]:
    """Read lists written by `write_training_lists` (or by hand). With `corpus`, every passage id must be in it."""
    path = Path(path)
    examples = []
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl_objects(path, "training lists file"):
        qid = _field(path, lineno, row, "qid", (str, int))
        query = _field(path, lineno, row, "query", (str,))
        pos = _id_list(path, lineno, row, "positives", required=True)
        neg = _id_list(path, lineno, row, "negatives", required=False)
        qid = str(qid)
        if qid in seen:
            raise InputError(path, f"query id {qid!r} repeats line {seen[qid]}", line=lineno, field="qid")
        seen[qid] = lineno
        if not pos:
            raise InputError(path, "a training query needs at least one positive", line=lineno, field="positives")
        if corpus is not None:
            for name, ids in (("positives", pos), ("negatives", neg)):
                unknown = [pid for pid in ids if pid not in corpus]
                if unknown:
                    raise InputError(
                        path, f"passage id {unknown[0]!r} is not in the corpus ({corpus.source})",
                        line=lineno, field=name,
                    )
        examples.append(TrainingExample(qid, query, pos, neg))
    if not examples:
        raise InputError(path, "no training examples in the file")
    return examples


def _field(path: Path, lineno: int, row: dict, name: str, types: tuple[type, ...]):
    if name not in row:
        raise InputError(path, "missing", line=lineno, field=name)
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise InputError(path, f"expected {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}",
                         line=lineno, field=name)
    return value


def _id_list(path: Path, lineno: int, row: dict, name: str, *, required: bool) -> list[str]:
    if name not in row:
        if required:
            raise InputError(path, "missing", line=lineno, field=name)
        return []
    value = row[name]
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        raise InputError(path, "expected a list of passage ids", line=lineno, field=name)
    return [str(v) for v in value]
