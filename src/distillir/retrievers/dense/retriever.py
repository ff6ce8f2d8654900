"""Dense retrieval: a bi-encoder embeds the corpus once; queries are embedded at search time and matched by
inner product in a vector index.

A saved dense index holds the passage embeddings, the vector index files, and a reference to its encoder:
the model's path and name, the fingerprint of its files and of its weights, and the encoder settings. On
load the model found there is fingerprinted again and refused if it differs, so queries are never embedded
by a model other than the one that embedded the corpus. An encoder that exists only in memory (trained,
not saved) is copied into the index under encoder/; `copy_encoder=True` copies any encoder.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import IndexMismatchError, InputError
from distillir.models import DEFAULT_ENCODER, local_model_dir, model_fingerprint
from distillir.retrievers.base import Retriever, load_index, query_lists
from distillir.retrievers.dense.encoder import PASSAGE_INPUT, BiEncoder, encode_corpus_cached
from distillir.retrievers.dense.index import (
    EMBEDDINGS_FILE,
    ExactIndex,
    load_embeddings,
    load_vector_index,
    make_index,
    save_embeddings,
)

ENCODER_COPY = "encoder"


class DenseRetriever(Retriever):
    """Bi-encoder + vector index. Build with `DenseRetriever.build(corpus, encoder)`; open with `load`."""

    kind = "dense"

    def __init__(
        self,
        encoder: BiEncoder,
        index: Any,
        passage_ids: list[str],
        corpus_fingerprint: str,
        corpus_source: str | None = None,
        *,
        embeddings: Tensor | None = None,
        embeddings_dtype: str = "float32",
        copy_encoder: bool = False,
        query_batch_size: int = 128,
        device: str | None = None,
        dtype: str = "float32",
        quantize: str | None = None,
    ):
        super().__init__(passage_ids, corpus_fingerprint, corpus_source)
        if len(index) != len(passage_ids):
            raise ValueError(f"the index holds {len(index)} vectors for {len(passage_ids)} passage ids")
        self.encoder = encoder
        self.index = index
        self.embeddings_dtype = embeddings_dtype
        self.copy_encoder = copy_encoder
        self.query_batch_size = query_batch_size
        self.device = device
        self.dtype = dtype  # precision of query encoding: the one the corpus was encoded with
        self.quantize = quantize
        self._embeddings = embeddings
        self._embeddings_file: Path | None = None  # where to read them lazily after `load`
        self._encoder_ref: dict[str, Any] = {}

    # --- building and searching --------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        corpus: Corpus,
        encoder: BiEncoder | str | Path = DEFAULT_ENCODER,
        index: str = "exact",
        index_params: dict[str, Any] | None = None,
        batch_size: int = 64,
        cache: bool = True,
        device: str | None = None,
        dtype: str = "float32",
        quantize: str | None = None,
        embeddings_dtype: str = "float32",
        copy_encoder: bool = False,
        show_progress: bool | None = None,  # None: a bar for corpora of 2,048 passages or more
        **encoder_kwargs: Any,
    ) -> DenseRetriever:
        """Embed `corpus` (reusing cached embeddings when `cache`) and index it.

        `encoder`: a BiEncoder, or a hub id / path given to `BiEncoder.from_pretrained(**encoder_kwargs)`.
        `index`: "exact" (default), or faiss "flat", "hnsw", "ivfpq" with `index_params`.
        `dtype`/`quantize` apply to corpus and query encoding alike; `embeddings_dtype` ("float16" halves
        the file) only to what `save` writes.
        """
        encoder_kwargs = {k: v for k, v in encoder_kwargs.items() if v is not None}  # None: keep the default
        if not isinstance(encoder, BiEncoder):
            encoder = BiEncoder.from_pretrained(encoder, **encoder_kwargs)
        elif encoder_kwargs:
            raise TypeError(f"encoder settings {sorted(encoder_kwargs)} apply only when loading an encoder by name")
        if cache:
            embeddings = encode_corpus_cached(encoder, corpus, batch_size, device, dtype, quantize, show_progress)
        else:
            embeddings = encoder.encode_corpus(corpus, batch_size, device=device, dtype=dtype, quantize=quantize,
                                               show_progress=show_progress)
        vector_index = make_index(index, index_params, device=str(encoder.inference_device(device)))
        vector_index.add(embeddings)
        return cls(
            encoder,
            vector_index,
            list(corpus.ids),
            corpus.fingerprint(),
            corpus.source,
            embeddings=embeddings,
            embeddings_dtype=embeddings_dtype,
            copy_encoder=copy_encoder,
            device=device,
            dtype=dtype,
            quantize=quantize,
        )

    @property
    def embeddings(self) -> Tensor:
        """Passage embeddings, (num passages, dim) float32, row i for `passage_ids[i]`."""
        if self._embeddings is None:
            if isinstance(self.index, ExactIndex):
                self._embeddings = self.index.embeddings
            elif self._embeddings_file is not None:
                self._embeddings = load_embeddings(self._embeddings_file)
            else:
                raise ValueError("this dense retriever holds no passage embeddings")
        return self._embeddings

    def encode_queries(self, texts: list[str]) -> Tensor:
        return self.encoder.encode_queries(
            texts, batch_size=self.query_batch_size, device=self.device, dtype=self.dtype, quantize=self.quantize
        )

    def search(self, queries: Queries | list[str], top_k: int = 100) -> Run:
        """Top-k passages per query; scores are the encoder's similarity (inner product times scale)."""
        ids, texts = query_lists(queries)
        return self.search_embeddings(self.encode_queries(texts), top_k, ids)

    def search_embeddings(self, query_embeddings: Tensor, top_k: int = 100, query_ids: list[str] | None = None) -> Run:
        """Search with query embeddings computed elsewhere (e.g. during training)."""
        ids = query_ids if query_ids is not None else [str(i) for i in range(len(query_embeddings))]
        if len(ids) != len(query_embeddings):
            raise ValueError(f"{len(ids)} query ids for {len(query_embeddings)} query embeddings")
        scores, rows = self.index.search(query_embeddings, top_k)
        scores = scores * self.encoder.settings.scale
        run = Run(name="dense")
        for qid, q_scores, q_rows in zip(ids, scores.tolist(), rows.tolist()):
            run.add(qid, [(self.passage_ids[r], s) for s, r in zip(q_scores, q_rows) if r >= 0])
        return run

    # --- persistence -----------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        index_meta: dict[str, Any] = {"kind": getattr(self.index, "kind", "exact")}
        if hasattr(self.index, "params"):
            index_meta["params"] = self.index.params
        return {
            "encoder": self._encoder_ref,
            "index": index_meta,
            "embeddings": {"file": EMBEDDINGS_FILE, "dtype": self.embeddings_dtype, "dim": int(self.encoder.dim)},
            "encoding": {"dtype": self.dtype, "quantize": self.quantize},
        }

    def _save_to(self, tmp_dir: Path) -> None:
        self.index.save(tmp_dir, self.embeddings_dtype)
        if not (tmp_dir / EMBEDDINGS_FILE).is_file():  # faiss indexes that keep no float copy
            save_embeddings(tmp_dir / EMBEDDINGS_FILE, self.embeddings, self.embeddings_dtype)
        path = None if self.copy_encoder else self.encoder.pretrained_path()
        if path is None:
            self.encoder.write_files(tmp_dir / ENCODER_COPY)
            stored_path, fingerprint = ENCODER_COPY, model_fingerprint(tmp_dir / ENCODER_COPY)
        else:
            stored_path, fingerprint = str(path), model_fingerprint(path)
        self._encoder_ref = {
            "name_or_path": self.encoder.name_or_path,
            "path": stored_path,
            "copied": path is None,
            "fingerprint": fingerprint,
            "weights_fingerprint": self.encoder.weights_fingerprint(),
            "tokenizer_fingerprint": self.encoder.tokenizer_fingerprint(),
            "settings": asdict(self.encoder.settings),
            "passage_input": PASSAGE_INPUT,
        }

    @classmethod
    def load(
        cls,
        directory: str | Path,
        encoder: BiEncoder | None = None,
        device: str | None = None,
        corpus: Corpus | None = None,
    ) -> DenseRetriever:
        """Open a saved dense index; `encoder` replaces the stored reference only if it is the same model."""
        retriever = load_index(directory, corpus, encoder=encoder, device=device)
        if not isinstance(retriever, cls):
            raise InputError(directory, f"not a dense index (kind {retriever.kind!r})")
        return retriever

    @classmethod
    def _load_from(
        cls,
        directory: Path,
        manifest: dict[str, Any],
        passage_ids: list[str],
        encoder: BiEncoder | None = None,
        device: str | None = None,
    ) -> DenseRetriever:
        ref = manifest.get("encoder") or {}
        if not ref.get("fingerprint"):
            raise InputError(directory / "manifest.json", "missing", field="encoder.fingerprint")
        encoder = _check_encoder(encoder, ref) if encoder is not None else _load_encoder(directory, ref)
        vector_index = load_vector_index(directory, device=str(encoder.inference_device(device)))
        encoding = manifest.get("encoding", {})
        retriever = cls(
            encoder,
            vector_index,
            passage_ids,
            manifest["corpus"]["fingerprint"],
            manifest["corpus"].get("source"),
            embeddings_dtype=manifest.get("embeddings", {}).get("dtype", "float32"),
            copy_encoder=bool(ref.get("copied")),
            device=device,
            dtype=encoding.get("dtype", "float32"),
            quantize=encoding.get("quantize"),
        )
        retriever._embeddings_file = directory / EMBEDDINGS_FILE
        retriever._encoder_ref = ref
        return retriever


