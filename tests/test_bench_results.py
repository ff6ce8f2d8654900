"""Every benchmark result carries the top-level `summary` the README tables and tools read."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from _common import check_summary, summary_row

RESULTS = sorted((BENCH / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_every_result_has_a_summary(path):
    data = json.loads(path.read_text())
    check_summary(path.stem, data)
    assert data["summary"], f"{path.name}: summary is empty"
    assert all(row["metrics"] for row in data["summary"]), f"{path.name}: a summary row has no metrics"


def test_summary_row_keeps_named_numeric_metrics_in_order():
    row = summary_row("BM25", "scifact", "test", False, {"MRR@10": 0.5, "nDCG@10": 0.6, "note": "x", "n": True},
                      ("nDCG@10", "MRR@10", "n", "note", "R@100"))
    assert row == {"system": "BM25", "dataset": "scifact", "split": "test", "labels_used": False,
                   "metrics": {"nDCG@10": 0.6, "MRR@10": 0.5}}
    assert list(row["metrics"]) == ["nDCG@10", "MRR@10"]


@pytest.mark.parametrize("data, message", [
    ({}, "must be a list"),
    ({"summary": [{"system": "x", "dataset": "d", "split": "s", "metrics": {}}]}, "lacks labels_used"),
    ({"summary": [{"system": "x", "dataset": "d", "split": "s", "labels_used": "no", "metrics": {}}]},
     "labels_used must be true/false"),
    ({"summary": [{"system": "x", "dataset": "d", "split": "s", "labels_used": False, "metrics": {"Top-1": "0.5"}}]},
     "non-numeric metrics Top-1"),
])
def test_check_summary_names_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        check_summary("bench", data)
