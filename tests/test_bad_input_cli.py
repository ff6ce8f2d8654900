"""Bad input through the data commands (index, search, evaluate, rerank, mine), one case per kind: each gets
one clear error naming the file (line, field), no traceback, and leaves every file as it was."""

from __future__ import annotations

import gzip
import json

import pytest
from bad_input import Case, copy_workspace, jsonl, run_case, write, write_workspace

CORPUS_GOOD = '{"_id": "p1", "title": "t", "text": "a passage"}\n'


def _index(corpus: str, *extra: str) -> list[str]:
    return ["index", corpus, "--out", "new-idx", "--no-cache", *extra]


def _search(queries: str = "queries.jsonl", *extra: str, index: str = "idx") -> list[str]:
    return ["search", index, queries, "--out", "new.trec", *extra]


def _eval_qrels(run: str = "run.trec", qrels: str = "qrels.tsv", *extra: str) -> list[str]:
    return ["evaluate", run, "--qrels", qrels, *extra]


def _truncate(rel: str, keep: float = 0.5):
    def setup(ws):
        p = ws / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return setup


def _flip(rel: str):
    def setup(ws):
        p = ws / rel
        data = bytearray(p.read_bytes())
        data[-5] ^= 0x55
        p.write_bytes(bytes(data))
    return setup


def _random_bytes(rel: str):
    def setup(ws):
        p = ws / rel
        p.write_bytes(bytes((i * 97 + 13) % 256 for i in range(p.stat().st_size)))
    return setup


def _edit_manifest(rel: str, change):
    def setup(ws):
        p = ws / rel / "manifest.json"
        m = json.loads(p.read_text())
        change(m)
        p.write_text(json.dumps(m))
    return setup


def _bm25_array(ws):
    return next(p for p in sorted((ws / "idx").glob("*.npy")))


def _truncate_bm25(ws):
    p = _bm25_array(ws)
    p.write_bytes(p.read_bytes()[:40])


CORPUS_CASES = [
    Case("corpus-missing-file", _index("nope.jsonl"), ["nope.jsonl", "not found"]),
    Case("corpus-missing-path", _index("data/nope"), ["data/nope", "not found"]),
    Case("corpus-unknown-name", _index("nope"), ["unknown dataset", "nope"]),
    Case("corpus-dir-without-corpus", _index("user"), ["user", "corpus.jsonl"]),
    Case("corpus-invalid-json", _index("c.jsonl"), ["c.jsonl", "line 2", "invalid json"],
         write("c.jsonl", CORPUS_GOOD + '{"_id": "p2", "text": \n')),
    Case("corpus-not-an-object", _index("c.jsonl"), ["c.jsonl", "line 2"], write("c.jsonl", CORPUS_GOOD + "[1, 2]\n")),
    Case("corpus-missing-id", _index("c.jsonl"), ["c.jsonl", "line 1", "_id"], write("c.jsonl", '{"text": "x"}\n')),
    Case("corpus-id-a-list", _index("c.jsonl"), ["c.jsonl", "line 1", "_id"], write("c.jsonl", '{"_id": [1], "text": "x"}\n')),
    Case("corpus-duplicate-id", _index("c.jsonl"), ["c.jsonl", "line 2", "p1"], write("c.jsonl", CORPUS_GOOD * 2)),
    Case("corpus-text-not-string", _index("c.jsonl"), ["c.jsonl", "line 1", "text"],
         write("c.jsonl", '{"_id": "p1", "text": 5}\n')),
    Case("corpus-title-not-string", _index("c.jsonl"), ["c.jsonl", "line 1", "title"],
         write("c.jsonl", '{"_id": "p1", "title": {"a": 1}, "text": "x"}\n')),
    Case("corpus-invalid-utf8", _index("c.jsonl"), ["c.jsonl", "line 2", "utf-8"],
         write("c.jsonl", CORPUS_GOOD.encode() + b'{"_id": "p2", "text": "caf\xe9"}\n')),
    Case("corpus-utf16", _index("c.jsonl"), ["c.jsonl", "utf-16", "iconv"], write("c.jsonl", CORPUS_GOOD.encode("utf-16"))),
    Case("corpus-tsv-columns", _index("c.tsv"), ["c.tsv", "line 3"], write("c.tsv", "id\ttext\np1\tx\np2\tx\ty\tz\n")),
    Case("corpus-tsv-empty-id", _index("c.tsv"), ["c.tsv", "line 2", "empty id"], write("c.tsv", "id\ttext\n\tsome text\n")),
    Case("corpus-tsv-duplicate", _index("c.tsv"), ["c.tsv", "line 3", "p1"], write("c.tsv", "id\ttext\np1\tx\np1\ty\n")),
    Case("corpus-tsv-invalid-utf8", _index("c.tsv"), ["c.tsv", "line 2", "utf-8"], write("c.tsv", b"id\ttext\np1\tcaf\xe9\n")),
    Case("corpus-tsv-one-column", _index("c.tsv"), ["c.tsv", "line 1"], write("c.tsv", "p1\np2\n")),
    Case("corpus-empty-file", _index("c.jsonl"), ["c.jsonl", "no passages"], write("c.jsonl", "")),
    Case("corpus-only-blank-passages", _index("c.jsonl"), ["c.jsonl", "no passages"],
         write("c.jsonl", '{"_id": "p1", "title": "", "text": "  "}\n')),
    Case("corpus-truncated-gzip", _index("c.jsonl.gz"), ["c.jsonl.gz", "complete"],
         write("c.jsonl.gz", gzip.compress(jsonl({"_id": f"p{i}", "text": f"passage {i}"} for i in range(500)).encode())[:200])),
    Case("corpus-random-bytes", _index("c.jsonl"), ["c.jsonl", "line 1"], write("c.jsonl", bytes(range(128, 256)) + b"\n")),
]

