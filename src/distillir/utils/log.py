"""Logging with rich when a terminal is attached; one place to configure it."""

from __future__ import annotations

import logging
import os

_configured = False


def get_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        level = os.environ.get("DISTILLIR_LOG", "INFO").upper()
        root = logging.getLogger("distillir")
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            root.addHandler(handler)
        root.setLevel(level)
        _configured = True
    return logging.getLogger(name)
