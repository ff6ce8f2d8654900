"""Read corpora, queries and qrels in the formats the field uses (DPR TSV, BEIR JSONL, QA JSONL, TREC qrels).

Every problem in a file is reported as an `InputError` naming the file, the line and the field, so a user
can fix the file without reading a stack trace. Files are read line by line as bytes and decoded one line
at a time, which keeps memory flat and lets an invalid UTF-8 byte be located exactly.

Format detection (per file):
- plain or gzip-compressed (detected from the first bytes, not the suffix);
- `.jsonl`/`.json`/`.ndjson` -> JSON lines, `.tsv`/`.txt` -> tab-separated; any other name is sniffed:
  a first line starting with `{` means JSON lines, anything else tab-separated;
- a directory stands for the `corpus.*` / `queries.*` file inside it;
- TSV fields are taken verbatim (quotes are ordinary characters), unless the first data line's text
  field is CSV-quoted (`"a ""b"" c"`, as in DPR's psgs_w100.tsv): then the file is read with CSV quoting.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from distillir.data.parsing import (
    check_unique,
    existing_file,
    header_positions,
    is_jsonl,
    json_id,
    json_str,
    json_str_list,
    lines,
    parse_json_line,
    raise_if_undecodable,
    split_tsv,
    text_is_quoted,
)
from distillir.data.types import Corpus, Qrels, Queries
from distillir.errors import InputError

__all__ = ["DataWarning", "check_qrels", "load_corpus", "load_qrels", "load_queries"]


class DataWarning(UserWarning):
    """Input that was usable after dropping some of it (empty passages, judgments of unknown ids)."""


# Column names accepted in headers, lower-cased.
_CORPUS_ID_COLUMNS = ("id", "_id", "pid", "docid", "doc_id", "doc-id", "corpus-id")
_CORPUS_TEXT_COLUMNS = ("text", "passage", "contents", "body")
_QUERY_ID_COLUMNS = ("id", "_id", "qid", "query-id", "query_id")
_QUERY_TEXT_COLUMNS = ("text", "query", "question")
_QRELS_HEADER_FIRST = ("query-id", "query_id", "qid", "query", "topic")
_QRELS_HEADER_LAST = ("score", "rel", "relevance", "label", "grade")
_QRELS_COLUMNS = {3: ("query-id", "corpus-id", "score"), 4: ("qid", "iter", "docno", "rel")}

_CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz", "corpus.tsv", "corpus.tsv.gz")
_QUERY_FILES = ("queries.jsonl", "queries.jsonl.gz", "queries.tsv", "queries.tsv.gz")



# ---------------------------------------------------------------------------------------------- corpus


def load_corpus(path: str | Path) -> Corpus:
    """Load passages from a DPR TSV, a BEIR JSONL (optionally gzipped), or a directory holding corpus.*.

    TSV: a header naming the columns (`id`, `text`, optional `title`, any order) or no header, in which
    case 3 columns are read as DPR's id, text, title and 2 columns as id, text. JSONL: `_id` (or `id`),
    `text` (or `contents`), optional `title`. Passages with neither title nor text are skipped with one
    warning; duplicate ids are an error.
    """
    file = existing_file(path, _CORPUS_FILES)
    rows = _corpus_jsonl_rows(file) if is_jsonl(file) else _corpus_tsv_rows(file)
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    seen: dict[str, int] = {}
    skipped = 0
    for lineno, pid, text, title, id_field in rows:
        check_unique(file, lineno, seen, pid, id_field)
        if not text.strip() and not title.strip():
            skipped += 1
            continue
        ids.append(pid)
        texts.append(text)
        titles.append(title)
    if skipped:
        warnings.warn(f"{file}: skipped {skipped} passages with empty title and text", DataWarning, stacklevel=2)
    return Corpus(ids, texts, titles, source=str(file))


def _corpus_tsv_rows(path: Path) -> Iterator[tuple[int, str, str, str, str]]:
    """(line, id, text, title, id column name) for each data line of a tab-separated corpus."""
    columns: tuple[str, ...] | None = None
    at: dict = {}
    quoted: bool | None = None
    for lineno, line, bad in lines(path):
        if columns is None:
            first = line.split("\t")
            header = header_positions(first, _CORPUS_ID_COLUMNS, _CORPUS_TEXT_COLUMNS)
            if header is not None:
                columns, at = tuple(c.strip().lower() for c in first), header
                continue
            columns = _headerless_corpus_columns(path, lineno, len(first))
            at = {"id": 0, "text": 1, "title": 2 if len(columns) == 3 else None}
        if quoted is None:
            quoted = text_is_quoted(line, at["text"])
        parts = split_tsv(path, lineno, line, columns, quoted)
        if bad:
            raise_if_undecodable(path, lineno, parts, columns)
        pid = parts[at["id"]].strip()
        if not pid:
            raise InputError(path, "empty id", line=lineno, field=columns[at["id"]])
        title = parts[at["title"]] if at["title"] is not None else ""
        yield lineno, pid, parts[at["text"]], title, columns[at["id"]]


def _headerless_corpus_columns(path: Path, lineno: int, n: int) -> tuple[str, ...]:
    if n == 3:
        return ("id", "text", "title")
    if n == 2:
        return ("id", "text")
    raise InputError(
        path, f"found {n} tab-separated columns and no header; expected id, text, title (DPR) "
        "or a header line naming the columns", line=lineno,
    )


def _corpus_jsonl_rows(path: Path) -> Iterator[tuple[int, str, str, str, str]]:
    """(line, id, text, title, id field name) for each line of a BEIR-style JSONL corpus."""
    for lineno, line, bad in lines(path):
        obj = parse_json_line(path, lineno, line, bad)
        pid, id_field = json_id(path, lineno, obj, ("_id", "id", "docid"))
        text_field = "contents" if "text" not in obj and "contents" in obj else "text"  # pyserini's name
        text = json_str(path, lineno, obj, text_field, required=True)
        title = json_str(path, lineno, obj, "title", required=False)
        yield lineno, pid, text, title, id_field


# ---------------------------------------------------------------------------------------------- queries


def load_queries(path: str | Path, ids: Iterable[str] | None = None) -> Queries:
    """Load queries from BEIR queries.jsonl, a QA JSONL, or a TSV `id<TAB>text` (header optional).

    The JSONL kind is decided by the first record: with `question` it is QA (`question`, optional
    `answers` list, optional `id` defaulting to the 0-based line number, optional `gold_pid` string or
    list), otherwise BEIR (`_id` or `id`, `text`). `ids`, when given, keeps only those query ids (the
    whole file is still validated). Empty texts and duplicate ids are errors.
    """
    file = existing_file(path, _QUERY_FILES)
    keep = None if ids is None else set(ids)
    rows = _query_jsonl_rows(file) if is_jsonl(file) else _query_tsv_rows(file)
    qids: list[str] = []
    texts: list[str] = []
    answers_of: list[list[str] | None] = []
    gold_of: list[list[str] | None] = []
    seen: dict[str, int] = {}
    for lineno, qid, text, answers, gold, id_field in rows:
        check_unique(file, lineno, seen, qid, id_field)
        if keep is not None and qid not in keep:
            continue
        qids.append(qid)
        texts.append(text)
        answers_of.append(answers)
        gold_of.append(gold)
    return Queries(qids, texts, answers_of, gold_of, source=str(file))


def _query_jsonl_rows(path: Path) -> Iterator[tuple]:
    """(line, id, text, answers, gold ids, id field) for each line of a BEIR or QA JSONL file."""
    is_qa: bool | None = None
    for lineno, line, bad in lines(path):
        obj = parse_json_line(path, lineno, line, bad)
        if is_qa is None:
            is_qa = "question" in obj
        if is_qa:
            qid, id_field = json_id(path, lineno, obj, ("id", "_id"), default=str(lineno - 1))
            text_field = "question"
            answers = json_str_list(path, lineno, obj, "answers", allow_scalar=False)
            gold = json_str_list(path, lineno, obj, "gold_pid", allow_scalar=True)
        else:
            qid, id_field = json_id(path, lineno, obj, ("_id", "id"))
            text_field, answers, gold = "text", None, None
        text = json_str(path, lineno, obj, text_field, required=True)
        if not text.strip():
            raise InputError(path, "empty query text; fill it in or remove the line", line=lineno, field=text_field)
        yield lineno, qid, text, answers, gold, id_field


def _query_tsv_rows(path: Path) -> Iterator[tuple]:
    """(line, id, text, None, None, id column) for each data line of an `id<TAB>text` file."""
    columns: tuple[str, ...] | None = None
    quoted: bool | None = None
    for lineno, line, bad in lines(path):
        if columns is None:
            first = line.split("\t")
            columns = ("id", "text")
            header = header_positions(first, _QUERY_ID_COLUMNS, _QUERY_TEXT_COLUMNS)
            if header is not None and len(first) == 2 and header["id"] == 0:
                columns = tuple(c.strip().lower() for c in first)
                continue
        if quoted is None:
            quoted = text_is_quoted(line, 1)
        parts = split_tsv(path, lineno, line, columns, quoted)
        if bad:
            raise_if_undecodable(path, lineno, parts, columns)
        qid, text = parts[0].strip(), parts[1]
        if not qid:
            raise InputError(path, "empty id", line=lineno, field=columns[0])
        if not text.strip():
            raise InputError(path, "empty query text; fill it in or remove the line", line=lineno, field=columns[1])
        yield lineno, qid, text, None, None, columns[0]


# ---------------------------------------------------------------------------------------------- qrels


def load_qrels(path: str | Path) -> Qrels:
    """Load relevance judgments: BEIR `query-id corpus-id score` (tab-separated, header optional, LF or
    CRLF) or TREC `qid iter docno rel` (whitespace-separated). Relevance must be an integer. A pair judged
    twice with different grades is an error; an exact repeat is ignored.
    """
    file = existing_file(path)
    qrels: Qrels = {}
    where: dict[tuple[str, str], int] = {}
    columns: tuple[str, ...] | None = None
    for lineno, line, bad in lines(file):
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if columns is None:
            if _is_qrels_header(parts):
                continue
            columns = _qrels_columns(file, lineno, len(parts))
        if len(parts) != len(columns):
            raise InputError(
                file, f"found {len(parts)} columns, expected {len(columns)} ({' '.join(columns)}) like the first line",
                line=lineno, field=columns[min(len(parts), len(columns) - 1)],
            )
        if bad:
            raise_if_undecodable(file, lineno, parts, columns)
        qid, pid, rel = _qrels_fields(file, lineno, parts, columns)
        judged = qrels.setdefault(qid, {})
        if pid in judged and judged[pid] != rel:
            raise InputError(
                file, f"query {qid!r}, passage {pid!r} judged {judged[pid]} on line {where[qid, pid]} and {rel} "
                "here; keep one", line=lineno, field=columns[-1],
            )
        judged[pid] = rel
        where.setdefault((qid, pid), lineno)
    return qrels


def _is_qrels_header(parts: list[str]) -> bool:
    """A first line like `query-id corpus-id score`: named columns and a non-numeric last column."""
    if _as_int(parts[-1]) is not None:
        return False
    return parts[0].lower() in _QRELS_HEADER_FIRST or parts[-1].lower() in _QRELS_HEADER_LAST


def _qrels_columns(path: Path, lineno: int, n: int) -> tuple[str, ...]:
    if n not in _QRELS_COLUMNS:
        raise InputError(
            path, f"found {n} columns; expected query-id<TAB>corpus-id<TAB>score (BEIR) "
            "or 'qid iter docno rel' (TREC)", line=lineno,
        )
    return _QRELS_COLUMNS[n]


def _qrels_fields(path: Path, lineno: int, parts: list[str], columns: tuple[str, ...]) -> tuple[str, str, int]:
    """(query id, passage id, relevance) from one split line."""
    qid, pid, rel_text = (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], parts[2], parts[3])
    qid_col, pid_col = columns[0], columns[-2]
    if not qid:
        raise InputError(path, "empty query id", line=lineno, field=qid_col)
    if not pid:
        raise InputError(path, "empty passage id", line=lineno, field=pid_col)
    rel = _as_int(rel_text)
    if rel is None:
        raise InputError(path, f"relevance must be an integer, got {rel_text!r}", line=lineno, field=columns[-1])
    return qid, pid, rel


def _as_int(text: str) -> int | None:
    """An integer from '2' or '2.0'; None for anything else."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def check_qrels(
    qrels: Qrels,
    corpus: Corpus | Collection[str] | None = None,
    queries: Queries | Collection[str] | None = None,
    path: str | Path | None = None,
) -> Qrels:
    """Drop judgments naming passages missing from `corpus` or queries missing from `queries`, warning once
    per kind with a count and up to 3 examples (as BEIR does). Returns the cleaned qrels; queries left with
    no judgments are dropped too. `corpus`/`queries` may be the loaded objects or plain collections of ids.
    """
    known_pids = _id_set(corpus)
    known_qids = _id_set(queries)
    unknown_qids: list[str] = []
    unknown_pairs: list[tuple[str, str]] = []
    clean: Qrels = {}
    for qid, judged in qrels.items():
        if known_qids is not None and qid not in known_qids:
            unknown_qids.append(qid)
            continue
        kept = {pid: rel for pid, rel in judged.items() if known_pids is None or pid in known_pids}
        unknown_pairs.extend((qid, pid) for pid in judged if pid not in kept)
        if kept:
            clean[qid] = kept
    where = str(path) if path is not None else "qrels"
    if unknown_qids:
        examples = ", ".join(repr(q) for q in unknown_qids[:3])
        warnings.warn(
            f"{where}: dropped judgments of {len(unknown_qids)} queries not in the queries (e.g. {examples})",
            DataWarning, stacklevel=2,
        )
    if unknown_pairs:
        examples = ", ".join(repr(p) for _, p in unknown_pairs[:3])
        warnings.warn(
            f"{where}: dropped {len(unknown_pairs)} judgments of passages not in the corpus (e.g. {examples})",
            DataWarning, stacklevel=2,
        )
    return clean


def _id_set(source: Corpus | Queries | Collection[str] | None) -> Collection[str] | None:
    if source is None:
        return None
    index = getattr(source, "index_of", None)
    return index if index is not None else set(source)
