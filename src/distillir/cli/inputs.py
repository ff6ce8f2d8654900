"""Resolve and check the CLI's inputs and outputs, once for every command.

CORPUS / QUERIES / QRELS: a file, a dataset directory, or a dataset name (`scifact`, `scifact:test`, resolved
like BEIR / ir_datasets: $DISTILLIR_DATA, ../shared/data, then a download into the cache); anything that
exists on disk is read as a file or directory, and a missing argument that looks like a path is reported as
a missing file. Outputs are checked before any work: a file output never replaces a directory or an existing
file without --overwrite; an index output replaces only an index this tool wrote, and only with --overwrite.
Runs are checked against the corpus and qrels they are used with, so a run over another corpus is an error,
not all-zero metrics.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from distillir.data.types import Corpus, Qrels, Queries
from distillir.errors import InputError

FILE_SUFFIXES = (".tsv", ".jsonl", ".json", ".ndjson", ".txt", ".gz", ".trec", ".csv", ".run")


def _split_name(arg: str, default_split: str) -> tuple[str, str]:
    name, _, split = arg.partition(":")
    return name, split or default_split


def _missing_file(arg: str, what: str) -> None:
    """A path that does not exist and is not a dataset name: say so as a missing file."""
    path = Path(arg)
    if not path.exists() and (path.suffix.lower() in FILE_SUFFIXES or "/" in arg or "\\" in arg):
        raise InputError(arg, f"{what} not found: no such file or directory")


def resolve_corpus(arg: str) -> Corpus:
    from distillir.data.datasets import resolve_dataset_dir
    from distillir.data.loaders import load_corpus

    if Path(arg).exists():
        corpus = load_corpus(arg)
    else:
        _missing_file(arg, "corpus")
        name, _ = _split_name(arg, "test")
        corpus = load_corpus(resolve_dataset_dir(name))
    if not len(corpus):
        raise InputError(corpus.source or arg, "the corpus holds no passages")
    return corpus


def resolve_queries(arg: str, default_split: str = "test", ids: set[str] | None = None,
                    of: str = "") -> Queries:
    """Queries, optionally only those in `ids` (`of` names where those ids come from, for the error when
    none is left). No query is an error: a run over nothing would look like success."""
    from distillir.data.datasets import load_dataset
    from distillir.data.loaders import load_queries

    if Path(arg).is_file():
        queries = load_queries(arg, ids=ids)
    else:
        _missing_file(arg, "queries file")
        name, split = _split_name(arg, default_split)
        queries = load_dataset(name, split=split).queries
        queries = queries if ids is None else queries.subset([q for q in queries.ids if q in ids])
    if not len(queries):
        raise InputError(arg, f"no query shared with {of}" if ids is not None and of else "holds no queries")
    return queries


def resolve_qrels(arg: str, default_split: str = "test") -> Qrels:
    from distillir.data.datasets import load_dataset
    from distillir.data.loaders import load_qrels

    if Path(arg).is_file():
        qrels = load_qrels(arg)
    else:
        _missing_file(arg, "qrels file")
        if Path(arg).is_dir() and not (Path(arg) / "qrels").is_dir():
            raise InputError(arg, "is a directory without qrels/; pass the qrels file itself")
        name, split = _split_name(arg, default_split)
        qrels = load_dataset(name, split=split).qrels
        if qrels is None:
            raise InputError(arg, f"dataset split {split!r} has no qrels")
    if not qrels:
        raise InputError(arg, "holds no judgments")
    return qrels


# ---------------------------------------------------------------------------------------------- outputs


def _below_a_file(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path: Path, overwrite: bool = False) -> None:
    """Before any work: the output file can be written without destroying anything unasked."""
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name for the output")
    blocker = _below_a_file(path)
    if blocker is not None:
        raise InputError(path, f"cannot be created: {blocker} is a file, not a directory")
    if path.exists() and not overwrite:
        raise InputError(path, "already exists; pass --overwrite to replace it, or choose another --out")


def check_output_index(path: Path, overwrite: bool = False) -> None:
    """Before any work: an index may replace only an index (with --overwrite) or an empty directory."""
    from distillir.retrievers.base import is_index_dir
    from distillir.utils.io import check_replaceable_dir

    check_replaceable_dir(path, owned=is_index_dir)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(path, "already holds an index; pass --overwrite to replace it, or choose another --out")


# ---------------------------------------------------------------------------------------------- runs


def check_run(run, path: Path, corpus: Corpus | None = None) -> None:
    """A run that holds something and, with `corpus`, names only its passages."""
    if not len(run) or not any(run.values()):
        raise InputError(path, "the run is empty: no query has a retrieved passage")
    if corpus is None:
        return
    unknown = {pid for hits in run.values() for pid, _ in hits if pid not in corpus.index_of}
    if unknown:
        total = len({pid for hits in run.values() for pid, _ in hits})
        examples = ", ".join(repr(p) for p in sorted(unknown)[:3])
        raise InputError(path, f"{len(unknown)} of the run's {total} passage ids are not in the corpus "
                               f"{corpus.source} (e.g. {examples}): was the run made over another corpus?")


def check_run_against_qrels(run, path: Path, qrels: Qrels, qrels_arg: str, corpus: Corpus | None) -> Qrels:
    """Queries in common (none is an error); with the corpus, judgments of unknown passages are dropped with a
    warning; without it, a run sharing no passage with the qrels is warned about."""
    from distillir.data.loaders import check_qrels

    if not set(run) & set(qrels):
        raise InputError(path, f"shares no query id with the qrels {qrels_arg} (run ids e.g. "
                               f"{', '.join(repr(q) for q in list(run)[:3])})")
    if corpus is not None:
        return check_qrels(qrels, corpus=corpus, path=qrels_arg)
    judged = {pid for j in qrels.values() for pid in j}
    if not any(pid in judged for hits in run.values() for pid, _ in hits):
        warnings.warn(f"{path}: no retrieved passage is judged in {qrels_arg}; was the run made over another "
                      "corpus? (pass --corpus to check)", UserWarning, stacklevel=2)
    return qrels


def max_depth(run) -> int:
    return max((len(hits) for hits in run.values()), default=0)
