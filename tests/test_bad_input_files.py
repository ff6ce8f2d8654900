"""Bad input beyond the data commands: configs through `distillir train`, and the files the library reads
(teacher scores, training lists, checkpoints, model directories, the output paths it writes). Each case: one
clear error naming the file (line, field), no traceback, nothing new or half-written, the user's files as
they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input import Case, copy_workspace, run_case, snapshot, write, write_workspace

from distillir.errors import DistillirError

TRAIN = ["train", "dpr", "--config", "cfg.yaml"]
GOOD_CFG = "output_dir: out\ndata:\n  dataset: corpus-dir\n"

CONFIG_CASES = [
    Case("train-unknown-recipe", ["train", "nosuchrecipe", "--defaults"], ["nosuchrecipe"]),
    Case("train-config-missing", ["train", "dpr", "--config", "nope.yaml"], ["nope.yaml"]),
    Case("train-config-invalid-yaml", TRAIN, ["cfg.yaml", "line"], write("cfg.yaml", "trainer: [1, 2\n")),
    Case("train-config-not-a-mapping", TRAIN, ["cfg.yaml", "mapping"], write("cfg.yaml", "- a\n- b\n")),
    Case("train-config-unknown-key", TRAIN, ["trainer.learning_rat", "learning_rate"],
         write("cfg.yaml", "trainer:\n  learning_rat: 3\n")),
    Case("train-config-wrong-type", TRAIN, ["trainer.max_steps"], write("cfg.yaml", "trainer:\n  max_steps: many\n")),
    Case("train-set-without-equals", ["train", "dpr", "--defaults", "--set", "trainer.max_steps"], ["trainer.max_steps", "="]),
    Case("train-set-unknown-key", ["train", "dpr", "--defaults", "--set", "nope=1"], ["nope"]),
    Case("train-set-wrong-type", ["train", "dpr", "--defaults", "--set", "trainer.learning_rate=fast"],
         ["trainer.learning_rate"]),
    Case("train-set-negative-steps", ["train", "dpr", "--defaults", "--set", "trainer.max_steps=-3"], ["max_steps"]),
    Case("train-no-config", ["train", "dpr"], ["--config", "--defaults"]),
    Case("train-dataset-missing", ["train", "dpr", "--defaults", "--set", "data.dataset=nope/data",
                                   "--set", "output_dir=out"], ["nope/data"]),
    Case("train-output-is-a-file", ["train", "dpr", "--defaults", "--set", "output_dir=user.txt"], ["user.txt"]),
    Case("train-output-holds-another-run", ["train", "dpr", "--defaults", "--set", "output_dir=user"], ["user"]),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad-files") / "ws"
    write_workspace(base)
    return base


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_config_gets_one_clear_error_and_touches_nothing(case, workspace, tmp_path, monkeypatch, capsys):
    run_case(case, copy_workspace(workspace, tmp_path / "ws"), monkeypatch, capsys)


# ------------------------------------------------------------------------------- files the library reads

def _teacher(ws: Path, text: str):
    from distillir.data.loaders import load_corpus
    from distillir.teachers.scores import read_teacher_scores

    (ws / "t.jsonl").write_text(text)
    return lambda: read_teacher_scores(ws / "t.jsonl", corpus=load_corpus(ws / "corpus.jsonl"))


def _lists(ws: Path, text: str):
    from distillir.data.loaders import load_corpus
    from distillir.data.negatives import read_training_lists

    (ws / "l.jsonl").write_text(text)
    return lambda: read_training_lists(ws / "l.jsonl", corpus=load_corpus(ws / "corpus.jsonl"))


T = '{"qid": "q1", "pids": ["p1", "p2"], "scores": [1.0, 0.5]}\n'
L = '{"qid": "q1", "query": "a?", "positives": ["p1"], "negatives": ["p2"]}\n'
LIBRARY_CASES = {
    "teacher-invalid-json": (lambda ws: _teacher(ws, T + "{oops\n"), ["t.jsonl", "line 2", "json"]),
    "teacher-missing-scores": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["p1"]}\n'), ["t.jsonl", "line 1", "scores"]),
    "teacher-pids-not-list": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": "p1", "scores": [1]}\n'), ["t.jsonl", "pids"]),
    "teacher-scores-text": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["p1"], "scores": ["hi"]}\n'),
                            ["t.jsonl", "line 1", "scores"]),
    "teacher-lengths-differ": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["p1", "p2"], "scores": [1]}\n'),
                               ["t.jsonl", "line 1"]),
    "teacher-score-nan": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["p1"], "scores": [NaN]}\n'), ["t.jsonl", "line 1"]),
    "teacher-duplicate-qid": (lambda ws: _teacher(ws, T + T), ["t.jsonl", "line 2", "qid"]),
    "teacher-unknown-passage": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["zz"], "scores": [1]}\n'),
                                ["t.jsonl", "line 1", "zz"]),
    "teacher-name-not-string": (lambda ws: _teacher(ws, '{"qid": "q1", "pids": ["p1"], "scores": [1], "teacher": 3}\n'),
                                ["t.jsonl", "teacher"]),
    "teacher-empty-file": (lambda ws: _teacher(ws, ""), ["t.jsonl"]),
    "lists-invalid-json": (lambda ws: _lists(ws, L + "[\n"), ["l.jsonl", "line 2"]),
    "lists-missing-positives": (lambda ws: _lists(ws, '{"qid": "q1", "query": "a?"}\n'), ["l.jsonl", "positives"]),
    "lists-no-positive": (lambda ws: _lists(ws, '{"qid": "q1", "query": "a?", "positives": []}\n'), ["l.jsonl", "positive"]),
    "lists-repeated-qid": (lambda ws: _lists(ws, L + L), ["l.jsonl", "line 2", "q1"]),
    "lists-query-not-string": (lambda ws: _lists(ws, '{"qid": "q1", "query": 5, "positives": ["p1"]}\n'), ["l.jsonl", "query"]),
    "lists-unknown-negative": (lambda ws: _lists(ws, '{"qid": "q1", "query": "a?", "positives": ["p1"], "negatives": ["zz"]}\n'),
                               ["l.jsonl", "negatives", "zz"]),
    "lists-empty-file": (lambda ws: _lists(ws, "\n"), ["l.jsonl", "no training examples"]),
}


def _model_case(ws: Path, kind: str, setup):
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.retrievers.dense.encoder import BiEncoder

    setup(ws)
    load = BiEncoder.from_pretrained if kind == "encoder" else CrossEncoder.from_pretrained
    return lambda: load(str(ws / "m"))


LIBRARY_CASES |= {
    "encoder-dir-empty": (lambda ws: _model_case(ws, "encoder", lambda w: (w / "m").mkdir()), ["m", "config.json"]),
    "encoder-dir-user-files": (lambda ws: _model_case(ws, "encoder", lambda w: (w / "m").mkdir() or (w / "m" / "a.txt").write_text("x")),
                               ["m", "not a model directory"]),
    "ranker-dir-empty": (lambda ws: _model_case(ws, "ranker", lambda w: (w / "m").mkdir()), ["m", "config.json"]),
    "index-save-over-user-files": (lambda ws: (lambda: _bm25(ws).save(ws / "user")), ["user", "did not write"]),
    "index-save-over-a-file": (lambda ws: (lambda: _bm25(ws).save(ws / "user.txt")), ["user.txt", "is a file"]),
    "write-over-a-directory": (lambda ws: (lambda: _write_run(ws / "user")), ["user", "directory"]),
    "model-weights-altered": (lambda ws: _altered_ranker(ws), ["model.safetensors", "checksum"]),
    "model-manifest-corrupt": (lambda ws: _altered_ranker(ws, "distillir_manifest.json"),
                               ["distillir_manifest.json", "corrupt"]),
    "model-save-over-user-files": (lambda ws: (lambda: _tiny_ranker(ws).save_pretrained(ws / "user")),
                                   ["user", "did not write"]),
}


def _tiny_ranker(ws: Path):
    from transformers import BertConfig, BertForSequenceClassification

    from distillir.rankers.cross_encoder import CrossEncoder

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=8, num_labels=1))
    return CrossEncoder(model, _tokenizer())


def _altered_ranker(ws: Path, name: str = "model.safetensors"):
    from distillir.rankers.cross_encoder import CrossEncoder

    _tiny_ranker(ws).save_pretrained(ws / "ce")
    path = ws / "ce" / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte near the end: a tensor's value, or the manifest's closing brace
    path.write_bytes(bytes(data))
    return lambda: CrossEncoder.from_pretrained(ws / "ce")


def _tokenizer():
    from transformers import AutoTokenizer

    from distillir.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))


def _bm25(ws: Path):
    from distillir.retrievers.base import load_index

    return load_index(ws / "idx")


def _write_run(path: Path):
    from distillir.data.run import Run

    Run({"q1": [("p1", 1.0)]}).write_trec(path)


@pytest.mark.parametrize("name", sorted(LIBRARY_CASES))
def test_bad_files_the_library_reads_are_clear_errors(name, workspace, tmp_path):
    ws = copy_workspace(workspace, tmp_path / "ws")
    make, names = LIBRARY_CASES[name]
    call = make(ws)
    before = snapshot(ws)
    with pytest.raises(DistillirError) as info:
        call()
    message = str(info.value)
    for n in names:
        assert n.lower() in message.lower(), message
    assert "weights_only" not in message
    assert snapshot(ws) == before


# ------------------------------------------------------------------------------------------ checkpoints

def _checkpoints(out: Path, steps=(2, 4)) -> None:
    from distillir.training.checkpoint import capture_rng_state, checkpoint_path, save_checkpoint

    for step in steps:
        save_checkpoint(checkpoint_path(out, step), model_state={"w": torch.full((3,), float(step))},
                        optimizer_state={"state": {}, "param_groups": []}, scheduler_state={},
                        rng_states=[capture_rng_state()], trainer_state={"global_step": step})


@pytest.mark.parametrize("damage", ["truncate", "random", "bitflip", "delete", "state-json"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(damage, tmp_path):
    from distillir.training.checkpoint import load_latest_intact

    _checkpoints(tmp_path)
    newest = tmp_path / "checkpoints" / "step-4"
    model = newest / "model.pt"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        model.write_bytes(os.urandom(len(data)))
    elif damage == "bitflip":
        model.write_bytes(data[:-30] + bytes([data[-30] ^ 1]) + data[-29:])
    elif damage == "delete":
        model.unlink()
    else:
        (newest / "trainer_state.json").write_text("{")
    said = []
    path, restored = load_latest_intact(tmp_path, log=said.append)
    assert path.name == "step-2" and restored["state"]["global_step"] == 2
    assert torch.equal(restored["model"]["w"], torch.full((3,), 2.0))
    assert len(said) == 1 and "step-4" in said[0] and "weights_only" not in said[0]


def test_every_checkpoint_damaged_is_one_error_naming_the_newest(tmp_path):
    from distillir.training.checkpoint import load_latest_intact

    _checkpoints(tmp_path)
    for step in (2, 4):
        (tmp_path / "checkpoints" / f"step-{step}" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DistillirError, match="step-4.*model.pt"):
        load_latest_intact(tmp_path)


# ------------------------------------------------------------------------------------ killed writers

KILLED_WRITER = """
import sys, time
from distillir.utils.io import atomic_dir, atomic_write
kind, path = sys.argv[1], sys.argv[2]
ctx = atomic_dir(path) if kind == "dir" else atomic_write(path)
with ctx as out:
    if kind == "dir":
        (out / "big.bin").write_bytes(b"x" * 1000)
    else:
        out.write("partial")
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_what_a_killed_writer_left_is_removed_by_the_next_write(kind, tmp_path):
    from distillir.utils.io import atomic_dir, atomic_write, clean_stale_temporaries

    target = tmp_path / ("index" if kind == "dir" else "run.trec")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, kind, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and str(proc.pid) in leftovers[0].name
    assert clean_stale_temporaries(target) == []  # its writer is alive: not touched
    proc.kill()
    proc.wait()
    if kind == "dir":
        with atomic_dir(target) as out:
            (out / "x").write_text("done")
    else:
        with atomic_write(target) as f:
            f.write("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert not target.exists() or (target / "x" if kind == "dir" else target).read_text() == "done"


def test_the_bad_input_suites_hold_at_least_100_kinds():
    from test_bad_input_cli import CASES

    kinds = len(CASES) + len(CONFIG_CASES) + len(LIBRARY_CASES) + 5 + 1 + 2 + 1  # + the checkpoint and writer tests
    assert kinds >= 100
    print(json.dumps({"bad_input_kinds": kinds}))


def test_a_resumed_training_removes_the_checkpoint_a_killed_run_left_half_written(tmp_path):
    from distillir.utils.io import clean_stale_temporaries_in

    _checkpoints(tmp_path)
    root = tmp_path / "checkpoints"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = root / f".step-6.{dead.stdout.strip()}.abc123.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.pt").write_bytes(b"x" * 100)
    live = root / f".step-8.{os.getpid()}.def456.tmp"
    live.mkdir()
    assert clean_stale_temporaries_in(root) == [stale]
    assert sorted(p.name for p in root.iterdir()) == [live.name, "step-2", "step-4"]

