"""Logging with rich when a terminal is attached; one place to configure it."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

_configured = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (a redirected or captured stderr too),
    not the stream that was current when logging was first configured."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def get_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        level = os.environ.get("DISTILLIR_LOG", "INFO").upper()
        root = logging.getLogger("distillir")
        if not root.handlers:
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            root.addHandler(handler)
        root.setLevel(level)
        _configured = True
    return logging.getLogger(name)


@contextlib.contextmanager
def transformers_quiet():
    """transformers' own warnings off for one block (its verbosity restored after): for loads whose "load
    report" (new heads, unused layers) is expected, where the caller logs one line instead."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