def _describe(ref: dict[str, Any]) -> str:
    return f"{ref.get('name_or_path') or ref.get('path')} (fingerprint {ref.get('fingerprint')})"


def _load_encoder(directory: Path, ref: dict[str, Any]) -> BiEncoder:
    """The encoder an index was built with, found by path (or name), refused if its files changed."""
    if ref.get("copied"):
        path = directory / ref["path"]
    elif Path(ref["path"]).is_dir():
        path = Path(ref["path"])
    elif ref.get("name_or_path"):
        path = local_model_dir(ref["name_or_path"])  # e.g. the packaged MiniLM installed elsewhere
    else:
        raise InputError(ref["path"], f"the encoder of the dense index at {directory} is gone")
    if not path.is_dir():
        raise InputError(path, f"the encoder of the dense index at {directory} is gone")
    found = model_fingerprint(path)
    if found != ref["fingerprint"]:
        raise IndexMismatchError(
            f"the dense index at {directory} was built with encoder {_describe(ref)}, but the model now at "
            f"{path} has fingerprint {found}. Rebuild the index with this model, or restore the original."
        )
    return BiEncoder.from_pretrained(path, **ref.get("settings", {}))


def _check_encoder(encoder: BiEncoder, ref: dict[str, Any]) -> BiEncoder:
    """Accept an explicit encoder only when its weights, vocabulary and settings equal the stored ones."""
    problems = []
    if encoder.weights_fingerprint() != ref.get("weights_fingerprint"):
        problems.append("its weights differ")
    if encoder.tokenizer_fingerprint() != ref.get("tokenizer_fingerprint"):
        problems.append("its tokenizer differs")
    stored = ref.get("settings", {})
    changed = {k: (stored.get(k), v) for k, v in asdict(encoder.settings).items() if stored.get(k) != v}
    if changed:
        problems.append(
            "settings differ (stored, given): " + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in changed.items())
        )
    if problems:
        raise IndexMismatchError(
            f"the encoder given is not the one this dense index was built with ({_describe(ref)}): "
            + "; ".join(problems)
            + ". Rebuild the index with this encoder."
        )
    return encoder
