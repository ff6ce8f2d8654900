"""Reading the field's text files line by line: existing files (or the named file in a directory), plain or
gzip bytes decoded one line at a time (so an invalid UTF-8 byte is located exactly), JSON lines and TSV
fields checked with errors naming file, line and field. `distillir.data.loaders` builds on these.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from distillir.errors import InputError

# Lone surrogates are what `surrogateescape` turns undecodable bytes into.
UNDECODABLE = re.compile("[\udc80-\udcff]")
UTF8_HINT = "invalid UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
UTF16_HINT = "the file is UTF-16 (or holds NUL bytes), not UTF-8; re-encode it (iconv -f utf-16 -t utf-8)"


def existing_file(path: str | Path, directory_files: tuple[str, ...] = ()) -> Path:
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


def open_bytes(path: Path) -> IO[bytes]:
    """Open for binary reading, transparently un-gzipping when the file starts with the gzip magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """Yield (line number, text without line end, whether it had invalid UTF-8) for each non-blank line.

    Invalid bytes are kept as lone surrogates so the caller can find out which field holds them.
    """
    try:
        with open_bytes(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text, bad = raw.decode("utf-8"), False
                except UnicodeDecodeError:
                    text, bad = raw.decode("utf-8", "surrogateescape"), True
                if lineno == 1:
                    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in raw:
                        raise InputError(path, UTF16_HINT, line=1)
                    text = text.removeprefix("\ufeff")  # UTF-8 byte-order mark left by some editors
                text = text.rstrip("\r\n")
                if text.strip():
                    yield lineno, text, bad
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt gzip, unreadable file
        raise InputError(path, f"cannot read file ({e}); is it complete?") from None


def first_line(path: Path) -> str:
    for _, text, _ in lines(path):
        return text
    return ""


def is_jsonl(path: Path) -> bool:
    """JSON lines by name (.jsonl/.json/.ndjson), tab-separated by name (.tsv/.txt), else by the first line."""
    name = path.name.lower()
    name = name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return True
    if name.endswith((".tsv", ".txt")):
        return False
    return first_line(path).lstrip().startswith("{")


# ---------------------------------------------------------------------------------------------- fields


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def undecodable_field(obj: Any) -> str | None:
    """Name of the first field whose value holds undecodable bytes, if any."""
    if not isinstance(obj, dict):
        return None
    for name, value in obj.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and UNDECODABLE.search(v) for v in values):
            return name
    return None


def parse_json_line(path: Path, lineno: int, text: str, bad_utf8: bool) -> dict:
    """One JSON object from one line; bad JSON, non-objects and bad UTF-8 become located InputErrors."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if bad_utf8:
            raise InputError(path, UTF8_HINT, line=lineno) from None
        hint = "; this looks like one JSON document, convert it to one object per line" if text.lstrip()[:1] == "[" else ""
        raise InputError(path, f"invalid JSON ({e.msg} at column {e.colno}){hint}", line=lineno) from None
    if bad_utf8:
        raise InputError(path, UTF8_HINT, line=lineno, field=undecodable_field(obj))
    if not isinstance(obj, dict):
        raise InputError(path, f"expected a JSON object per line, got {type_name(obj)}", line=lineno)
    return obj


def json_id(
    path: Path, lineno: int, obj: dict, names: tuple[str, ...], default: str | None = None
) -> tuple[str, str]:
    """(id, field name) from the first of `names` present; ints are accepted (some files write them)."""
    for name in names:
        if name in obj:
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InputError(path, f"expected a string id, got {type_name(value)}", line=lineno, field=name)
            value = str(value).strip()
            if not value:
                raise InputError(path, "empty id", line=lineno, field=name)
            return value, name
    if default is not None:
        return default, names[0]
    wanted = " or ".join(repr(n) for n in names)
    raise InputError(path, f"missing id; each line needs {wanted}", line=lineno, field=names[0])


def json_str(path: Path, lineno: int, obj: dict, name: str, *, required: bool) -> str:
    """A string field; absent or null gives "" when not required."""
    value = obj.get(name)
    if value is None:
        if required:
            what = "missing field" if name not in obj else "null value"
            raise InputError(path, f"{what}; each line needs a {name!r} string", line=lineno, field=name)
        return ""
    if not isinstance(value, str):
        raise InputError(path, f"expected a string, got {type_name(value)}", line=lineno, field=name)
    return value


def json_str_list(path: Path, lineno: int, obj: dict, name: str, *, allow_scalar: bool) -> list[str] | None:
    """A list of strings (or of ints, as ids); a lone string/int is wrapped when `allow_scalar`."""
    value = obj.get(name)
    if value is None:
        return None
    if allow_scalar and isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise InputError(path, f"expected a list of strings, got {type_name(value)}", line=lineno, field=name)
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise InputError(path, f"expected a list of strings, found a {type_name(item)}", line=lineno, field=name)
        out.append(str(item))
    return out


def check_unique(path: Path, lineno: int, seen: dict[str, int], key: str, field: str) -> None:
    """Remember `key`'s line; a second occurrence is an error naming both lines."""
    first = seen.setdefault(key, lineno)
    if first != lineno:
        raise InputError(path, f"duplicate id {key!r} (first on line {first}); ids must be unique", line=lineno, field=field)


# ---------------------------------------------------------------------------------------------- TSV


def looks_csv_quoted(field: str) -> bool:
    """Whether a field is written CSV-style (`"a ""b"" c"`), as in DPR's psgs_w100.tsv.

    Used on the first data line to pick the file's convention: raw text (like the squad-open corpus,
    where a passage may itself be a quotation) is read by splitting on tabs, CSV-quoted files with the csv
    module. Deciding per file rather than per field keeps raw passages that begin and end with a quote intact.
    """
    if len(field) < 2 or field[0] != '"' or field[-1] != '"':
        return False
    return '"' not in field[1:-1].replace('""', "")


def split_tsv(path: Path, lineno: int, text: str, columns: tuple[str, ...], quoted: bool) -> list[str]:
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


def text_is_quoted(line: str, text_at: int) -> bool:
    parts = line.split("\t")
    return text_at < len(parts) and looks_csv_quoted(parts[text_at])


def raise_if_undecodable(path: Path, lineno: int, parts: list[str], columns: tuple[str, ...]) -> None:
    field = next((c for c, p in zip(columns, parts) if UNDECODABLE.search(p)), None)
    raise InputError(path, UTF8_HINT, line=lineno, field=field)


def header_positions(first: list[str], id_names: tuple[str, ...], text_names: tuple[str, ...]) -> dict | None:
    """Column positions named by a header line, or None when the line is data."""
    lowered = [c.strip().lower() for c in first]
    id_at = next((i for i, c in enumerate(lowered) if c in id_names), None)
    text_at = next((i for i, c in enumerate(lowered) if c in text_names), None)
    if id_at is None or text_at is None:
        return None
    title_at = lowered.index("title") if "title" in lowered else None
    return {"id": id_at, "text": text_at, "title": title_at}


__all__ = [
    "UNDECODABLE",
    "UTF8_HINT",
    "UTF16_HINT",
    "check_unique",
    "existing_file",
    "first_line",
    "header_positions",
    "is_jsonl",
    "json_id",
    "json_str",
    "json_str_list",
    "lines",
    "looks_csv_quoted",
    "open_bytes",
    "parse_json_line",
    "raise_if_undecodable",
    "split_tsv",
    "text_is_quoted",
    "type_name",
    "undecodable_field",
]