QUERY_CASES = [
    Case("queries-missing-file", _search("nope.jsonl"), ["nope.jsonl", "not found"]),
    Case("queries-invalid-json", _search("q.jsonl"), ["q.jsonl", "line 1", "invalid json"], write("q.jsonl", "{oops\n")),
    Case("queries-empty-text", _search("q.jsonl"), ["q.jsonl", "line 1", "empty query text"],
         write("q.jsonl", '{"_id": "q1", "text": ""}\n')),
    Case("queries-duplicate-id", _search("q.jsonl"), ["q.jsonl", "line 2", "q1"],
         write("q.jsonl", '{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')),
    Case("queries-answers-not-list", _search("q.jsonl"), ["q.jsonl", "line 1", "answers"],
         write("q.jsonl", '{"id": "q1", "question": "a?", "answers": 5}\n')),
    Case("queries-question-not-string", _search("q.jsonl"), ["q.jsonl", "line 1", "question"],
         write("q.jsonl", '{"id": "q1", "question": ["a"], "answers": []}\n')),
    Case("queries-gold-wrong-type", _search("q.jsonl"), ["q.jsonl", "line 1", "gold_pid"],
         write("q.jsonl", '{"id": "q1", "question": "a?", "gold_pid": {"x": 1}}\n')),
    Case("queries-tsv-one-column", _search("q.tsv"), ["q.tsv", "line 1"], write("q.tsv", "q1\n")),
    Case("queries-tsv-empty-text", _search("q.tsv"), ["q.tsv", "line 1", "empty query text"], write("q.tsv", "q1\t \n")),
    Case("queries-empty-file", _search("q.jsonl"), ["q.jsonl", "no queries"], write("q.jsonl", "")),
    Case("queries-utf16", _search("q.jsonl"), ["q.jsonl", "utf-16"], write("q.jsonl", '{"_id": "q1", "text": "a"}\n'.encode("utf-16"))),
    Case("queries-invalid-utf8", _search("q.tsv"), ["q.tsv", "line 1", "utf-8"], write("q.tsv", b"q1\tcaf\xe9?\n")),
    Case("queries-unknown-split", _search("mini:nosuchsplit"), ["nosuchsplit", "test"]),
    Case("queries-none-in-qrels", _search("queries.jsonl", "--qrels", "q.tsv"), ["queries.jsonl", "no query shared", "q.tsv"],
         write("q.tsv", "query-id\tcorpus-id\tscore\nzz\tp1\t1\n")),
]

