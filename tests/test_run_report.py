"""Run reports: the systems a run evaluated, side by side, found in its files whatever the recipe's layout;
training curves and recall@k plots; `distillir report` renders it again."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from distillir.cli.main import app
from distillir.evaluation.run_report import collect, find_metrics, render_run_report, round_series

RESULTS = {
    "recipe": "fid-kd",
    "start_metrics": {"Top-1": 0.5, "Top-5": 0.7, "Top-20": 0.9, "queries": 10},
    "rounds": [
        {"round": 1, "index": {"metrics": {"Top-1": 0.55, "Top-5": 0.75, "Top-20": 0.9}},
         "teacher": {"answer_hits": {"teacher_hit@1": 0.9, "retriever_hit@1": 0.8}}},
        {"round": 2, "index": {"metrics": {"Top-1": 0.6, "Top-5": 0.8, "Top-20": 0.95}}},
    ],
    "metrics": {"Top-1": 0.6, "Top-5": 0.8, "Top-20": 0.95},
    "train": {"loss": 0.3, "global_step": 4},
}


def write_run(out):
    out.mkdir()
    (out / "config.yaml").write_text("output_dir: x\n")
    (out / "results.json").write_text(json.dumps(RESULTS))
    (out / "metrics.json").write_text(json.dumps({"trained": RESULTS["metrics"], "baseline": {"nDCG@10": 0.4, "MRR@10": 0.3}}))
    (out / "round-1" / "retriever").mkdir(parents=True)
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3 * s} for s in (1, 2, 3, 4)]
    (out / "round-1" / "retriever" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    return out


def test_metrics_are_found_and_named_by_where_they_sit():
    found = {" / ".join(path): m for path, m in find_metrics(RESULTS)}
    assert set(found) == {"start_metrics", "round 1 / index / metrics", "round 2 / index / metrics", "metrics"}
    assert found["start_metrics"] == {"Top-1": 0.5, "Top-5": 0.7, "Top-20": 0.9}  # counts are not metrics


def test_collect_reads_both_files_once_and_every_log(tmp_path):
    info = collect(write_run(tmp_path / "run"))
    systems = [r["system"] for r in info["rows"]]
    # metrics.json's "trained" repeats results.json's "metrics": listed once; its baseline is new.
    assert systems == ["start", "round 1 / index", "round 2 / index", "trained", "baseline (before training)"]
    assert list(info["logs"]) == ["round-1/retriever"] and len(info["logs"]["round-1/retriever"]) == 4  # the line a kill cut is dropped
    assert round_series(info["rows"], "Top-5") == {"index": [(1, 0.75), (2, 0.8)]}


def test_the_report_shows_the_table_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    out = write_run(tmp_path / "run")
    text = render_run_report(out).read_text()
    assert "| start " in text and "| round 2 / index " in text and "| baseline (before training) " in text
    assert text.index("Top-1") < text.index("Top-5") < text.index("Top-20") < text.index("nDCG@10")
    assert "| round-1/retriever |     4 |      1.000 |     0.250 |" in text  # the kill-cut last line is skipped
    for name in ("training.png", "recall_at_k.png", "rounds.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"(plots/{name})" in text


def test_distillir_report_renders_again_and_refuses_what_is_not_a_run(tmp_path):
    out = write_run(tmp_path / "run")
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.md").is_file()
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0
