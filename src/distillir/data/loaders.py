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

import csv
import gzip
import json
import re
import warnings
import zlib
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

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

# Lone surrogates are what `surrogateescape` turns undecodable bytes into.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_UTF8_HINT = "invalid UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"


# ---------------------------------------------------------------------------------------------- files


def _existing_file(path: str | Path, directory_files: tuple[str, ...] = ()) -> Path:
    """The file to read: `path` itself, or the first of `directory_files` inside it when it is a directory."""
    path = Path(path)
    if path.is_dir():
        for name in directory_files:
            if (path / name).is_file():
                return path / name
        wanted = " or ".join(directory_files) if directory_files else "a file"
        raise InputError(path, f"is a directory without {wanted}; pass the file itself")
    if not path.is_file():
        raise InputError(path, "file not found; check the path (datasets are searched under $DISTILLIR_DATA)")
    return path


def _open_bytes(path: Path) -> IO[bytes]:
    """Open for binary reading, transparently un-gzipping when the file starts with the gzip magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text without line end, whether it had invalid UTF-8) for each non-blank line.

    Invalid bytes are kept as lone surrogates so the caller can find out which field holds them.
    """
    try:
        with _open_bytes(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text, bad = raw.decode("utf-8"), False
                except UnicodeDecodeError:
                    text, bad = raw.decode("utf-8", "surrogateescape"), True
                if lineno == 1 and text.startswith("\ufeff"):  # byte-order mark left by some editors
                    text = text[1:]
                text = text.rstrip("\r\n")
                if text.strip():
                    yield lineno, text, bad
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, unreadable file
        raise InputError(path, f"cannot read file ({e}); is it complete?") from None


def _first_line(path: Path) -> str:
    for _, text, _ in _lines(path):
        return text
    return ""


def _is_jsonl(path: Path) -> bool:
    """JSON lines by name (.jsonl/.json/.ndjson), tab-separated by name (.tsv/.txt), else by the first line."""
    name = path.name.lower()
    name = name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return True
    if name.endswith((".tsv", ".txt")):
        return False
    return _first_line(path).lstrip().startswith("{")


# ---------------------------------------------------------------------------------------------- fields


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _undecodable_field(obj: Any) -> str | None:
    """Name of the first field whose value holds undecodable bytes, if any."""
    if not isinstance(obj, dict):
        return None
    for name, value in obj.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and _UNDECODABLE.search(v) for v in values):
            return name
    return None


def _parse_json_line(path: Path, lineno: int, text: str, bad_utf8: bool) -> dict:
    """One JSON object from one line; bad JSON, non-objects and bad UTF-8 become located InputErrors."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if bad_utf8:
            raise InputError(path, _UTF8_HINT, line=lineno) from None
        hint = "; this looks like one JSON document, convert it to one object per line" if text.lstrip()[:1] == "[" else ""
        raise InputError(path, f"invalid JSON ({e.msg} at column {e.colno}){hint}", line=lineno) from None
    if bad_utf8:
        raise InputError(path, _UTF8_HINT, line=lineno, field=_undecodable_field(obj))
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object per line, got {_type_name(obj)}", line=lineno)
    return obj


def _json_id(
    path: Path, lineno: int, obj: dict, names: tuple[str, ...], default: str | None = None
) -> tuple[str, str]:
    """(id, field name) from the first of `names` present; ints are accepted (some files write them)."""
    for name in names:
        if name in obj:
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InputError(path, f"expected a string id, got {_type_name(value)}", line=lineno, field=name)
            value = str(value).strip()
            if not value:
                raise InputError(path, "empty id", line=lineno, field=name)
            return value, name
    if default is not None:
        return default, names[0]
    wanted = " or ".join(repr(n) for n in names)
    raise InputError(path, f"missing id; each line needs {wanted}", line=lineno, field=names[0])


def _json_str(path: Path, lineno: int, obj: dict, name: str, *, required: bool) -> str:
    """A string field; absent or null gives "" when not required."""
    value = obj.get(name)
    if value is None:
        if required:
            what = "missing field" if name not in obj else "null value"
            raise InputError(path, f"{what}; each line needs a {name!r} string", line=lineno, field=name)
        return ""
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {_type_name(value)}", line=lineno, field=name)
    return value


def _json_str_list(path: Path, lineno: int, obj: dict, name: str, *, allow_scalar: bool) -> list[str] | None:
    """A list of strings (or of ints, as ids); a lone string/int is wrapped when `allow_scalar`."""
    value = obj.get(name)
    if value is None:
        return None
    if allow_scalar and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise InputError(path, f"expected a list of strings, got {_type_name(value)}", line=lineno, field=name)
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InputError(path, f"expected a list of strings, found a {_type_name(item)}", line=lineno, field=name)
        out.append(str(item))
    return out


def _check_unique(path: Path, lineno: int, seen: dict[str, int], key: str, field: str) -> None:
    """Remember `key`'s line; a second occurrence is an error naming both lines."""
    first = seen.setdefault(key, lineno)
    if first != lineno:
        raise InputError(path, f"duplicate id {key!r} (first on line {first}); ids must be unique", line=lineno, field=field)


