"""bench/cotraining.py's claims: per-query answer hits of two runs, paired, against hand-computed values."""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from cotraining import paired_claims, per_query_scores
from cotraining_report import claims_table, verdict

from distillir.data.run import Run


def test_per_query_hits_are_top1_and_top5_answer_matches(tiny_corpus, tiny_queries):
    ds = SimpleNamespace(corpus=tiny_corpus, queries=tiny_queries)
    run = Run({"q1": [("p1", 3.0), ("p2", 2.0)], "q2": [("p3", 2.0), ("p2", 1.0)], "q3": [("p5", 1.0)]})
    scores = per_query_scores(run, ds, "squad-open")
    assert scores == {"Top-1": {"q1": 1.0, "q2": 0.0, "q3": 0.0}, "Top-5": {"q1": 1.0, "q2": 1.0, "q3": 0.0}}


def test_paired_claims_take_second_minus_first_over_the_done_systems(tmp_path, tiny_corpus, tiny_queries):
    ds = SimpleNamespace(corpus=tiny_corpus, queries=tiny_queries)
    (tmp_path / "runs").mkdir()
    Run({"q1": [("p3", 1.0)], "q2": [("p3", 1.0)], "q3": [("p5", 1.0)]}).write_trec(tmp_path / "runs" / "dpr.trec")
    Run({"q1": [("p1", 1.0)], "q2": [("p2", 1.0)], "q3": [("p5", 1.0)]}).write_trec(
        tmp_path / "runs" / "ar2-lambda-0.5.trec")  # AR2's run file keeps its hyphenated name
    res = {"settings": {"dataset": "squad-open"}, "systems": {"dpr": {}, "ar2_lambda_0.5": {}, "minilm": None}}
    claims = paired_claims(res, tmp_path, ds)
    assert [c["claim"] for c in claims] == ["AR2 beats DPR at equal budget"]  # the start (minilm) is not done
    top1 = claims[0]["Top-1"]
    assert (top1["mean_diff"], top1["better"], top1["worse"], top1["queries"]) == (round(2 / 3, 4), 2, 0, 3)
    # differences 1, 1, 0: sd = sqrt(1/3), half-width 1.96 sd / sqrt(3) = 0.6533
    assert top1["half_width"] == 0.6533
    assert verdict(top1) == "held"
    assert verdict({"mean_diff": -0.1, "half_width": 0.05}) == "reversed"
    assert verdict({"mean_diff": 0.01, "half_width": 0.05}) == "not shown"
    table = "\n".join(claims_table({"claims": claims}))
    assert "| AR2 beats DPR at equal budget | +0.667 | 0.653 | +0.667 | 0.653 | 2 / 0 | held |" in table
