"""Resolve the CLI's CORPUS / QUERIES / QRELS arguments: a file, a dataset directory, or a dataset name.

`scifact` or `scifact:test` name a dataset (resolved like BEIR / ir_datasets: $DISTILLIR_DATA, ../shared/data,
then a download into the cache); anything that exists on disk is read as a file or directory.
"""

from __future__ import annotations

from pathlib import Path

from distillir.data.types import Corpus, Qrels, Queries


def _split_name(arg: str, default_split: str) -> tuple[str, str]:
    name, _, split = arg.partition(":")
    return name, split or default_split


def resolve_corpus(arg: str) -> Corpus:
    from distillir.data.datasets import resolve_dataset_dir
    from distillir.data.loaders import load_corpus

    if Path(arg).exists():
        return load_corpus(arg)
    name, _ = _split_name(arg, "test")
    return load_corpus(resolve_dataset_dir(name))


def resolve_queries(arg: str, default_split: str = "test", ids: set[str] | None = None) -> Queries:
    from distillir.data.datasets import load_dataset
    from distillir.data.loaders import load_queries

    if Path(arg).is_file():
        return load_queries(arg, ids=ids)
    name, split = _split_name(arg, default_split)
    queries = load_dataset(name, split=split).queries
    return queries if ids is None else queries.subset([q for q in queries.ids if q in ids])


def resolve_qrels(arg: str, default_split: str = "test") -> Qrels:
    from distillir.data.datasets import load_dataset
    from distillir.data.loaders import load_qrels

    if Path(arg).is_file():
        return load_qrels(arg)
    name, split = _split_name(arg, default_split)
    qrels = load_dataset(name, split=split).qrels
    if qrels is None:
        from distillir.errors import InputError

        raise InputError(arg, f"dataset split {split!r} has no qrels")
    return qrels
