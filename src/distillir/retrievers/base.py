"""The retriever contract every index kind (sparse, dense, hybrid, generative) follows.

An index is a directory with a `manifest.json` naming its kind, the corpus it was built from
(fingerprint, size, source) and kind-specific settings, plus the passage ids in row order, so that
searching needs no corpus while anything that needs passage texts can check it got the right corpus.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import IndexMismatchError, InputError
from distillir.utils.io import atomic_dir, file_digests, verify_digests, write_json

MANIFEST = "manifest.json"
IDS_FILE = "passage_ids.json"
FORMAT_VERSION = 1


class Retriever(ABC):
    """Search a fixed corpus. Subclasses set `kind` and implement `search`, `_save_to`, `_load_from`."""

    kind: ClassVar[str]

    def __init__(self, passage_ids: list[str], corpus_fingerprint: str, corpus_source: str | None = None):
        self.passage_ids = passage_ids
        self.corpus_fingerprint = corpus_fingerprint
        self.corpus_source = corpus_source

    @abstractmethod
    def search(self, queries: Queries | list[str], top_k: int = 100) -> Run:
        """Top-k passages per query. Plain strings get ids "0", "1", ... in order."""

    # --- persistence -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """Kind-specific settings; subclasses extend."""
        return {}

    @abstractmethod
    def _save_to(self, tmp_dir: Path) -> None: ...

    @classmethod
    @abstractmethod
    def _load_from(cls, directory: Path, manifest: dict[str, Any], passage_ids: list[str]) -> Retriever: ...

    def save(self, directory: str | Path) -> Path:
        """Write the index atomically: a reader never sees a half-written directory. It replaces only an
        empty directory or an index (one with a manifest); the manifest records every file's size and
        sha256, which loading verifies."""
        directory = Path(directory)
        with atomic_dir(directory, owned=is_index_dir) as tmp:
            self._save_to(tmp)
            with open(tmp / IDS_FILE, "w", encoding="utf-8") as f:
                json.dump(self.passage_ids, f)
            write_json(
                tmp / MANIFEST,
                {
                    "format_version": FORMAT_VERSION,
                    "kind": self.kind,
                    "corpus": {
                        "fingerprint": self.corpus_fingerprint,
                        "size": len(self.passage_ids),
                        "source": self.corpus_source,
                    },
                    **self.manifest(),
                    "files": file_digests(tmp),
                },
            )
        return directory

    def check_corpus(self, corpus: Corpus) -> None:
        """Refuse a corpus other than the one this index was built from."""
        if corpus.fingerprint() != self.corpus_fingerprint:
            raise IndexMismatchError(
                f"this {self.kind} index was built from a corpus with fingerprint {self.corpus_fingerprint} "
                f"({len(self.passage_ids)} passages, from {self.corpus_source}); the corpus given "
                f"({len(corpus)} passages, from {corpus.source}) has fingerprint {corpus.fingerprint()}. "
                "Rebuild the index for this corpus."
            )


def is_index_dir(directory: str | Path) -> bool:
    """Whether `directory` holds an index this tool wrote (its manifest names a kind)."""
    try:
        return "kind" in json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError(directory, f"not an index directory (no {MANIFEST}); build one with `distillir index`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON: {e.msg}", line=e.lineno) from None
    if "kind" not in manifest:
        raise InputError(path, "missing", field="kind")
    return manifest


_KINDS = {
    "bm25": "distillir.retrievers.bm25:BM25Retriever",
    "dense": "distillir.retrievers.dense.retriever:DenseRetriever",
    "hybrid": "distillir.retrievers.hybrid:HybridRetriever",
}


def retriever_class(kind: str) -> type[Retriever]:
    import importlib

    if kind not in _KINDS:
        raise InputError(None, f"unknown retriever kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    module, name = _KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_index(directory: str | Path, corpus: Corpus | None = None, **kwargs: Any) -> Retriever:
    """Open any saved index; with `corpus`, refuse it unless it is the corpus the index was built from."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if isinstance(manifest.get("files"), dict):  # indexes written before checksums have none to verify
        verify_digests(directory, manifest["files"], what="index")
    ids_path = directory / IDS_FILE
    try:
        passage_ids = json.loads(ids_path.read_text(encoding="utf-8")) if ids_path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(ids_path, f"corrupt: not a JSON list of passage ids ({e}); rebuild the index") from None
    retriever = retriever_class(manifest["kind"])._load_from(directory, manifest, passage_ids, **kwargs)
    if corpus is not None:
        retriever.check_corpus(corpus)
    return retriever


def query_lists(queries: Queries | list[str]) -> tuple[list[str], list[str]]:
    """(ids, texts) from Queries or a plain list of strings."""
    if isinstance(queries, Queries):
        return queries.ids, queries.texts
    texts = list(queries)
    return [str(i) for i in range(len(texts))], texts
