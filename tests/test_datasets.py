"""Dataset resolution by name, the downloads (mocked: no network), the SQuAD conversion, and the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
import zipfile

import pytest

from distillir.data import datasets
from distillir.data.datasets import build_squad_open, data_dirs, load_dataset, resolve_dataset_dir
from distillir.data.loaders import DataWarning, load_corpus, load_qrels, load_queries
from distillir.errors import DistillirError, InputError


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    """Search only tmp dirs: $DISTILLIR_DATA, a cwd and a repo root with no shared/data, a tmp cache."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "work" / "repo").mkdir(parents=True)
    monkeypatch.setenv("DISTILLIR_DATA", str(data))
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path / "work" / "repo")
    monkeypatch.setattr(datasets, "_REPO_ROOT", tmp_path / "work" / "repo")
    return data


def make_beir(root, name="mini"):
    """A tiny BEIR-layout dataset: 4 docs, 4 queries, test qrels judging 3 of them (one names a missing doc)."""
    d = root / name
    (d / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": f"T{i}", "text": f"document {i}"} for i in range(4)]
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(4)]
    (d / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in queries))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\r\nq0\td0\t1\r\nq1\td1\t1\r\nq2\td2\t1\r\nq2\tgone\t1\r\n")
    (d / "qrels" / "train.tsv").write_text("q3\td3\t1\n")
    return d


SQUAD_DEV = {
    "data": [
        {"title": "Zebra", "paragraphs": [
            {"context": "Zebras  are\tstriped.\n", "qas": [
                {"id": "z1", "question": " What are zebras? ", "answers": [
                    {"text": "striped", "answer_start": 11}, {"text": "striped", "answer_start": 11},
                    {"text": "striped.", "answer_start": 11}]},
            ]},
        ]},
        {"title": "Apple_pie", "paragraphs": [
            {"context": "Apple pie is a pie.", "qas": [
                {"id": "a1", "question": "What is apple pie?", "answers": [{"text": "a pie", "answer_start": 12}]},
                {"id": "a2", "question": "   ", "answers": []},
            ]},
        ]},
    ]
}
SQUAD_TRAIN = {
    "data": [
        {"title": "Moon", "paragraphs": [
            {"context": "The Moon orbits Earth.", "qas": [
                {"question": "What orbits Earth?", "answers": [{"text": "The Moon", "answer_start": 0}]},
            ]},
            {"context": "The Moon orbits Earth.", "qas": [
                {"id": "m2", "question": "What does the Moon orbit?", "answers": [{"text": "Earth", "answer_start": 16}]},
            ]},
        ]},
    ]
}


def write_squad(tmp_path):
    train, dev = tmp_path / "train-v1.1.json", tmp_path / "dev-v1.1.json"
    train.write_text(json.dumps(SQUAD_TRAIN))
    dev.write_text(json.dumps(SQUAD_DEV))
    return train, dev


# ---------------------------------------------------------------------------------------------- resolution


def test_data_dirs_order(isolated, tmp_path, monkeypatch):
    other = tmp_path / "other"
    monkeypatch.setenv("DISTILLIR_DATA", f"{isolated}{os.pathsep}{other}")
    dirs = data_dirs()
    assert dirs[:2] == [isolated.resolve(), other.resolve()]
    assert tmp_path.resolve() / "work" / "shared" / "data" in dirs
    assert dirs[-1] == (tmp_path / "cache" / "datasets").resolve()


def test_resolve_by_name_and_by_path(isolated):
    made = make_beir(isolated)
    assert resolve_dataset_dir("mini") == made
    assert resolve_dataset_dir(str(made)) == made.resolve()


def test_unknown_name_lists_known_names_and_searched_dirs(isolated):
    with pytest.raises(DistillirError) as excinfo:
        resolve_dataset_dir("no-such-set")
    message = str(excinfo.value)
    assert "scifact" in message and "squad-open" in message and str(isolated.resolve()) in message


