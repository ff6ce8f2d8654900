"""Training lists in a run directory: built once by the main process, written, and read back on resume.

Every list-trained recipe keeps what it trained on as a `distillir.data.negatives` JSONL file (one query, its
positives and its negatives per line), so a resumed run and every other process train on the very same lists.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distillir.data.negatives import (
    TrainingExample,
    answer_positives,
    build_examples,
    mine_negatives,
    positives_from_dataset,
    read_training_lists,
    write_training_lists,
)
from distillir.errors import InputError
from distillir.training.state import process_state
from distillir.utils.log import get_logger

logger = get_logger(__name__)

LISTS_FILE = "train_lists.jsonl"


def read_or_build_lists(path: Path, corpus, resume: bool, build: Callable[[], list[TrainingExample]], *,
                        label: str = "training lists") -> list[TrainingExample]:
    """The lists at `path` when this run wrote them (a resume, or a process other than the main one), else
    `build()`'s, written to `path`. The main process goes first, so the others read what it wrote."""
    state = process_state()
    with state.main_process_first():
        if path.is_file() and (resume or not state.is_main_process):
            logger.info("reading %s from %s", label, path)
            return read_training_lists(path, corpus) if path.stat().st_size else []
        examples = build()
        write_training_lists(path, examples)
        logger.info("wrote %d %s to %s", len(examples), label, path)
        return examples


def keep_with_negatives(examples: list[TrainingExample], what: str) -> list[TrainingExample]:
    """The lists that have a negative (a ranker needs something to contrast with), saying how many were left."""
    kept = [ex for ex in examples if ex.negatives]
    if len(kept) < len(examples):
        logger.warning("%d of %d %s have no negative and are left out", len(examples) - len(kept), len(examples), what)
    return kept


def mined_training_lists(dataset: Any, lists_path: Path, first_stage: Callable, negatives: Any, *, seed: int,
                         resume: bool, require_negatives: bool = False, positives: str = "gold") -> list[TrainingExample]:
    """Training lists for a ranker or retriever: each query's positives and negatives mined from
    `first_stage(queries)`'s run (`negatives`: mined, depth, exclude_answers, sample), or, when `negatives.lists`
    names a file (e.g. from `distillir mine`), that file's lists as given (checked against the corpus; the run
    directory keeps a copy). `positives`: "gold" (qrels or gold ids) or "answer" (the first-stage's best
    answer-bearing passage: distant supervision, no relevance labels read)."""

    def build() -> list[TrainingExample]:
        given = getattr(negatives, "lists", None)
        if given:
            examples = read_training_lists(given, dataset.corpus)
            if require_negatives:
                if not any(ex.negatives for ex in examples):
                    raise InputError(given, "no list has a negative: a ranker needs something to contrast with")
                examples = keep_with_negatives(examples, f"lists in {given}")
            logger.info("using %d training lists from %s", len(examples), given)
            return examples
        if positives == "answer":
            run = first_stage(dataset.queries)
            found = answer_positives(run, dataset.queries, dataset.corpus, depth=negatives.depth)
        else:
            found = positives_from_dataset(dataset)
        queries = dataset.queries.subset([q for q in dataset.queries.ids if q in found])
        if len(queries) < len(dataset.queries):
            logger.warning("%d training queries have no positive passage%s and are left out",
                           len(dataset.queries) - len(queries),
                           " (no answer-bearing passage in the first stage's top ranks)" if positives == "answer" else "")
        mined = mine_negatives(
            run if positives == "answer" else first_stage(queries), queries, dataset.corpus, found, n=negatives.mined,
            rank_range=(0, negatives.depth), exclude_answers=negatives.exclude_answers,
            sample=negatives.sample, seed=seed,
        )
        examples = build_examples(queries, found, mined)
        return keep_with_negatives(examples, "training queries") if require_negatives else examples

    return read_or_build_lists(lists_path, dataset.corpus, resume, build)


def labelled_lists(candidates, is_positive: Callable[[str, str], bool], positives_of=None) -> list[TrainingExample]:
    """Ranker training lists from candidate lists: `candidates` yields (qid, query, pids) in first-stage order;
    a candidate is a positive when `is_positive(qid, pid)` (answer strings or gold ids) and a negative
    otherwise; `positives_of(qid, pids)` gives the positives instead where they need not be candidates.
    Queries without a positive or a negative are left out."""
    examples = []
    for qid, query, pids in candidates:
        pos = positives_of(qid, pids) if positives_of is not None else [p for p in pids if is_positive(qid, p)]
        neg = [p for p in pids if not is_positive(qid, p)]
        if pos and neg:
            examples.append(TrainingExample(qid, query, pos, neg))
    return examples


__all__ = ["LISTS_FILE", "keep_with_negatives", "labelled_lists", "mined_training_lists", "read_or_build_lists"]
