"""The CLI contract users and scripts drive: index -> search -> evaluate, on BM25, dense and hybrid indexes,
with corpus and queries in the field's formats, and one clear error line for bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distillir.cli.main import app, main


@pytest.fixture()
def beir_dir(tmp_path, tiny_corpus, tiny_queries):
    """The tiny data as BEIR files (corpus.jsonl, queries.jsonl, qrels) plus a QA JSONL with answers."""
    with open(tmp_path / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": pid, "title": title, "text": text}) + "\n" for pid, title, text in zip(tiny_corpus.ids, tiny_corpus.titles, tiny_corpus.texts))
    with open(tmp_path / "queries.jsonl", "w") as f:
        f.writelines(json.dumps({"_id": qid, "text": text}) + "\n" for qid, text in zip(tiny_queries.ids, tiny_queries.texts))
    with open(tmp_path / "qa.jsonl", "w") as f:
        f.writelines(json.dumps({"id": qid, "question": text, "answers": answers}) + "\n" for qid, text, answers in zip(tiny_queries.ids, tiny_queries.texts, tiny_queries.answers))
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tp1\t1\nq2\tp2\t1\nq3\tp4\t1\n")
    return tmp_path


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_bm25_index_search_evaluate_qrels_and_answers(beir_dir):
    invoke("index", beir_dir / "corpus.jsonl", "--retriever", "bm25", "--out", beir_dir / "idx", "--no-cache")
    invoke("search", beir_dir / "idx", beir_dir / "queries.jsonl", "--top-k", "3", "--out", beir_dir / "run.trec")
    lines = (beir_dir / "run.trec").read_text().splitlines()
    assert lines and all(len(line.split()) == 6 for line in lines)

    metrics = json.loads(invoke("evaluate", beir_dir / "run.trec", "--qrels", beir_dir / "qrels.tsv", "--json"))
    # Each query's words point at its gold passage, so BM25 ranks all three first.
    assert metrics["MRR@10"] == pytest.approx(1.0)
    assert metrics["queries"] == 3

    answers = json.loads(
        invoke("evaluate", beir_dir / "run.trec", "--answers", beir_dir / "qa.jsonl",
               "--corpus", beir_dir / "corpus.jsonl", "--json", "--k", "1,3")
    )
    assert answers["Top-1"] == pytest.approx(1.0)


def test_jsonl_run_carries_passage_texts(beir_dir):
    invoke("index", beir_dir / "corpus.jsonl", "--retriever", "bm25", "--out", beir_dir / "idx", "--no-cache")
    invoke("search", beir_dir / "idx", beir_dir / "qa.jsonl", "-k", "2", "--out", beir_dir / "run.jsonl",
           "--corpus", beir_dir / "corpus.jsonl")
    rows = [json.loads(line) for line in (beir_dir / "run.jsonl").read_text().splitlines()]
    assert rows[0]["answers"] == ["Paris"]
    assert rows[0]["ctxs"][0]["id"] == "p1" and "France" in rows[0]["ctxs"][0]["text"]


def test_dense_and_hybrid_indexes_search(beir_dir, tiny_bert_dir):
    for kind in ("dense", "hybrid"):
        out = beir_dir / f"idx-{kind}"
        invoke("index", beir_dir / "corpus.jsonl", "--retriever", kind, "--model", tiny_bert_dir, "--out", out,
               "--no-cache")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["kind"] == kind
        invoke("search", out, beir_dir / "queries.jsonl", "-k", "5", "--out", beir_dir / f"{kind}.trec",
               "--corpus", beir_dir / "corpus.jsonl")
        per_query = {}
        for line in (beir_dir / f"{kind}.trec").read_text().splitlines():
            per_query.setdefault(line.split()[0], []).append(line.split()[2])
        assert set(per_query) == {"q1", "q2", "q3"}
        assert all(len(pids) == 5 for pids in per_query.values())  # every passage, since the corpus has 5


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["distillir", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err


def test_bad_input_is_one_error_line_naming_file_and_line(beir_dir, monkeypatch, capsys):
    bad = beir_dir / "bad.trec"
    bad.write_text("q1 Q0 p1 1 0.5 tag\nq1 Q0 p2 2 notanumber tag\n")
    code, err = run_main(monkeypatch, capsys, "evaluate", bad, "--qrels", beir_dir / "qrels.tsv")
    assert code == 2
    assert err.startswith("error: ") and "bad.trec, line 2" in err and "Traceback" not in err


def test_index_refuses_a_corpus_it_was_not_built_from(beir_dir, monkeypatch, capsys):
    invoke("index", beir_dir / "corpus.jsonl", "--retriever", "bm25", "--out", beir_dir / "idx", "--no-cache")
    other = beir_dir / "other.jsonl"
    other.write_text(json.dumps({"_id": "x", "title": "", "text": "something else"}) + "\n")
    code, err = run_main(monkeypatch, capsys, "search", beir_dir / "idx", beir_dir / "queries.jsonl",
                         "--out", beir_dir / "r.trec", "--corpus", other)
    assert code == 2 and "fingerprint" in err
    assert not (beir_dir / "r.trec").exists()


def test_train_rejects_unknown_config_keys(beir_dir, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "train", "dpr", "--defaults", "--set", "trainer.learning_rat=3")
    assert code == 2 and "learning_rate" in err


def test_train_without_a_config_lists_the_shipped_ones(monkeypatch, capsys, tmp_path):
    code, err = run_main(monkeypatch, capsys, "train", "fid-kd", "--set", f"output_dir={tmp_path / 'x'}")
    assert code == 2 and "--defaults" in err and "fid-kd-squad-cpu.yaml" in err and "fid-kd-gpu.yaml" in err
    assert not (tmp_path / "x").exists()


def test_mine_negatives_from_a_run_with_false_negative_control(beir_dir):
    # A run that ranks every passage for every query, in id order (p1 first).
    ids = ["p1", "p2", "p3", "p4", "p5"]
    (beir_dir / "all.trec").write_text("".join(f"{q} Q0 {p} {r + 1} {5 - r} x\n" for q in ("q1", "q2", "q3")
                                               for r, p in enumerate(ids)))
    report = json.loads(invoke("mine", beir_dir / "all.trec", beir_dir / "qa.jsonl", beir_dir / "corpus.jsonl",
                               "--qrels", beir_dir / "qrels.tsv", "--ranks", "0:4", "--per-query", "8", "--top",
                               "--out", beir_dir / "lists.jsonl"))
    rows = {r["qid"]: r for r in map(json.loads, (beir_dir / "lists.jsonl").read_text().splitlines())}
    # Ranks 0-3 are p1..p4; each query's positive is never a negative. q1's answer "Paris" is in p1 (its
    # positive) only; q3's "chemical energy" is in p4 (its positive).
    assert rows["q1"] == {"qid": "q1", "query": "What is the capital of France?", "positives": ["p1"],
                          "negatives": ["p2", "p3", "p4"]}
    assert rows["q2"]["negatives"] == ["p1", "p3", "p4"] and rows["q3"]["negatives"] == ["p1", "p2", "p3"]
    assert report == {"queries": 3, "ranks": [0, 4], "without_negatives": 0, "lists": 3, "negatives": 9}

    # A passage holding an answer string is not a negative; with --keep-answers it is.
    (beir_dir / "qa2.jsonl").write_text(json.dumps({"id": "q2", "question": "Eiffel?", "answers": ["capital"]}) + "\n")
    invoke("mine", beir_dir / "all.trec", beir_dir / "qa2.jsonl", beir_dir / "corpus.jsonl", "--qrels",
           beir_dir / "qrels.tsv", "--ranks", "2", "--top", "--out", beir_dir / "l2.jsonl")
    rows = [json.loads(x) for x in (beir_dir / "l2.jsonl").read_text().splitlines()]
    assert rows == []  # q2's only candidate besides its positive (p1) holds "capital": no negative left
    invoke("mine", beir_dir / "all.trec", beir_dir / "qa2.jsonl", beir_dir / "corpus.jsonl", "--qrels",
           beir_dir / "qrels.tsv", "--ranks", "2", "--top", "--keep-answers", "--out", beir_dir / "l3.jsonl")
    assert json.loads((beir_dir / "l3.jsonl").read_text())["negatives"] == ["p1"]


def test_mine_with_a_ranker_moves_passages_by_threshold(beir_dir, tiny_bert_dir):
    from distillir.rankers.cross_encoder import CrossEncoder

    ids = ["p1", "p2", "p3", "p4", "p5"]
    (beir_dir / "all.trec").write_text("".join(f"q1 Q0 {p} {r + 1} {5 - r} x\n" for r, p in enumerate(ids)))
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64)
    ranker.save_pretrained(beir_dir / "ce")
    corpus = {r["_id"]: r for r in map(json.loads, (beir_dir / "corpus.jsonl").read_text().splitlines())}
    # Scored in one batch of all five, as `mine` scores the window (same padding, so the same logits to the
    # last bit: the untrained head's logits differ by ~1e-5, below batch-composition noise).
    logits = dict(zip(ids, ranker.score_pairs(["What is the capital of France?"] * 5,
                                              [(corpus[p]["title"], corpus[p]["text"]) for p in ids])))
    del logits["p1"]
    ordered = sorted(logits.values())
    cut = (ordered[1] + ordered[2]) / 2  # two candidates below the cut, two above

    def lists(*extra):
        invoke("mine", beir_dir / "all.trec", beir_dir / "queries.jsonl", beir_dir / "corpus.jsonl", "--qrels",
               beir_dir / "qrels.tsv", "--ranker", beir_dir / "ce", "--scale", "logit", "--per-query", "8",
               "--out", beir_dir / "d.jsonl", "--overwrite", *extra)
        return json.loads((beir_dir / "d.jsonl").read_text())

    row = lists("--neg-threshold", str(cut), "--pos-threshold", str(cut + 1e-6))
    assert row["negatives"] == [p for p in ids[1:] if logits[p] <= cut]
    assert set(row["positives"]) == {"p1"} | {p for p in ids[1:] if logits[p] > cut}
    row = lists("--neg-threshold", str(ordered[-1] + 1), "--pos-threshold", str(ordered[-1] + 2))
    assert row["negatives"] == ids[1:] and row["positives"] == ["p1"]
    row = lists("--neg-threshold", str(cut), "--pos-threshold", str(cut + 1e-6), "--no-extra-positives")
    assert row["positives"] == ["p1"]


def test_mine_rejects_a_bad_rank_range(beir_dir):
    (beir_dir / "r.trec").write_text("q1 Q0 p2 1 1.0 x\n")
    result = CliRunner().invoke(app, ["mine", str(beir_dir / "r.trec"), str(beir_dir / "queries.jsonl"),
                                      str(beir_dir / "corpus.jsonl"), "--ranks", "5:2", "--out", str(beir_dir / "x")])
    assert result.exit_code != 0 and "START < END" in result.output
    assert not (beir_dir / "x").exists()


def test_version():
    import distillir

    result = CliRunner().invoke(app, ["--version"], catch_exceptions=False)
    assert result.exit_code == 0 and result.output.strip() == f"distillir {distillir.__version__}"


def test_an_interrupted_train_prints_the_command_that_resumes(monkeypatch, capsys, tmp_path):
    import signal

    from distillir.recipes.dpr import DPRRecipe
    from distillir.training.interrupt import TrainingInterrupted

    def interrupted(self, config, callbacks=()):
        raise TrainingInterrupted(signal.SIGINT, 7, tmp_path / "checkpoints" / "step-7")

    monkeypatch.setattr(DPRRecipe, "run", interrupted)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the repository root: configs/ is relative to it
    code, err = run_main(monkeypatch, capsys, "train", "dpr", "--config", "configs/dpr-scifact-cpu.yaml", "--set",
                         f"output_dir={tmp_path}")
    assert code == 130 and "SIGINT at step 7" in err
    assert f"distillir train dpr --config configs/dpr-scifact-cpu.yaml --set output_dir={tmp_path} --resume" in err


def test_demo_writes_its_report_and_runs(tmp_path, tiny_bert_dir, monkeypatch):
    from distillir.data.toy import write_toy_beir

    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    beir_dir = write_toy_beir(tmp_path / "toy")
    out = tmp_path / "demo"
    printed = invoke("demo", "--dataset", beir_dir, "--split", "test", "--model", tiny_bert_dir, "--dtype", "float32",
                     "--out", out)
    assert f"report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    assert "BM25" in report and "hybrid (RRF)" in report and "distillir demo --dataset" in report
    assert "![Recall against k](plots/recall_at_k.png)" in report
    assert (out / "plots" / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"][0]["retriever"] == "BM25" and "nDCG@10" in metrics["rows"][0]
    assert all((out / f"{name}.trec").read_text() for name in ("bm25", "dense", "hybrid"))
    invoke("demo", "--dataset", beir_dir, "--split", "test", "--model", tiny_bert_dir, "--dtype", "float32",
           "--out", out)  # an earlier demo's output is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(app, ["demo", "--dataset", str(beir_dir), "--split", "test", "--model", tiny_bert_dir,
                                      "--out", str(mine)])
    assert result.exit_code != 0 and (mine / "notes.txt").read_text() == "keep me"
