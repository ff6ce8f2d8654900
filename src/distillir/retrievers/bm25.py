"""Sparse retrieval with BM25, built on bm25s (an eager sparse index: scores are precomputed per term).

Text is lower-cased, split on runs of two or more word characters (bm25s's tokenizer, the same as
scikit-learn's CountVectorizer), stripped of stopwords and stemmed with a Snowball stemmer (PyStemmer).
Passages are indexed as "title text" by default (`Corpus.with_title`).

Only passages that share at least one term with the query are returned, so a query whose terms are all
stopwords or unknown gets an empty list; a run may hold fewer than `top_k` hits per query. Ties are
broken by passage id, also at the k-th place: which of several equally scored passages make the cut
never depends on the order bm25s happens to produce.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import ConfigError, DistillirError, InputError
from distillir.retrievers.base import MANIFEST, Retriever, load_index, query_lists
from distillir.utils.io import cache_dir, fingerprint_strings

# Methods where a passage that matches no query term scores exactly 0. bm25s's "bm25l" and "bm25+"
# give every passage a baseline score, which would make "matching passages only" meaningless.
METHODS = ("lucene", "robertson", "atire")
# Bump when tokenization changes in a way that makes cached indexes stale.
TOKENIZER_VERSION = 1
DEFAULT_PARAMS: dict[str, Any] = {
    "k1": 0.9,  # Anserini's defaults, which the project's reference figures use
    "b": 0.4,
    "method": "lucene",
    "stemmer": "english",
    "stopwords": "en",
    "include_title": True,
}


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and refuse unknown or invalid settings with a message naming the setting."""
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ConfigError(f"unknown BM25 setting(s) {sorted(unknown)}; known: {sorted(DEFAULT_PARAMS)}")
    p = {**DEFAULT_PARAMS, **params}
    p["k1"], p["b"] = float(p["k1"]), float(p["b"])
    if p["k1"] < 0 or not 0 <= p["b"] <= 1:
        raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={p['k1']}, b={p['b']}")
    if p["method"] not in METHODS:
        raise ConfigError(f"BM25 method {p['method']!r} not supported; choose from {', '.join(METHODS)}")
    if p["stemmer"] is not None:
        import Stemmer

        if p["stemmer"] not in Stemmer.algorithms():
            raise ConfigError(f"unknown stemmer {p['stemmer']!r}; PyStemmer knows {', '.join(Stemmer.algorithms())}")
    stopwords = p["stopwords"]
    if stopwords is not None and not isinstance(stopwords, str):
        p["stopwords"] = sorted(set(stopwords))  # a custom list; sorted so the cache key is stable
    elif isinstance(stopwords, str):
        from bm25s.tokenization import _infer_stopwords

        try:
            _infer_stopwords(stopwords)
        except ValueError as e:
            raise ConfigError(f"unknown stopword list {stopwords!r}: {e}") from None
    p["include_title"] = bool(p["include_title"])
    return p


@lru_cache(maxsize=8)
def _stemmer(name: str):
    import Stemmer

    return Stemmer.Stemmer(name)


def tokenize(texts: list[str], stemmer: str | None, stopwords, show_progress: bool = False) -> list[list[str]]:
    """bm25s's tokenizer with our settings: lower-case, split, drop stopwords, then stem."""
    import bm25s

    return bm25s.tokenize(
        texts,
        stopwords=stopwords,
        stemmer=_stemmer(stemmer) if stemmer else None,
        return_ids=False,
        show_progress=show_progress,
    )