QRELS_CASES = [
    Case("qrels-missing-file", _eval_qrels(qrels="nope.tsv"), ["nope.tsv", "not found"]),
    Case("qrels-is-a-directory", _eval_qrels(qrels="user"), ["user", "qrels"]),
    Case("qrels-columns", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 3", "columns"], write("r.tsv", "q1\tp1\t1\nq2\tp2\t1\nq3\tp4\n")),
    Case("qrels-two-columns", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1"], write("r.tsv", "q1\tp1\n")),
    Case("qrels-grade-not-int", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1", "integer"], write("r.tsv", "q1\tp1\thigh\n")),
    Case("qrels-conflicting-grades", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 2"], write("r.tsv", "q1\tp1\t1\nq1\tp1\t2\n")),
    Case("qrels-empty-query-id", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1", "query id"], write("r.tsv", " \tp1\t1\n")),
    Case("qrels-empty-passage-id", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1", "passage id"], write("r.tsv", "q1\t \t1\n")),
    Case("qrels-header-only", _eval_qrels(qrels="r.tsv"), ["r.tsv", "no judgments"], write("r.tsv", "query-id\tcorpus-id\tscore\n")),
    Case("qrels-five-columns", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1"], write("r.tsv", "q1 0 p1 1 x\n")),
    Case("qrels-invalid-utf8", _eval_qrels(qrels="r.tsv"), ["r.tsv", "line 1", "utf-8"], write("r.tsv", b"q\xe9\tp1\t1\n")),
    Case("qrels-no-shared-query", _eval_qrels(qrels="r.tsv"), ["run.trec", "no query", "r.tsv"], write("r.tsv", "zz\tp1\t1\n")),
    Case("qrels-unknown-passages-warned", _eval_qrels("run.trec", "r.tsv", "--corpus", "corpus.jsonl"),
         ["r.tsv", "1 judgments of passages not in the corpus"], write("r.tsv", "q1\tp1\t1\nq2\tnope\t1\n"), warns=True),
    Case("qrels-run-of-other-corpus-warned", _eval_qrels("other.trec"), ["other.trec", "another corpus"], warns=True),
]

RUN_CASES = [
    Case("run-missing-file", _eval_qrels("nope.trec"), ["nope.trec", "not found"]),
    Case("run-is-a-directory", _eval_qrels("user"), ["user", "not found"]),
    Case("run-trec-columns", _eval_qrels("r.trec"), ["r.trec", "line 2", "6 columns"], write("r.trec", "q1 Q0 p1 1 2.0 t\nq1 Q0 p2 2\n")),
    Case("run-trec-score-text", _eval_qrels("r.trec"), ["r.trec", "line 1", "score"], write("r.trec", "q1 Q0 p1 1 high t\n")),
    Case("run-trec-score-nan", _eval_qrels("r.trec"), ["r.trec", "line 1", "nan"], write("r.trec", "q1 Q0 p1 1 nan t\n")),
    Case("run-trec-duplicate-passage", _eval_qrels("r.trec"), ["r.trec", "line 2", "p1"],
         write("r.trec", "q1 Q0 p1 1 2.0 t\nq1 Q0 p1 2 1.0 t\n")),
    Case("run-trec-invalid-utf8", _eval_qrels("r.trec"), ["r.trec", "line 1", "utf-8"], write("r.trec", b"q1 Q0 p\xe9 1 2.0 t\n")),
    Case("run-jsonl-invalid-json", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "json"], write("r.jsonl", "{bad\n")),
    Case("run-jsonl-missing-id", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "id"], write("r.jsonl", '{"ctxs": []}\n')),
    Case("run-jsonl-ctxs-not-list", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "ctxs"], write("r.jsonl", '{"id": "q1", "ctxs": 3}\n')),
    Case("run-jsonl-ctx-without-id", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "ctxs"],
         write("r.jsonl", '{"id": "q1", "ctxs": [{"text": "x"}]}\n')),
    Case("run-jsonl-duplicate-passage", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "p1"],
         write("r.jsonl", '{"id": "q1", "ctxs": [{"id": "p1"}, {"id": "p1"}]}\n')),
    Case("run-jsonl-mixed-scores", _eval_qrels("r.jsonl"), ["r.jsonl", "line 1", "score"],
         write("r.jsonl", '{"id": "q1", "ctxs": [{"id": "p1", "score": 1}, {"id": "p2"}]}\n')),
    Case("run-jsonl-duplicate-query", _eval_qrels("r.jsonl"), ["r.jsonl", "line 2", "q1"],
         write("r.jsonl", '{"id": "q1", "ctxs": [{"id": "p1"}]}\n{"id": "q1", "ctxs": [{"id": "p2"}]}\n')),
    Case("run-empty-file", _eval_qrels("r.trec"), ["r.trec", "empty"], write("r.trec", "")),
    Case("run-jsonl-no-passages", _eval_qrels("r.jsonl"), ["r.jsonl", "empty"], write("r.jsonl", '{"id": "q1", "ctxs": []}\n')),
    Case("run-other-corpus-answers", ["evaluate", "other.trec", "--answers", "qa.jsonl", "--corpus", "corpus.jsonl"],
         ["other.trec", "not in the corpus", "another corpus"]),
    Case("run-other-corpus-qrels", _eval_qrels("other.trec", "qrels.tsv", "--corpus", "corpus.jsonl"),
         ["other.trec", "not in the corpus"]),
]

EVALUATE_CASES = [
    Case("evaluate-k-not-numbers", _eval_qrels("run.trec", "qrels.tsv", "--k", "a,b"), ["--k", "a,b"]),
    Case("evaluate-k-zero", _eval_qrels("run.trec", "qrels.tsv", "--k", "0,5"), ["--k", "positive"]),
    Case("evaluate-k-empty", _eval_qrels("run.trec", "qrels.tsv", "--k", ","), ["--k"]),
    Case("evaluate-no-judgments-given", ["evaluate", "run.trec"], ["--qrels", "--answers"]),
    Case("evaluate-answers-without-corpus", ["evaluate", "run.trec", "--answers", "qa.jsonl"], ["--corpus"]),
    Case("evaluate-answers-no-shared-query", ["evaluate", "run.trec", "--answers", "q.jsonl", "--corpus", "corpus.jsonl"],
         ["q.jsonl", "no query shared", "run.trec"], write("q.jsonl", '{"id": "zz", "question": "a?", "answers": ["x"]}\n')),
]

SEARCH_CASES = [
    Case("search-k-negative", _search("queries.jsonl", "-k", "-5"), ["--top-k", "greater than or equal to"]),
    Case("search-k-zero", _search("queries.jsonl", "-k", "0"), ["--top-k", "greater than or equal to"]),
    Case("search-dense-k-negative", _search("queries.jsonl", "-k", "-1", index="dense-idx"), ["--top-k", "greater"]),
    Case("search-out-is-directory", ["search", "idx", "queries.jsonl", "--out", "user"], ["user", "directory"]),
    Case("search-out-below-file", ["search", "idx", "queries.jsonl", "--out", "user.txt/run.trec"], ["user.txt", "is a file"]),
    Case("search-out-exists", ["search", "idx", "queries.jsonl", "--out", "user.txt"], ["user.txt", "--overwrite"]),
    Case("search-jsonl-without-corpus", ["search", "idx", "queries.jsonl", "--out", "r.jsonl"], ["--corpus"]),
    Case("search-index-missing", _search(index="nope-idx"), ["nope-idx", "not an index"]),
    Case("search-index-not-an-index", _search(index="user"), ["user", "not an index"]),
    Case("search-manifest-invalid-json", _search(), ["manifest.json", "json"], write("idx/manifest.json", "{")),
    Case("search-manifest-no-kind", _search(), ["manifest.json", "kind"], _edit_manifest("idx", lambda m: m.pop("kind"))),
    Case("search-manifest-unknown-kind", _search(), ["nosuchkind"], _edit_manifest("idx", lambda m: m.update(kind="nosuchkind"))),
    Case("search-ids-file-corrupt", _search(), ["passage_ids.json", "corrupt"], _flip("idx/passage_ids.json")),
    Case("search-file-missing-from-index", _search(), ["passage_ids.json", "missing"],
         lambda ws: (ws / "idx" / "passage_ids.json").unlink()),
    Case("search-bm25-array-truncated", _search(), ["idx", "truncated"], _truncate_bm25),
    Case("search-dense-embeddings-truncated", _search(index="dense-idx"), ["embeddings.npy", "truncated"],
         _truncate("dense-idx/embeddings.npy")),
    Case("search-dense-embeddings-random", _search(index="dense-idx"), ["embeddings.npy", "corrupt"],
         _random_bytes("dense-idx/embeddings.npy")),
    Case("search-dense-embeddings-bitflip", _search(index="dense-idx"), ["embeddings.npy", "checksum"],
         _flip("dense-idx/embeddings.npy")),
    Case("search-legacy-index-truncated-embeddings", _search(index="dense-idx"), ["embeddings.npy", "truncated"],
         lambda ws: (_edit_manifest("dense-idx", lambda m: m.pop("files"))(ws), _truncate("dense-idx/embeddings.npy")(ws))),
    Case("search-index-of-other-corpus", _search("queries.jsonl", "--corpus", "other.jsonl"), ["fingerprint"]),
]

INDEX_CASES = [
    Case("index-out-holds-user-files", ["index", "corpus.jsonl", "--out", "user", "--no-cache"], ["user", "did not write"]),
    Case("index-out-user-files-overwrite", ["index", "corpus.jsonl", "--out", "user", "--no-cache", "--overwrite"],
         ["user", "did not write"]),
    Case("index-out-is-a-file", ["index", "corpus.jsonl", "--out", "user.txt", "--no-cache"], ["user.txt", "is a file"]),
    Case("index-out-below-a-file", ["index", "corpus.jsonl", "--out", "user.txt/idx", "--no-cache"], ["user.txt", "a file"]),
    Case("index-out-existing-index", ["index", "corpus.jsonl", "--out", "idx", "--no-cache"], ["idx", "--overwrite"]),
    Case("index-batch-size-zero", _index("corpus.jsonl", "--retriever", "dense", "--batch-size", "0"), ["--batch-size"]),
    Case("index-unknown-retriever", _index("corpus.jsonl", "--retriever", "splade"), ["--retriever", "splade"]),
    Case("index-unknown-index-type", _index("corpus.jsonl", "--index", "annoy"), ["--index", "annoy"]),
    Case("index-bad-k1", _index("corpus.jsonl", "--k1", "-1"), ["k1"]),
    Case("index-bad-b", _index("corpus.jsonl", "--b", "2"), ["b"]),
    Case("index-model-dir-empty", _index("corpus.jsonl", "--retriever", "dense", "--model", "user"), ["user"]),
]

RERANK_CASES = [
    Case("rerank-k-negative", ["rerank", "run.trec", "queries.jsonl", "corpus.jsonl", "--out", "r.trec", "-k", "-1"], ["-k"]),
    Case("rerank-batch-zero", ["rerank", "run.trec", "queries.jsonl", "corpus.jsonl", "--out", "r.trec", "--batch-size", "0"],
         ["--batch-size"]),
    Case("rerank-dtype-unknown", ["rerank", "run.trec", "queries.jsonl", "corpus.jsonl", "--out", "r.trec", "--dtype", "int4"],
         ["--dtype", "int4"]),
    Case("rerank-out-is-directory", ["rerank", "run.trec", "queries.jsonl", "corpus.jsonl", "--out", "user"], ["user", "directory"]),
    Case("rerank-run-of-other-corpus", ["rerank", "other.trec", "queries.jsonl", "corpus.jsonl", "--out", "r.trec"],
         ["other.trec", "another corpus"]),
    Case("rerank-no-shared-query", ["rerank", "run.trec", "q.jsonl", "corpus.jsonl", "--out", "r.trec"],
         ["q.jsonl", "no query shared", "run.trec"], write("q.jsonl", '{"_id": "zz", "text": "a"}\n')),
    Case("rerank-model-missing", ["rerank", "run.trec", "queries.jsonl", "corpus.jsonl", "--out", "r.trec", "--model", "nope/model"],
         ["nope/model"]),
]

MINE = ["mine", "run.trec", "qa.jsonl", "corpus.jsonl", "--out", "lists.jsonl"]
MINE_CASES = [
    Case("mine-ranks-not-numbers", [*MINE, "--ranks", "a:b"], ["--ranks", "a:b"]),
    Case("mine-ranks-reversed", [*MINE, "--ranks", "5:2"], ["--ranks", "5:2"]),
    Case("mine-ranks-beyond-depth", [*MINE, "--ranks", "50:100"], ["--ranks", "starts at rank 50", "at most"]),
    Case("mine-per-query-zero", [*MINE, "--per-query", "0"], ["--per-query"]),
    Case("mine-no-known-positive", ["mine", "run.trec", "nogold.jsonl", "corpus.jsonl", "--out", "lists.jsonl"],
         ["nogold.jsonl", "positive"]),
    Case("mine-out-exists", [*MINE[:-1], "user.txt"], ["user.txt", "--overwrite"]),
    Case("mine-qrels-missing", [*MINE, "--qrels", "nope.tsv"], ["nope.tsv", "not found"]),
    Case("mine-run-of-other-corpus", ["mine", "other.trec", "qa.jsonl", "corpus.jsonl", "--out", "lists.jsonl"],
         ["other.trec", "another corpus"]),
    Case("mine-ranker-missing", [*MINE, "--ranker", "nope/ce"], ["nope/ce"]),
]

CASES = (CORPUS_CASES + QUERY_CASES + QRELS_CASES + RUN_CASES + EVALUATE_CASES + SEARCH_CASES + INDEX_CASES
         + RERANK_CASES + MINE_CASES)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_bert_dir):
    base = tmp_path_factory.mktemp("bad-input") / "ws"
    write_workspace(base, tiny_bert_dir)
    return base


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clear_error_and_touches_nothing(case, workspace, tmp_path, monkeypatch, capsys):
    run_case(case, copy_workspace(workspace, tmp_path / "ws"), monkeypatch, capsys)


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)
