"""Hard-negative mining (false-negative controls, determinism) and the JSONL training lists."""

from __future__ import annotations

import json

import pytest

from distillir.data.negatives import (
    TrainingExample,
    build_examples,
    mine_negatives,
    positives_from_dataset,
    read_training_lists,
    write_training_lists,
)
from distillir.data.run import Run
from distillir.data.types import Corpus, Dataset, Queries
from distillir.errors import ConfigError, InputError


@pytest.fixture()
def corpus():
    texts = {
        "p1": "Paris is the capital of France.",
        "p2": "Lyon is a city in France.",
        "p3": "Marseille is a port.",
        "p4": "The capital of France, Paris, has many museums.",  # contains the answer: a false negative
        "p5": "Berlin is in Germany.",
        "p6": "Rome is in Italy.",
    }
    return Corpus(list(texts), list(texts.values()), [""] * len(texts), source="<test>")


@pytest.fixture()
def queries():
    return Queries(["q1", "q2"], ["capital of France?", "a city in Italy?"], answers=[["Paris"], None])


@pytest.fixture()
def run():
    return Run({
        "q1": [("p1", 9.0), ("p4", 8.0), ("p2", 7.0), ("p3", 6.0), ("p5", 5.0), ("p6", 4.0)],
        "q2": [("p6", 3.0), ("p5", 2.0), ("p1", 1.0)],
    })


def test_positives_answers_and_rank_range_are_respected(run, queries, corpus):
    mined = mine_negatives(run, queries, corpus, {"q1": {"p1"}, "q2": {"p6"}}, n=10, rank_range=(0, 5), sample=False)
    assert mined["q1"] == ["p2", "p3", "p5"]  # p1 positive, p4 holds "Paris", p6 beyond rank 5
    assert mined["q2"] == ["p5", "p1"]  # no answers known: only the positive is removed
    kept = mine_negatives(run, queries, corpus, {"q1": {"p1"}}, n=10, rank_range=(1, 3), exclude_answers=False,
                          sample=False)
    assert kept["q1"] == ["p4", "p2"]


def test_sampling_is_seeded_per_query_and_returned_in_rank_order(run, queries, corpus):
    a = mine_negatives(run, queries, corpus, {"q1": {"p1"}}, n=2, seed=3)
    b = mine_negatives(run, queries.subset(["q2", "q1"]), corpus, {"q1": {"p1"}}, n=2, seed=3)
    assert a["q1"] == b["q1"] and len(a["q1"]) == 2
    order = ["p2", "p3", "p5", "p6"]
    assert a["q1"] == sorted(a["q1"], key=order.index)
    draws = {tuple(mine_negatives(run, queries, corpus, {"q1": {"p1"}}, n=2, seed=s)["q1"]) for s in range(20)}
    assert len(draws) > 1
    top = mine_negatives(run, queries, corpus, {"q1": {"p1"}}, n=2, sample=False)
    assert top["q1"] == ["p2", "p3"]


def test_reranker_threshold_drops_likely_positives(run, queries, corpus):
    scores = {"q1": {"p2": 0.95, "p3": 0.1}}
    mined = mine_negatives(run, queries, corpus, {"q1": {"p1"}}, n=10, rerank_scores=scores, max_score=0.9,
                           sample=False)
    assert mined["q1"] == ["p3", "p5", "p6"]  # p2 scored above 0.9; unscored p5, p6 kept
    with pytest.raises(ConfigError, match="rerank_scores"):
        mine_negatives(run, queries, corpus, {}, max_score=0.5)
    with pytest.raises(ConfigError, match="rank_range"):
        mine_negatives(run, queries, corpus, {}, rank_range=(5, 5))


def test_query_missing_from_run_gets_no_negatives(queries, corpus):
    assert mine_negatives(Run({}), queries, corpus, {}, n=3) == {"q1": [], "q2": []}


def test_positives_from_qrels_or_gold_ids(corpus):
    qs = Queries(["q1", "q2"], ["a", "b"], gold_ids=[["p1"], None])
    with_qrels = Dataset("d", "train", corpus, qs, {"q1": {"p2": 1, "p3": 0}, "q2": {"p4": 2}})
    assert positives_from_dataset(with_qrels) == {"q1": {"p2"}, "q2": {"p4"}}
    gold_only = Dataset("d", "train", corpus, qs, None)
    assert positives_from_dataset(gold_only) == {"q1": {"p1"}}
    with pytest.raises(InputError, match="nothing to train on"):
        positives_from_dataset(Dataset("d", "train", corpus, Queries(["q"], ["x"]), None))


def test_training_lists_round_trip(tmp_path, queries, corpus):
    examples = build_examples(queries, {"q1": {"p1"}}, {"q1": ["p2", "p3"]})
    assert examples == [TrainingExample("q1", "capital of France?", ["p1"], ["p2", "p3"])]  # q2: no positive
    path = write_training_lists(tmp_path / "lists.jsonl", examples)
    assert json.loads(path.read_text()) == {"qid": "q1", "query": "capital of France?", "positives": ["p1"],
                                            "negatives": ["p2", "p3"]}
    assert read_training_lists(path, corpus) == examples


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"line 2: invalid JSON"),
        ('{"query": "x", "positives": ["p1"]}', r"line 2, field 'qid': missing"),
        ('{"qid": "b", "query": "x", "positives": "p1"}', r"line 2, field 'positives': expected a list"),
        ('{"qid": "b", "query": "x", "positives": []}', r"line 2, field 'positives': .*at least one positive"),
        ('{"qid": "a", "query": "x", "positives": ["p1"]}', r"line 2, field 'qid': query id 'a' repeats line 1"),
        ('{"qid": "b", "query": "x", "positives": ["p1"], "negatives": ["zz"]}', r"field 'negatives'.*'zz'"),
    ],
)
def test_bad_training_lists_are_located(tmp_path, corpus, line, expected):
    path = tmp_path / "lists.jsonl"
    path.write_text('{"qid": "a", "query": "q", "positives": ["p1"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=expected):
        read_training_lists(path, corpus)