class BM25Retriever(Retriever):
    """BM25 over a corpus. Build with `BM25Retriever.build`, reopen with `base.load_index`."""

    kind = "bm25"

    def __init__(
        self,
        model,  # bm25s.BM25
        params: dict[str, Any],
        passage_ids: list[str],
        corpus_fingerprint: str,
        corpus_source: str | None = None,
        n_threads: int = 0,
    ):
        super().__init__(passage_ids, corpus_fingerprint, corpus_source)
        self.model = model
        self.params = params
        self.n_threads = n_threads  # bm25s's convention: 0 = in this thread, -1 = one thread per CPU

    @classmethod
    def build(cls, corpus: Corpus, show_progress: bool = False, n_threads: int = 0, **params: Any) -> BM25Retriever:
        """Index `corpus`. Settings: k1, b, method, stemmer ("english" or None), stopwords ("en", a list or
        None), include_title; see DEFAULT_PARAMS."""
        import bm25s

        params = _check_params(params)
        if len(corpus) == 0:
            raise InputError(corpus.source, "cannot build a BM25 index over an empty corpus")
        texts = [corpus.with_title(i) if params["include_title"] else corpus.texts[i] for i in range(len(corpus))]
        tokens = tokenize(texts, params["stemmer"], params["stopwords"], show_progress)
        model = bm25s.BM25(k1=params["k1"], b=params["b"], method=params["method"])
        model.index(tokens, show_progress=show_progress)
        return cls(model, params, list(corpus.ids), corpus.fingerprint(), corpus.source, n_threads)

    # --- search ------------------------------------------------------------------------------
    def _query_token_ids(self, texts: list[str]) -> list[list[int]]:
        """Vocabulary ids of each query's terms; terms the corpus never uses are dropped."""
        vocab = self.model.vocab_dict
        tokens = tokenize(texts, self.params["stemmer"], self.params["stopwords"])
        # "" is bm25s's placeholder for empty passages, never a real query term.
        return [[vocab[t] for t in q if t and t in vocab] for q in tokens]

    def _resolve_boundary_tie(self, token_ids: list[int], threshold: float, top_k: int) -> list[tuple[str, float]]:
        """Score the whole corpus and keep the best `top_k` by (-score, pid); used only when passages tie
        at the k-th place, where bm25s's partial sort picks among them arbitrarily."""
        scores = self.model.get_scores_from_ids(token_ids)
        rows = np.nonzero(scores >= threshold)[0]
        hits = sorted(((self.passage_ids[r], float(scores[r])) for r in rows), key=lambda h: (-h[1], h[0]))
        return hits[:top_k]

    def search(
        self,
        queries: Queries | list[str],
        top_k: int = 100,
        n_threads: int | None = None,
        show_progress: bool = False,
    ) -> Run:
        """Top-k passages per query, by BM25 score; passages sharing no term with a query are left out."""
        qids, texts = query_lists(queries)
        results: dict[str, list[tuple[str, float]]] = {qid: [] for qid in qids}
        token_ids = self._query_token_ids(texts)
        live = [i for i, ids in enumerate(token_ids) if ids]  # queries with at least one known term
        n_docs = len(self.passage_ids)
        top_k = min(top_k, n_docs)
        if live and top_k > 0:
            # One passage beyond top_k shows whether the k-th place is tied.
            depth = min(top_k + 1, n_docs)
            rows, scores = self.model.retrieve(
                [token_ids[i] for i in live],
                k=depth,
                n_threads=self.n_threads if n_threads is None else n_threads,
                show_progress=show_progress,
                backend_selection="numpy",  # jax, when installed, would break ties differently
            )
            for j, i in enumerate(live):
                row_scores, row_ids = scores[j], rows[j]
                kth = row_scores[top_k - 1]
                if depth > top_k and kth > 0 and row_scores[top_k] == kth:
                    results[qids[i]] = self._resolve_boundary_tie(token_ids[i], float(kth), top_k)
                else:
                    results[qids[i]] = [
                        (self.passage_ids[r], float(s)) for r, s in zip(row_ids[:top_k], row_scores[:top_k]) if s > 0
                    ]
        return Run(results, name=self.kind)

    # --- persistence -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        import bm25s

        return {"bm25": self.params, "tokenizer_version": TOKENIZER_VERSION, "bm25s_version": bm25s.__version__}

    def _save_to(self, tmp_dir: Path) -> None:
        # bm25s's own files (arrays, vocabulary, params) sit beside our manifest; the names do not clash.
        self.model.save(str(tmp_dir), show_progress=False)

    @classmethod
    def _load_from(cls, directory: Path, manifest: dict[str, Any], passage_ids: list[str], mmap: bool = False,
                   n_threads: int = 0) -> BM25Retriever:
        """`mmap=True` maps the score arrays instead of reading them, for indexes larger than memory."""
        import bm25s

        if manifest.get("tokenizer_version") != TOKENIZER_VERSION:
            raise InputError(
                directory / MANIFEST,
                f"index tokenized with tokenizer version {manifest.get('tokenizer_version')}, this distillir "
                f"uses {TOKENIZER_VERSION}; rebuild the index",
            )
        params = _check_params(manifest.get("bm25", {}))
        try:
            model = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        except (ValueError, EOFError, OSError, KeyError) as e:  # bm25s reads .npy arrays and JSON files
            raise InputError(directory, f"corrupt or truncated BM25 index ({type(e).__name__}: {e}); rebuild "
                                        "it") from None
        if model.scores["num_docs"] != len(passage_ids):
            raise InputError(
                directory,
                f"bm25s index holds {model.scores['num_docs']} passages but passage_ids.json lists "
                f"{len(passage_ids)}; the index directory is damaged, rebuild it",
            )
        corpus = manifest.get("corpus", {})
        return cls(model, params, passage_ids, corpus.get("fingerprint"), corpus.get("source"), n_threads)


def params_key(**params: Any) -> str:
    """A short hash of the complete BM25 settings (defaults filled), for cache directory names."""
    p = _check_params(params)
    return fingerprint_strings([json.dumps(p, sort_keys=True), f"tokenizer={TOKENIZER_VERSION}"])[:12]


def bm25_cached(corpus: Corpus, show_progress: bool = False, **params: Any) -> BM25Retriever:
    """Load the BM25 index for this corpus and these settings from the cache, or build and cache it.

    The cache lives in `cache_dir()/"bm25"/<corpus fingerprint>-<settings hash>`; a damaged or stale entry is
    rebuilt. Saving is atomic, so two processes building the same entry at once leave one good copy.
    """
    path = cache_dir() / "bm25" / f"{corpus.fingerprint()}-{params_key(**params)}"
    if (path / MANIFEST).is_file():
        try:
            retriever = load_index(path, corpus)
            if isinstance(retriever, BM25Retriever):
                return retriever
        except (DistillirError, OSError, ValueError, KeyError):
            pass  # unreadable entry (interrupted by an older version, disk trouble): rebuild below
    retriever = BM25Retriever.build(corpus, show_progress=show_progress, **params)
    retriever.save(path)
    return retriever