# ---------------------------------------------------------------------------------------------- TSV


def _looks_csv_quoted(field: str) -> bool:
    """Whether a field is written CSV-style (`"a ""b"" c"`), as in DPR's psgs_w100.tsv.

    Used on the first data line to pick the file's convention: raw text (like the squad-open corpus,
    where a passage may itself be a quotation) is read by splitting on tabs, CSV-quoted files with the csv
    module. Deciding per file rather than per field keeps raw passages that begin and end with a quote intact.
    """
    if len(field) < 2 or field[0] != '"' or field[-1] != '"':
        return False
    return '"' not in field[1:-1].replace('""', "")


def _split_tsv(path: Path, lineno: int, text: str, columns: tuple[str, ...], quoted: bool) -> list[str]:
    """Split one line into exactly len(columns) fields, or raise naming the missing/extra column."""
    parts = next(csv.reader([text], delimiter="\t", quotechar='"')) if quoted else text.split("\t")
    if len(parts) < len(columns):
        missing = columns[len(parts)]
        raise InputError(
            path, f"missing column: found {len(parts)} of {len(columns)} tab-separated columns "
            f"({', '.join(columns)})", line=lineno, field=missing,
        )
    if len(parts) > len(columns):
        raise InputError(
            path, f"found {len(parts)} tab-separated columns, expected {len(columns)} ({', '.join(columns)}); "
            "remove tabs inside fields", line=lineno, field=f"column {len(columns) + 1}",
        )
    return parts


def _text_is_quoted(line: str, text_at: int) -> bool:
    parts = line.split("\t")
    return text_at < len(parts) and _looks_csv_quoted(parts[text_at])


def _raise_if_undecodable(path: Path, lineno: int, parts: list[str], columns: tuple[str, ...]) -> None:
    field = next((c for c, p in zip(columns, parts) if _UNDECODABLE.search(p)), None)
    raise InputError(path, _UTF8_HINT, line=lineno, field=field)


def _header_positions(first: list[str], id_names: tuple[str, ...], text_names: tuple[str, ...]) -> dict | None:
    """Column positions named by a header line, or None when the line is data."""
    lowered = [c.strip().lower() for c in first]
    id_at = next((i for i, c in enumerate(lowered) if c in id_names), None)
    text_at = next((i for i, c in enumerate(lowered) if c in text_names), None)
    if id_at is None or text_at is None:
        return None
    title_at = lowered.index("title") if "title" in lowered else None
    return {"id": id_at, "text": text_at, "title": title_at}


# ---------------------------------------------------------------------------------------------- corpus


