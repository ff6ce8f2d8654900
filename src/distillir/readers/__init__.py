"""Readers: models that answer a question from retrieved passages, and teach retrievers which passages helped.

`FiDReader` (Fusion-in-Decoder; Izacard & Grave, 2021) is the reader used by the FiD-KD recipe.
"""

from distillir.readers.fid import (
    DEFAULT_TEMPLATE,
    FiDBatch,
    FiDCollator,
    FiDOutput,
    FiDReader,
    examples_from_run,
    load_fid_examples,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "FiDBatch",
    "FiDCollator",
    "FiDOutput",
    "FiDReader",
    "examples_from_run",
    "load_fid_examples",
]
