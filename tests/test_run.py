"""Run: ordering, TREC and JSONL round trips, format detection, and located errors for bad lines."""

from __future__ import annotations

import json

import pytest

from distillir.data.run import Run
from distillir.errors import InputError


def _sample() -> Run:
    # q1 has a tie (0.5) that only the passage id decides; scores need full precision to survive.
    return Run({"q1": [("p3", 0.5), ("p1", 0.5), ("p2", 0.123456789)], "q2": [("p4", -1.25)]}, name="sample")


def test_order_is_score_then_pid():
    assert [pid for pid, _ in _sample()["q1"]] == ["p1", "p3", "p2"]


def test_trec_round_trip_is_exact(tmp_path):
    run = _sample()
    run.write_trec(tmp_path / "r.trec")
    back = Run.read_trec(tmp_path / "r.trec")
    assert back == run
    assert back.name == "r"
    assert Run.read(tmp_path / "r.trec") == run


def test_jsonl_round_trip(tmp_path, tiny_corpus, tiny_queries):
    run = Run({"q1": [("p1", 2.0), ("p3", 1.0)], "q2": [("p2", 0.5)], "qx": [("p5", 0.1)]})
    run.write_jsonl(tmp_path / "r.jsonl", tiny_queries, tiny_corpus)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows[0]["question"] == "What is the capital of France?"
    assert rows[2]["question"] is None  # qx is not among the queries
    assert Run.read_jsonl(tmp_path / "r.jsonl") == run
    assert Run.read(tmp_path / "r.jsonl") == run


def test_jsonl_string_scores_and_missing_scores(tmp_path):
    path = tmp_path / "dpr.jsonl"
    rows = [
        {"id": 7, "ctxs": [{"id": "b", "score": "1.5"}, {"id": "a", "score": "2.5"}]},  # DPR writes strings
        {"id": "q2", "ctxs": [{"id": "z"}, {"id": "y"}, {"id": "x"}]},  # no scores: file order kept
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    run = Run.read(path)
    assert run["7"] == [("a", 2.5), ("b", 1.5)]
    assert [pid for pid, _ in run["q2"]] == ["z", "y", "x"]


def test_read_empty_file_gives_empty_run(tmp_path):
    (tmp_path / "e.trec").write_text("\n")
    assert len(Run.read(tmp_path / "e.trec")) == 0


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Run.read(tmp_path / "nope.trec")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("q1 Q0 p1 1 0.5 t\nq1 Q0 p2 2 0.4\n", 2, "expected 6 columns"),
        ("q1 Q0 p1 1 high t\n", 1, "not a number"),
        ("q1 Q0 p1 1 nan t\n", 1, "NaN"),
        (
            "q1 Q0 p1 1 0.5 t\nq2 Q0 p1 1 0.5 t\n\nq1 Q0 p1 2 0.4 t\n",
            4,
            "listed twice for query 'q1' \\(first on line 1\\)",
        ),
    ],
)
def test_bad_trec_lines(tmp_path, text, line, message):
    path = tmp_path / "bad.trec"
    path.write_text(text)
    with pytest.raises(InputError, match=message) as err:
        Run.read_trec(path)
    assert err.value.line == line
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("rows", "line", "message"),
    [
        (['{"id": "q1", "ctxs": []}', "{not json"], 2, "not valid JSON"),
        (['{"ctxs": []}'], 1, "missing query id"),
        (['{"id": "q1"}'], 1, "list of passages"),
        (['{"id": "q1", "ctxs": [{"score": 1}]}'], 1, "needs an id"),
        (['{"id": "q1", "ctxs": [{"id": "a", "score": 1}, {"id": "a", "score": 2}]}'], 1, "'a' listed twice"),
        (['{"id": "q1", "ctxs": [{"id": "a", "score": 1}, {"id": "b"}]}'], 1, "some passages have a score"),
        (['{"id": "q1", "ctxs": [{"id": "a", "score": "x"}]}'], 1, "not a number"),
        (
            ['{"id": "q1", "ctxs": []}', '{"id": "q2", "ctxs": []}', '{"id": "q1", "ctxs": []}'],
            3,
            "already read on line 1",
        ),
        (["[1, 2]"], 1, "JSON object"),
    ],
)
def test_bad_jsonl_lines(tmp_path, rows, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=message) as err:
        Run.read(path)
    assert err.value.line == line
