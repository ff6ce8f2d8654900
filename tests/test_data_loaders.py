"""Loaders: every supported format reads the same data; every malformed input is located by file, line, field."""

from __future__ import annotations

import gzip
import json
import warnings

import pytest

from distillir.data.loaders import DataWarning, check_qrels, load_corpus, load_qrels, load_queries
from distillir.errors import InputError


def write(tmp_path, name: str, content: str | bytes, gz: bool = False):
    """Write `content` to tmp_path/name (gzip-compressed when `gz`) and return the path."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def assert_located(excinfo, name: str, line: int | None, field: str | None) -> None:
    """The message names the file, the line and the field."""
    message = str(excinfo.value)
    assert name in message
    if line is not None:
        assert f"line {line}" in message, message
    if field is not None:
        assert f"field {field!r}" in message, message


# ---------------------------------------------------------------------------------------------- corpus

DPR_TSV = 'id\ttext\ttitle\n1\tParis is the capital of France.\tParis\n2\tHe said "hi" and left.\tQuote\n'
BEIR_ROWS = [{"_id": "1", "title": "Paris", "text": "Paris is the capital of France."},
             {"_id": "2", "title": "Quote", "text": 'He said "hi" and left.'}]


@pytest.mark.parametrize(
    "name, content, gz",
    [
        ("corpus.tsv", DPR_TSV, False),
        ("corpus.tsv.gz", DPR_TSV, True),
        ("corpus.tsv", DPR_TSV.replace("\n", "\r\n"), False),
        ("headerless.tsv", DPR_TSV.split("\n", 1)[1], False),
        ("reordered.tsv", 'title\tid\ttext\nParis\t1\tParis is the capital of France.\nQuote\t2\tHe said "hi" and left.\n', False),
        ("corpus.jsonl", jsonl(*BEIR_ROWS), False),
        ("corpus.jsonl.gz", jsonl(*BEIR_ROWS), True),
        ("plain_id.jsonl", jsonl(*({"id": r["_id"], "title": r["title"], "text": r["text"]} for r in BEIR_ROWS)), False),
        ("sniffed.dat", jsonl(*BEIR_ROWS), False),
        ("bom.tsv", "\ufeff" + DPR_TSV, False),
    ],
)
def test_corpus_formats_read_the_same(tmp_path, name, content, gz):
    path = write(tmp_path, name, content, gz)
    corpus = load_corpus(path)
    assert corpus.ids == ["1", "2"]
    assert corpus.titles == ["Paris", "Quote"]
    assert corpus.texts == ["Paris is the capital of France.", 'He said "hi" and left.']
    assert corpus.source == str(path)


def test_corpus_from_directory(tmp_path):
    write(tmp_path, "corpus.jsonl", jsonl(*BEIR_ROWS))
    assert load_corpus(tmp_path).ids == ["1", "2"]


def test_raw_tsv_keeps_passages_that_are_quotations(tmp_path):
    path = write(tmp_path, "c.tsv", 'id\ttext\ttitle\n1\tplain\tA\n2\t"A whole quotation."\tB\n')
    assert load_corpus(path).texts[1] == '"A whole quotation."'


def test_csv_quoted_tsv_is_unquoted(tmp_path):
    # DPR's psgs_w100.tsv quotes text fields and doubles inner quotes; a quoted field may hold a tab.
    content = 'id\ttext\ttitle\n1\t"Aaron ( or ; ""Aharon"") is a prophet."\tAaron\n2\t"tab\tinside"\tB\n'
    corpus = load_corpus(write(tmp_path, "psgs.tsv", content))
    assert corpus.texts == ['Aaron ( or ; "Aharon") is a prophet.', "tab\tinside"]


def test_empty_passages_are_skipped_with_one_warning(tmp_path):
    content = "id\ttext\ttitle\n1\t\t\n2\ttext\t\n3\t\tTitle only\n4\t \t\n"
    with pytest.warns(DataWarning, match="skipped 2 passages"):
        corpus = load_corpus(write(tmp_path, "c.tsv", content))
    assert corpus.ids == ["2", "3"]


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("short.tsv", "id\ttext\ttitle\n1\ta\tA\n2\tb\n", 3, "title"),
        ("long.tsv", "1\ta\tA\n2\tb\tB\textra\n", 2, "column 4"),
        ("dup.tsv", "id\ttext\ttitle\n1\ta\tA\n1\tb\tB\n", 3, "id"),
        ("emptyid.tsv", "id\ttext\ttitle\n \ta\tA\n", 2, "id"),
        ("dup.jsonl", jsonl({"_id": "7", "text": "a"}, {"_id": "7", "text": "b"}), 2, "_id"),
        ("nojson.jsonl", '{"_id": "1", "text": "a"}\n{"_id": "2", "text": }\n', 2, None),
        ("array.jsonl", '["1", "a"]\n', 1, None),
        ("notext.jsonl", jsonl({"_id": "1", "text": "a"}, {"_id": "2", "title": "B"}), 2, "text"),
        ("noid.jsonl", jsonl({"title": "B", "text": "b"}), 1, "_id"),
        ("inttext.jsonl", jsonl({"_id": "1", "text": 5}), 1, "text"),
        ("listid.jsonl", jsonl({"_id": ["1"], "text": "a"}), 1, "_id"),
        ("nulltext.jsonl", jsonl({"_id": "1", "text": None}), 1, "text"),
    ],
)
def test_corpus_errors_name_file_line_field(tmp_path, name, content, line, field):
    with pytest.raises(InputError) as excinfo:
        load_corpus(write(tmp_path, name, content))
    assert_located(excinfo, name, line, field)


def test_duplicate_id_names_the_first_line(tmp_path):
    with pytest.raises(InputError, match="first on line 2"):
        load_corpus(write(tmp_path, "dup.tsv", "id\ttext\ttitle\n1\ta\tA\n1\tb\tB\n"))


def test_invalid_utf8_names_line_and_field(tmp_path):
    tsv = b"id\ttext\ttitle\n1\tgood\tA\n2\tcaf\xe9\tB\n"
    with pytest.raises(InputError) as excinfo:
        load_corpus(write(tmp_path, "latin1.tsv", tsv))
    assert_located(excinfo, "latin1.tsv", 3, "text")
    assert "UTF-8" in str(excinfo.value)
    data = b'{"_id": "1", "title": "caf\xe9", "text": "x"}\n'
    with pytest.raises(InputError) as excinfo:
        load_corpus(write(tmp_path, "latin1.jsonl", data))
    assert_located(excinfo, "latin1.jsonl", 1, "title")


def test_json_document_instead_of_json_lines_gets_a_hint(tmp_path):
    with pytest.raises(InputError, match="one object per line") as excinfo:
        load_queries(write(tmp_path, "nq-dev.json", '[\n  {"question": "q?", "answers": ["a"]}\n]\n'))
    assert_located(excinfo, "nq-dev.json", 1, None)


def test_missing_and_unusable_paths(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_corpus(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="corpus.jsonl"):
        load_corpus(tmp_path)  # a directory without a corpus file
    many = "".join(f"{i}\tpassage {i}\tT\n" for i in range(2000))
    truncated = gzip.compress(many.encode())[:-20]
    with pytest.raises(InputError, match="cannot read"):
        load_corpus(write(tmp_path, "cut.tsv.gz", truncated))
    with pytest.raises(InputError, match="found 4 tab-separated columns and no header"):
        load_corpus(write(tmp_path, "four.tsv", "1\ta\tb\tc\n"))


# ---------------------------------------------------------------------------------------------- queries


def test_beir_queries(tmp_path):
    path = write(tmp_path, "queries.jsonl", jsonl({"_id": "q1", "text": "one", "metadata": {}}, {"_id": "q2", "text": "two"}))
    queries = load_queries(path)
    assert queries.ids == ["q1", "q2"] and queries.texts == ["one", "two"]
    assert not queries.has_answers and queries.gold_ids == [None, None]
    assert load_queries(path, ids={"q2", "q9"}).ids == ["q2"]


def test_qa_queries_with_answers_gold_and_default_ids(tmp_path):
    rows = [
        {"question": "Capital of France?", "answers": ["Paris"], "gold_pid": "1"},
        {"question": "Tower year?", "answers": ["1889", "in 1889"], "gold_pid": ["2", 3]},
        {"id": "named", "question": "No gold?", "answers": []},
    ]
    queries = load_queries(write(tmp_path, "dev.jsonl.gz", jsonl(*rows), gz=True))
    assert queries.ids == ["0", "1", "named"]  # 0-based line numbers when no id is given
    assert queries.answers == [["Paris"], ["1889", "in 1889"], []]
    assert queries.gold_ids == [["1"], ["2", "3"], None]


@pytest.mark.parametrize("header", ["", "id\ttext\n", "qid\tquery\r\n"])
def test_tsv_queries_with_or_without_header(tmp_path, header):
    queries = load_queries(write(tmp_path, "queries.tsv", header + "q1\tfirst query\nq2\tsecond\n"))
    assert queries.ids == ["q1", "q2"] and queries.texts == ["first query", "second"]


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("q.jsonl", jsonl({"_id": "1", "text": "ok"}, {"_id": "2", "text": "  "}), 2, "text"),
        ("qa.jsonl", jsonl({"question": "ok?"}, {"question": ""}), 2, "question"),
        ("qa2.jsonl", jsonl({"question": "ok?"}, {"text": "not QA"}), 2, "question"),
        ("ans.jsonl", jsonl({"question": "ok?", "answers": "Paris"}), 1, "answers"),
        ("ans2.jsonl", jsonl({"question": "ok?", "answers": [["Paris"]]}), 1, "answers"),
        ("gold.jsonl", jsonl({"question": "ok?", "gold_pid": {"p": 1}}), 1, "gold_pid"),
        ("dupq.jsonl", jsonl({"id": "a", "question": "x?"}, {"id": "b", "question": "y?"}, {"id": "a", "question": "z?"}), 3, "id"),
        ("q.tsv", "q1\tfine\nq2\n", 2, "text"),
        ("empty.tsv", "q1\tfine\nq2\t \n", 2, "text"),
    ],
)
def test_query_errors_name_file_line_field(tmp_path, name, content, line, field):
    with pytest.raises(InputError) as excinfo:
        load_queries(write(tmp_path, name, content))
    assert_located(excinfo, name, line, field)


def test_query_invalid_utf8(tmp_path):
    data = b'{"question": "ok?"}\n{"question": "caf\xe9?", "answers": []}\n'
    with pytest.raises(InputError) as excinfo:
        load_queries(write(tmp_path, "bad.jsonl", data))
    assert_located(excinfo, "bad.jsonl", 2, "question")


# ---------------------------------------------------------------------------------------------- qrels

EXPECTED_QRELS = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}


@pytest.mark.parametrize(
    "name, content, gz",
    [
        ("beir.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\nq2\td3\t2\n", False),
        ("crlf.tsv", "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\nq1\td2\t0\r\nq2\td3\t2\r\n", False),
        ("noheader.tsv", "q1\td1\t1\nq1\td2\t0\nq2\td3\t2.0\n", False),
        ("trec.qrels", "q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 2\n", False),
        ("trec.qrels.gz", "q1 Q0 d1 1\nq1 Q0 d2 0\n\nq2 Q0 d3 2\n", True),
    ],
)
def test_qrels_formats(tmp_path, name, content, gz):
    assert load_qrels(write(tmp_path, name, content, gz)) == EXPECTED_QRELS


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("rel.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n", 3, "score"),
        ("half.tsv", "q1\td1\t1\nq1\td2\t0.5\n", 2, "score"),
        ("trec.txt", "q1 0 d1 1\nq1 0 d2 yes\n", 2, "rel"),
        ("cols.tsv", "q1\td1\t1\nq1\td2\n", 2, "score"),
        ("emptyq.tsv", "q1\td1\t1\n\td2\t1\n", 2, "query-id"),
        ("conflict.tsv", "q1\td1\t1\nq1\td1\t2\n", 2, "score"),
    ],
)
def test_qrels_errors_name_file_line_field(tmp_path, name, content, line, field):
    with pytest.raises(InputError) as excinfo:
        load_qrels(write(tmp_path, name, content))
    assert_located(excinfo, name, line, field)


def test_qrels_with_wrong_column_count_says_what_is_expected(tmp_path):
    with pytest.raises(InputError, match="TREC") as excinfo:
        load_qrels(write(tmp_path, "two.tsv", "q1\td1\n"))
    assert_located(excinfo, "two.tsv", 1, None)


def test_check_qrels_drops_unknown_ids_with_counts_and_examples(tiny_corpus, tiny_queries):
    qrels = {"q1": {"p1": 1, "ghost1": 1}, "q2": {"ghost2": 1}, "q3": {"p4": 1}, "nobody": {"p1": 1}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clean = check_qrels(qrels, tiny_corpus, tiny_queries, path="qrels/test.tsv")
    assert clean == {"q1": {"p1": 1}, "q3": {"p4": 1}}
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("2 judgments of passages not in the corpus" in m and "'ghost1'" in m for m in messages)
    assert any("1 queries not in the queries" in m and "'nobody'" in m for m in messages)
    assert all(m.startswith("qrels/test.tsv") for m in messages)


def test_check_qrels_is_silent_when_all_ids_are_known(tiny_corpus):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_qrels({"q1": {"p1": 1}}, corpus=tiny_corpus) == {"q1": {"p1": 1}}