def load_corpus(path: str | Path) -> Corpus:
    """Load passages from a DPR TSV, a BEIR JSONL (optionally gzipped), or a directory holding corpus.*.

    TSV: a header naming the columns (`id`, `text`, optional `title`, any order) or no header, in which
    case 3 columns are read as DPR's id, text, title and 2 columns as id, text. JSONL: `_id` (or `id`),
    `text` (or `contents`), optional `title`. Passages with neither title nor text are skipped with one
    warning; duplicate ids are an error.
    """
    file = _existing_file(path, _CORPUS_FILES)
    rows = _corpus_jsonl_rows(file) if _is_jsonl(file) else _corpus_tsv_rows(file)
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    seen: dict[str, int] = {}
    skipped = 0
    for lineno, pid, text, title, id_field in rows:
        _check_unique(file, lineno, seen, pid, id_field)
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
    for lineno, line, bad in _lines(path):
        if columns is None:
            first = line.split("\t")
            header = _header_positions(first, _CORPUS_ID_COLUMNS, _CORPUS_TEXT_COLUMNS)
            if header is not None:
                columns, at = tuple(c.strip().lower() for c in first), header
                continue
            columns = _headerless_corpus_columns(path, lineno, len(first))
            at = {"id": 0, "text": 1, "title": 2 if len(columns) == 3 else None}
        if quoted is None:
            quoted = _text_is_quoted(line, at["text"])
        parts = _split_tsv(path, lineno, line, columns, quoted)
        if bad:
            _raise_if_undecodable(path, lineno, parts, columns)
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
    for lineno, line, bad in _lines(path):
        obj = _parse_json_line(path, lineno, line, bad)
        pid, id_field = _json_id(path, lineno, obj, ("_id", "id", "docid"))
        text_field = "contents" if "text" not in obj and "contents" in obj else "text"  # pyserini's name
        text = _json_str(path, lineno, obj, text_field, required=True)
        title = _json_str(path, lineno, obj, "title", required=False)
        yield lineno, pid, text, title, id_field


# ---------------------------------------------------------------------------------------------- queries


def load_queries(path: str | Path, ids: Iterable[str] | None = None) -> Queries:
    """Load queries from BEIR queries.jsonl, a QA JSONL, or a TSV `id<TAB>text` (header optional).

    The JSONL kind is decided by the first record: with `question` it is QA (`question`, optional
    `answers` list, optional `id` defaulting to the 0-based line number, optional `gold_pid` string or
    list), otherwise BEIR (`_id` or `id`, `text`). `ids`, when given, keeps only those query ids (the
    whole file is still validated). Empty texts and duplicate ids are errors.
    """
    file = _existing_file(path, _QUERY_FILES)
    keep = None if ids is None else set(ids)
    rows = _query_jsonl_rows(file) if _is_jsonl(file) else _query_tsv_rows(file)
    qids: list[str] = []
    texts: list[str] = []
    answers_of: list[list[str] | None] = []
    gold_of: list[list[str] | None] = []
    seen: dict[str, int] = {}
    for lineno, qid, text, answers, gold, id_field in rows:
        _check_unique(file, lineno, seen, qid, id_field)
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
    for lineno, line, bad in _lines(path):
        obj = _parse_json_line(path, lineno, line, bad)
        if is_qa is None:
            is_qa = "question" in obj
        if is_qa:
            qid, id_field = _json_id(path, lineno, obj, ("id", "_id"), default=str(lineno - 1))
            text_field = "question"
            answers = _json_str_list(path, lineno, obj, "answers", allow_scalar=False)
            gold = _json_str_list(path, lineno, obj, "gold_pid", allow_scalar=True)
        else:
            qid, id_field = _json_id(path, lineno, obj, ("_id", "id"))
            text_field, answers, gold = "text", None, None
        text = _json_str(path, lineno, obj, text_field, required=True)
        if not text.strip():
            raise InputError(path, "empty query text; fill it in or remove the line", line=lineno, field=text_field)
        yield lineno, qid, text, answers, gold, id_field


def _query_tsv_rows(path: Path) -> Iterator[tuple]:
    """(line, id, text, None, None, id column) for each data line of an `id<TAB>text` file."""
    columns: tuple[str, ...] | None = None
    quoted: bool | None = None
    for lineno, line, bad in _lines(path):
        if columns is None:
            first = line.split("\t")
            columns = ("id", "text")
            header = _header_positions(first, _QUERY_ID_COLUMNS, _QUERY_TEXT_COLUMNS)
            if header is not None and len(first) == 2 and header["id"] == 0:
                columns = tuple(c.strip().lower() for c in first)
                continue
        if quoted is None:
            quoted = _text_is_quoted(line, 1)
        parts = _split_tsv(path, lineno, line, columns, quoted)
        if bad:
            _raise_if_undecodable(path, lineno, parts, columns)
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
    file = _existing_file(path)
    qrels: Qrels = {}
    where: dict[tuple[str, str], int] = {}
    columns: tuple[str, ...] | None = None
    for lineno, line, bad in _lines(file):
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
            _raise_if_undecodable(file, lineno, parts, columns)
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
