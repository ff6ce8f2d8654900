"""Harness of the bad-input suites (test_bad_input_*.py): a workspace of good tiny files, one case per kind
of bad input, and the checks every case gets — the exit status, one error naming the file (and line/field
where there is one), no traceback, nothing new or half-written left, and the user's files untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CORPUS = [("p1", "Paris", "Paris is the capital and largest city of France."),
          ("p2", "Eiffel Tower", "The Eiffel Tower was completed in 1889 for the World's Fair."),
          ("p3", "Berlin", "Berlin is the capital of Germany."),
          ("p4", "Photosynthesis", "Photosynthesis converts light energy into chemical energy in plants."),
          ("p5", "Mitochondrion", "The mitochondria is the powerhouse of the cell.")]
QUERIES = [("q1", "What is the capital of France?", ["Paris"], "p1"),
           ("q2", "When was the Eiffel Tower completed?", ["1889"], "p2"),
           ("q3", "What do plants use light for?", ["chemical energy"], "p4")]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_workspace(ws: Path, tiny_bert_dir: str | None = None) -> None:
    """Good files, and the indexes and runs made from them by the CLI itself."""
    from typer.testing import CliRunner

    from distillir.cli.main import app

    ws.mkdir(parents=True, exist_ok=True)
    (ws / "corpus.jsonl").write_text(jsonl({"_id": p, "title": t, "text": x} for p, t, x in CORPUS))
    (ws / "corpus.tsv").write_text("id\ttext\ttitle\n" + "".join(f"{p}\t{x}\t{t}\n" for p, t, x in CORPUS))
    # The same texts under other ids: a run over it retrieves as well, and names passages `corpus` lacks.
    (ws / "other.jsonl").write_text(jsonl({"_id": "x" + p, "title": t, "text": x} for p, t, x in CORPUS))
    (ws / "queries.jsonl").write_text(jsonl({"_id": q, "text": t} for q, t, _, _ in QUERIES))
    (ws / "qa.jsonl").write_text(jsonl({"id": q, "question": t, "answers": a, "gold_pid": g} for q, t, a, g in QUERIES))
    (ws / "nogold.jsonl").write_text(jsonl({"id": q, "question": t, "answers": a} for q, t, a, _ in QUERIES))
    (ws / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t, _, _ in QUERIES))
    (ws / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{g}\t1\n" for q, _, _, g in QUERIES))
    (ws / "mini" / "qrels").mkdir(parents=True)  # a BEIR-layout dataset directory
    for name in ("corpus.jsonl", "queries.jsonl"):
        (ws / "mini" / name).write_text((ws / name).read_text())
    (ws / "mini" / "qrels" / "test.tsv").write_text((ws / "qrels.tsv").read_text())
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output

    cli("index", ws / "corpus.jsonl", "--out", ws / "idx", "--no-cache")
    cli("index", ws / "other.jsonl", "--out", ws / "other-idx", "--no-cache")
    cli("search", ws / "idx", ws / "queries.jsonl", "-k", "5", "--out", ws / "run.trec")
    cli("search", ws / "other-idx", ws / "queries.jsonl", "-k", "5", "--out", ws / "other.trec")
    cli("search", ws / "idx", ws / "qa.jsonl", "-k", "5", "--out", ws / "run.jsonl", "--corpus", ws / "corpus.jsonl")
    if tiny_bert_dir is not None:
        cli("index", ws / "corpus.jsonl", "--retriever", "dense", "--model", tiny_bert_dir, "--out", ws / "dense-idx",
            "--no-cache")
    (ws / "user").mkdir()
    (ws / "user" / "notes.txt").write_text("a user's own file\n")
    (ws / "user.txt").write_text("a user's own file\n")


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    """`args` run in the workspace after `setup(ws)`; the error must mention every string of `names`."""

    id: str
    args: list[str]
    names: list[str]
    setup: Callable[[Path], None] | None = None
    code: int = 2
    warns: bool = False  # a warning with a count and exit 0, where skipping is the field's habit
    writes: list[str] = field(default_factory=list)  # outputs a warning case may create


def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    return setup


def run_case(case: Case, ws: Path, monkeypatch, capsys) -> str:
    from distillir.cli.main import main

    if case.setup is not None:
        case.setup(ws)
    before = snapshot(ws)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["distillir", *case.args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code or 0
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "Traceback" not in captured.out, err
    after = snapshot(ws)
    changed = sorted(k for k in before if after.get(k) != before[k])
    new = sorted(k for k in after if k not in before and k not in case.writes)
    assert not changed, f"files changed: {changed}"
    assert not new, f"files left behind: {new}"
    if case.warns:
        assert code == 0, err
        assert "warning:" in err, err
    else:
        assert code == case.code, err
    lowered = " ".join(err.replace("│", " ").split()).lower()  # typer's boxed usage errors wrap lines
    for name in case.names:
        assert name.lower() in lowered, f"{name!r} not in: {err}"
    return err


def copy_workspace(base: Path, target: Path) -> Path:
    shutil.copytree(base, target, symlinks=True)
    return target
