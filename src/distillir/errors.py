"""Errors users see. Each names where the problem is, so no stack trace is needed to fix it."""

from __future__ import annotations

from pathlib import Path


class DistillirError(Exception):
    """Base class for errors that are the user's to fix (bad input, bad config, mismatched index)."""


class InputError(DistillirError, ValueError):
    """A problem in an input file, located by file, line and field."""

    def __init__(self, path: str | Path | None, message: str, *, line: int | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path or "<input>"
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class ConfigError(DistillirError, ValueError):
    """An invalid configuration key or value."""


class IndexMismatchError(DistillirError):
    """An index was asked to serve a corpus or model it was not built from."""
