"""Evaluation against hand-computed values: qrels metrics, DPR answer recall, SQuAD EM/F1, tables."""

from __future__ import annotations

import csv
import json
import math
import os
import random
import subprocess
import sys
import unicodedata

import pytest

from distillir.data.answers import AnswerMatcher, answer_recall, dpr_tokens, has_answer
from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import DistillirError, IndexMismatchError
from distillir.evaluation import evaluate_run, format_table
from distillir.evaluation.metrics import evaluate_qrels, gold_mrr, parse_metric, qrels_from_gold
from distillir.evaluation.qa import evaluate_answers, exact_match, f1_score, normalize_answer

# ----------------------------------------------------------------------------------------------
# qrels metrics
# ----------------------------------------------------------------------------------------------
QRELS = {"q1": {"d1": 2, "d3": 1, "d7": 0}, "q2": {"d4": 1}, "q3": {"d5": 1}}


def _run() -> Run:
    return Run(
        {
            # q1 ranks d2, d1, d3, d4: d1 and d3 tie at 0.5 and d1 wins on its id.
            "q1": [("d2", 0.9), ("d3", 0.5), ("d1", 0.5), ("d4", 0.1)],
            # q2: a three-way tie. By id ascending d4 (relevant) is first; trec_eval's own
            # tie-break (id descending) would put it third.
            "q2": [("d6", 0.7), ("d5", 0.7), ("d4", 0.7)],
            # q3 is missing; q9 has no qrels and must be ignored.
            "q9": [("d1", 1.0)],
        }
    )


def test_qrels_metrics_by_hand():
    result = evaluate_qrels(_run(), QRELS, per_query=True)
    # q1: gains 0, 2, 1, 0 -> DCG = 2/log2(3) + 1/log2(4); ideal 2/log2(2) + 1/log2(3).
    ndcg_q1 = (2 / math.log2(3) + 1 / 2) / (2 + 1 / math.log2(3))
    ap_q1 = (1 / 2 + 2 / 3) / 2
    assert result["per_query"]["q1"] == pytest.approx({"nDCG@10": ndcg_q1, "MRR@10": 0.5, "R@100": 1.0, "MAP": ap_q1})
    assert result["per_query"]["q2"] == pytest.approx({"nDCG@10": 1.0, "MRR@10": 1.0, "R@100": 1.0, "MAP": 1.0})
    assert result["per_query"]["q3"] == {"nDCG@10": 0.0, "MRR@10": 0.0, "R@100": 0.0, "MAP": 0.0}
    assert set(result["per_query"]) == {"q1", "q2", "q3"}
    assert result["nDCG@10"] == pytest.approx((ndcg_q1 + 1) / 3)
    assert result["MRR@10"] == pytest.approx(0.5)
    assert result["R@100"] == pytest.approx(2 / 3)
    assert result["MAP"] == pytest.approx((ap_q1 + 1) / 3)
    assert (result["queries"], result["missing"], result["ignored"]) == (3, 1, 1)  # q9: no qrels


def test_run_queries_without_qrels_are_counted_and_said(caplog):
    judged = {q: hits for q, hits in _run().items() if q != "q9"}
    with caplog.at_level("WARNING"):
        assert "ignored" not in evaluate_qrels(judged, QRELS) and not caplog.text
        result = evaluate_qrels(_run(), QRELS)  # q9 has no qrels: not scored, but said
    assert result["ignored"] == 1 and result["queries"] == 3
    assert result["nDCG@10"] == evaluate_qrels(judged, QRELS)["nDCG@10"]
    assert "1 of the run's 3 queries have no qrels" in caplog.text


