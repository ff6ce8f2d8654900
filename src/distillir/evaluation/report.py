"""Markdown tables of results, for the CLI and the benchmark reports."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real


def _cell(value: object, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return f"{float(value):.{digits}f}"
    # A "|" would end the cell early; newlines would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_numeric(values: list[object]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, Real) and not isinstance(v, bool) for v in present)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, *, digits: int = 3) -> str:
    """A Markdown table: one row per dict, one column per name (default: keys in first-seen order).

    Floats get `digits` decimals, numeric columns are right-aligned, missing values are blank.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_cell(row.get(c), digits) for c in columns] for row in rows]
    header = [_cell(c, digits) for c in columns]
    widths = [max([len(header[j]), 3, *(len(r[j]) for r in cells)]) for j in range(len(columns))]
    numeric = [_is_numeric([row.get(c) for row in rows]) for c in columns]

    def line(parts: list[str]) -> str:
        padded = [p.rjust(w) if num else p.ljust(w) for p, w, num in zip(parts, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in cells)])