def test_scifact_is_fetched_into_the_cache_when_missing(isolated, tmp_path, monkeypatch):
    archive = tmp_path / "scifact.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("scifact/corpus.jsonl", json.dumps({"_id": "d1", "title": "", "text": "abstract"}) + "\n")
        zf.writestr("scifact/queries.jsonl", json.dumps({"_id": "q1", "text": "claim"}) + "\n")
        zf.writestr("scifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
        zf.writestr("scifact/../escape.txt", "must not be written outside the target")
    fetched = []
    monkeypatch.setattr(datasets, "_cached_download", lambda url: fetched.append(url) or archive)
    directory = resolve_dataset_dir("scifact")
    assert fetched == [datasets.SCIFACT_URL]
    assert directory == (tmp_path / "cache" / "datasets" / "scifact").resolve()
    assert not (directory.parent / "escape.txt").exists()
    ds = load_dataset("scifact")
    assert ds.name == "scifact" and ds.queries.ids == ["q1"] and ds.qrels == {"q1": {"d1": 1}}
    assert resolve_dataset_dir("scifact") == directory and len(fetched) == 1  # found, not refetched


def test_squad_open_is_built_from_downloaded_json(isolated, tmp_path, monkeypatch):
    train, dev = write_squad(tmp_path)
    by_url = {datasets.SQUAD_URLS["train"]: train, datasets.SQUAD_URLS["dev"]: dev}
    monkeypatch.setattr(datasets, "_cached_download", lambda url: by_url[url])
    ds = load_dataset("squad-open", "dev")
    assert ds.queries.ids == ["a1", "z1"] and len(ds.corpus) == 3


def test_download_writes_atomically_and_reports_failures(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3000)
    dest = datasets.download(source.as_uri(), tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == b"x" * 3000
    with pytest.raises(DistillirError, match="could not download"):
        datasets.download((tmp_path / "missing.bin").as_uri(), tmp_path / "out" / "missing.bin")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]  # no partial file left


# ---------------------------------------------------------------------------------------------- SQuAD conversion


def test_build_squad_open_layout(tmp_path):
    train, dev = write_squad(tmp_path)
    out = tmp_path / "squad-open"
    counts = build_squad_open(train, dev, out)
    assert counts == {"passages": 3, "dev": 2, "train": 2}
    corpus = load_corpus(out / "corpus.tsv")
    # dev articles first, each split sorted by title; whitespace collapsed; duplicate paragraphs merged.
    assert corpus.ids == ["1", "2", "3"]
    assert corpus.titles == ["Apple pie", "Zebra", "Moon"]
    assert corpus.texts[1] == "Zebras are striped."
    dev_q = load_queries(out / "dev.jsonl")
    assert dev_q.ids == ["a1", "z1"]  # the blank question is dropped
    assert dev_q.texts[1] == "What are zebras?"
    assert dev_q.answers[1] == ["striped", "striped."]
    assert dev_q.gold_ids == [["1"], ["2"]]
    train_q = load_queries(out / "train.jsonl")
    assert train_q.ids == ["train-000-000-00", "m2"] and train_q.gold_ids == [["3"], ["3"]]
    assert load_qrels(out / "qrels" / "train.tsv") == {"train-000-000-00": {"3": 1}, "m2": {"3": 1}}


def test_build_squad_open_rejects_other_json(tmp_path):
    train, dev = write_squad(tmp_path)
    dev.write_text(json.dumps({"data": [{"title": "X"}]}))
    with pytest.raises(InputError, match="paragraphs"):
        build_squad_open(train, dev, tmp_path / "out")
    dev.write_text("[1, 2]")
    with pytest.raises(InputError, match="dev-v1.1.json"):
        build_squad_open(train, dev, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- load_dataset


def test_beir_split_takes_judged_queries_and_drops_unknown_docs(isolated):
    make_beir(isolated)
    with pytest.warns(DataWarning, match="dropped 1 judgments of passages not in the corpus"):
        ds = load_dataset("mini", "test")
    assert ds.split == "test" and len(ds.corpus) == 4
    assert ds.queries.ids == ["q0", "q1", "q2"]
    assert ds.qrels == {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1}}
    assert load_dataset("mini", "train").queries.ids == ["q3"]


def test_missing_split_lists_available_ones(isolated):
    make_beir(isolated)
    with pytest.raises(DistillirError, match="available: test, train"):
        load_dataset("mini", "dev")


def test_max_queries_is_a_seeded_sample(isolated):
    make_beir(isolated)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        first = load_dataset("mini", "test", max_queries=2, seed=3)
        again = load_dataset("mini", "test", max_queries=2, seed=3)
    assert first.queries.ids == again.queries.ids and len(first.queries) == 2
    assert set(first.qrels) == set(first.queries.ids)


def test_qa_split_without_qrels_uses_gold_ids(tmp_path):
    d = tmp_path / "qa"
    d.mkdir()
    (d / "corpus.tsv").write_text("id\ttext\ttitle\n1\tParis is in France.\tParis\n")
    (d / "dev.jsonl").write_text(json.dumps({"question": "Where is Paris?", "answers": ["France"], "gold_pid": "1"}) + "\n")
    ds = load_dataset(d, "dev")
    assert ds.name == "qa" and ds.qrels == {"0": {"1": 1}} and ds.queries.answers == [["France"]]


def test_importing_data_does_not_import_torch():
    code = "import sys, distillir.data; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------- real data


def test_real_shared_datasets(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILLIR_DATA", shared_data)
    start = time.perf_counter()
    squad = load_dataset("squad-open", "dev")
    assert len(squad.corpus) == 20_963 and len(squad.queries) == 10_570 and len(squad.qrels) == 10_570
    assert squad.queries.has_answers and squad.queries.gold_ids[0] == [next(iter(squad.qrels[squad.queries.ids[0]]))]
    scifact = load_dataset("scifact", "test")
    assert len(scifact.corpus) == 5_183 and len(scifact.queries) == 300
    assert sum(len(j) for j in scifact.qrels.values()) == 339
    assert time.perf_counter() - start < 15  # generous: the test machine is shared