def test_cutoffs_and_truncated_mrr():
    result = evaluate_qrels(_run(), QRELS, ["R@1", "recall_2", "MRR@1", "P_2", "nDCG@1"])
    assert result["R@1"] == pytest.approx((0 + 1 + 0) / 3)
    assert result["R@2"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert result["MRR@1"] == pytest.approx(1 / 3)  # q1's first hit is at rank 2
    assert result["P@2"] == pytest.approx((1 / 2 + 1 / 2) / 3)
    assert result["nDCG@1"] == pytest.approx((0 + 1 + 0) / 3)
    # recip_rank alone has no cutoff: a hit at rank 11 counts for MRR but not MRR@10.
    deep = Run({"q": [(f"d{i:02d}", -i) for i in range(1, 12)]})
    qrels = {"q": {"d11": 1}}
    assert evaluate_qrels(deep, qrels, ["MRR@10", "recip_rank"]) == pytest.approx(
        {"MRR@10": 0.0, "MRR": 1 / 11, "queries": 1, "missing": 0}
    )


def test_metric_names():
    assert parse_metric("ndcg_cut_10") == parse_metric("nDCG@10")
    assert parse_metric("recip_rank@10").name == "MRR@10"
    assert parse_metric("recall_100").name == "R@100"
    assert parse_metric("map").name == "MAP" and parse_metric("MAP@5").name == "MAP@5"
    for bad in ("ndcg_cut", "bogus", "MRR@0", "xyz@3"):
        with pytest.raises(ValueError):
            parse_metric(bad)


def _reference(run: Run, qrels: dict, k: int) -> dict:
    """Straightforward Python definitions, averaged over qrels queries (missing ones 0)."""
    totals = {"ndcg": 0.0, "rr": 0.0, "recall": 0.0, "ap": 0.0}
    for qid, judged in qrels.items():
        ranked = [pid for pid, _ in run.get(qid, [])]
        rel = {p for p, g in judged.items() if g > 0}
        gains = [judged.get(p, 0) for p in ranked[:k]]
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        totals["ndcg"] += sum(g / math.log2(i + 2) for i, g in enumerate(gains)) / idcg if idcg else 0.0
        totals["rr"] += next((1 / (i + 1) for i, p in enumerate(ranked[:k]) if p in rel), 0.0)
        totals["recall"] += len(rel & set(ranked[:k])) / len(rel) if rel else 0.0
        hits, precisions = 0, []
        for i, p in enumerate(ranked):
            if p in rel:
                hits += 1
                precisions.append(hits / (i + 1))
        totals["ap"] += sum(precisions) / len(rel) if rel else 0.0
    return {name: value / len(qrels) for name, value in totals.items()}


def test_pytrec_eval_matches_reference_with_many_ties():
    rng = random.Random(13)
    docs = [f"d{i:02d}" for i in range(30)]
    # Scores rounded to one decimal: plenty of ties, which only the id tie-break orders.
    run = Run({f"q{q}": [(d, round(rng.random(), 1)) for d in rng.sample(docs, 20)] for q in range(12)})
    qrels = {f"q{q}": {d: rng.choice([0, 1, 1, 2]) for d in rng.sample(docs, 4)} for q in range(14)}
    got = evaluate_qrels(run, qrels, ["nDCG@5", "MRR@5", "R@5", "MAP"])
    want = _reference(run, qrels, 5)
    assert got["nDCG@5"] == pytest.approx(want["ndcg"])
    assert got["MRR@5"] == pytest.approx(want["rr"])
    assert got["R@5"] == pytest.approx(want["recall"])
    assert got["MAP"] == pytest.approx(want["ap"])
    assert got["missing"] == 2


def test_gold_mrr(tiny_queries):
    run = Run({"q1": [("p2", 2), ("p1", 1)], "q2": [("p2", 1)]})
    assert qrels_from_gold(tiny_queries) == {"q1": {"p1": 1}, "q2": {"p2": 1}, "q3": {"p4": 1}}
    assert gold_mrr(run, tiny_queries) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert gold_mrr(run, {"q1": ["p1"], "q2": None}, k=1) == 0.0


# ----------------------------------------------------------------------------------------------
# DPR answer recall
# ----------------------------------------------------------------------------------------------
def test_dpr_tokens_split_punctuation_and_keep_marks():
    assert dpr_tokens("The U.S. Army's 1st") == ["the", "u", ".", "s", ".", "army", "'", "s", "1st"]
    assert dpr_tokens("Élysée") == [unicodedata.normalize("NFD", "élysée")]


@pytest.mark.parametrize(
    ("answer", "text", "expected"),
    [
        ("Élysée", "the ÉLYSÉE palace", True),
        ("Élysée", unicodedata.normalize("NFD", "at the Élysée."), True),  # composed vs decomposed
        ("elysee", "the Élysée palace", False),  # DPR keeps accents (as combining marks)
        ("U.S.", "the U.S. Army", True),
        ("U.S.", "the US Army", False),
        ("US", "the U.S. Army", False),
        ("u.s", "the U.S. Army", True),  # a contiguous token run: u . s
        ("Paris", "Parisian cafés", False),  # whole tokens only
        ("capital of France", "Paris, capital of  France!", True),
        ("", "anything", False),  # an empty answer matches nothing
    ],
)
def test_has_answer(answer, text, expected):
    assert has_answer([answer], text) is expected


def test_has_answer_title_is_optional():
    assert not has_answer(["Eiffel"], "completed in 1889", title="Eiffel Tower")
    assert has_answer(["Eiffel"], "completed in 1889", title="Eiffel Tower", include_title=True)


def test_answer_recall(tiny_corpus, tiny_queries):
    # q1: Paris appears at rank 2; q2: 1889 at rank 1; q3 is missing from the run.
    run = Run({"q1": [("p3", 3), ("p1", 2), ("p2", 1)], "q2": [("p2", 1)], "other": [("p1", 1)]})
    result = answer_recall(run, tiny_queries, tiny_corpus, ks=(1, 2, 5))
    assert result == pytest.approx({"Top-1": 1 / 3, "Top-2": 2 / 3, "Top-5": 2 / 3, "queries": 3, "missing": 1})
    # The title "Eiffel Tower" holds no answer; with titles on, "Paris" (title of p1) still only hits at rank 2.
    assert answer_recall(run, tiny_queries, tiny_corpus, ks=(1,), include_title=True)["Top-1"] == pytest.approx(1 / 3)


def test_answer_recall_rejects_unknown_passages(tiny_corpus, tiny_queries):
    with pytest.raises(IndexMismatchError, match="'p99'"):
        answer_recall(Run({"q1": [("p99", 1)]}), tiny_queries, tiny_corpus)


def test_matcher_caches_only_passages_it_reads(tiny_corpus):
    matcher = AnswerMatcher(tiny_corpus)
    assert matcher.first_hit(["Germany"], ["p1", "p3", "p5"]) == 1
    assert matcher.hits(["energy"], ["p4", "p5"]) == [True, False]
    assert set(matcher._passages) == {"p1", "p3", "p4", "p5"}


def test_gold_paragraphs_contain_their_answers(shared_data):
    """On real SQuAD data the gold paragraph of nearly every question holds its answer span."""
    root = os.path.join(shared_data, "squad-open")
    with open(os.path.join(root, "dev.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(300)]
    wanted = {r["gold_pid"] for r in rows}
    ids, texts, titles = [], [], []
    with open(os.path.join(root, "corpus.tsv"), encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if rec["id"] in wanted:
                ids.append(rec["id"]), texts.append(rec["text"]), titles.append(rec["title"])
    corpus = Corpus(ids, texts, titles)
    queries = Queries([r["id"] for r in rows], [r["question"] for r in rows], [r["answers"] for r in rows])
    run = Run({r["id"]: [(r["gold_pid"], 1.0)] for r in rows})
    assert answer_recall(run, queries, corpus, ks=(1,))["Top-1"] > 0.97


# ----------------------------------------------------------------------------------------------
# SQuAD EM / F1
# ----------------------------------------------------------------------------------------------
def test_normalize_answer():
    assert normalize_answer("The  Cat!") == "cat"
    assert normalize_answer("an apple, a pear & the theatre") == "apple pear theatre"
    assert normalize_answer("U.S.") == "us"


def test_exact_match_and_f1():
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # "Denver Broncos won" vs "Denver Broncos": precision 2/3, recall 1 -> F1 0.8.
    assert f1_score("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)
    # Best over gold answers: vs "Broncos" precision 1/2, recall 1 -> 2/3; vs "Carolina Panthers" 0.
    assert f1_score("the Broncos team", ["Carolina Panthers", "Broncos"]) == pytest.approx(2 / 3)
    # Repeated tokens count by multiplicity: "x x y" and "x y y" share one x and one y.
    assert f1_score("x x y", ["x y y"]) == pytest.approx(2 / 3)
    assert f1_score("the", ["a"]) == 0.0  # both normalise to empty: 0, as in SQuAD v1.1
    assert exact_match("anything", []) == 0.0


def test_evaluate_answers(tiny_queries):
    predictions = {"q1": "paris.", "q2": "in 1889 or so", "extra": "ignored"}
    result = evaluate_answers(predictions, tiny_queries)
    # q1: EM 1 F1 1; q2: EM 0, F1 = 2*(1/4)*1/(1/4+1) = 0.4; q3 missing: 0.
    assert result == pytest.approx({"EM": 1 / 3, "F1": (1 + 0.4) / 3, "queries": 3, "missing": 1})


# ----------------------------------------------------------------------------------------------
# evaluate_run and tables
# ----------------------------------------------------------------------------------------------
def test_evaluate_run_combines_what_inputs_allow(tiny_corpus, tiny_queries):
    run = Run({"q1": [("p3", 3), ("p1", 2)], "q2": [("p2", 1)], "q3": [("p5", 1)]})
    qa = evaluate_run(run, queries=tiny_queries, corpus=tiny_corpus, ks=(1, 5))
    assert qa == pytest.approx(
        {
            "MRR@10": (1 / 2 + 1 + 0) / 3,
            "R@1": 1 / 3,
            "R@5": 2 / 3,
            "queries": 3,
            "missing": 0,
            "Top-1": 1 / 3,
            "Top-5": 2 / 3,
        }
    )
    with_qrels = evaluate_run(run, qrels={"q1": {"p3": 1}}, queries=tiny_queries, corpus=tiny_corpus, ks=(1,))
    assert with_qrels["nDCG@10"] == 1.0 and with_qrels["MAP"] == 1.0 and with_qrels["R@1"] == 1.0
    assert with_qrels["queries"] == 1 and with_qrels["queries (answers)"] == 3
    with pytest.raises(DistillirError, match="nothing to evaluate"):
        evaluate_run(run)


def test_format_table():
    rows = [{"model": "bm25", "nDCG@10": 0.66123, "queries": 300}, {"model": "a|b", "nDCG@10": None, "queries": 3}]
    assert format_table(rows, ["model", "nDCG@10", "queries"]).splitlines() == (
        [
            "| model | nDCG@10 | queries |",
            "|-------|--------:|--------:|",
            "| bm25  |   0.661 |     300 |",
            "| a\\|b  |         |       3 |",
        ]
    )
    assert format_table([{"x": 1.5}], digits=1).splitlines()[-1] == "| 1.5 |"


def test_importing_run_stays_light():
    code = "import sys, distillir.evaluation; print('pytrec_eval' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "False",
    ]


def test_top1_concentration_counts_first_hits_and_flags_collapse():
    from distillir.evaluation import top1_concentration

    # 60 queries: 40 rank "hub" first (the hits are given out of order), 20 rank their own passage first.
    run = Run({f"q{i}": [("own", 0.1), ("hub", 0.9)] if i < 40 else [(f"p{i}", 2.0), ("hub", 1.0)]
               for i in range(60)})
    found = top1_concentration(run)
    assert found["queries"] == 60
    assert found["distinct_top1"] == 21
    assert found["top1_max_pid"] == "hub"
    assert found["top1_max_share"] == pytest.approx(40 / 60)
    assert found["collapsed"] is True

    spread = Run({f"q{i}": [(f"p{i % 10}", 1.0)] for i in range(60)})  # 10 passages, 6 queries each
    found = top1_concentration(spread)
    assert (found["distinct_top1"], found["top1_max_share"], found["collapsed"]) == (10, pytest.approx(0.1), False)

    few = Run({"a": [("hub", 1.0)], "b": [("hub", 1.0)], "c": []})  # too few queries to call it collapse
    assert top1_concentration(few)["collapsed"] is False
    assert top1_concentration(few)["queries"] == 2
