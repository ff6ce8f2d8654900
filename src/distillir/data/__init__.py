"""Data: in-memory types, loaders for the field's file formats, and datasets resolved by name.

Importing this package is cheap (standard library and tqdm only, never torch).
"""

from distillir.data.datasets import (
    KNOWN_DATASETS,
    available_splits,
    build_squad_open,
    data_dirs,
    load_dataset,
    resolve_dataset_dir,
)
from distillir.data.loaders import DataWarning, check_qrels, load_corpus, load_qrels, load_queries
from distillir.data.types import Corpus, Dataset, Qrels, Queries

__all__ = [
    "KNOWN_DATASETS",
    "Corpus",
    "DataWarning",
    "Dataset",
    "Qrels",
    "Queries",
    "available_splits",
    "build_squad_open",
    "check_qrels",
    "data_dirs",
    "load_corpus",
    "load_dataset",
    "load_qrels",
    "load_queries",
    "resolve_dataset_dir",
]
