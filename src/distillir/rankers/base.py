"""The re-ranker contract: score (query, passage) pairs, and re-score the head of a run with them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import InputError

# A passage as the ranker sees it: (title, text); the title may be "".
Passage = tuple[str, str]


class Ranker(ABC):
    """Scores query-passage pairs; higher is more relevant. Subclasses implement `score_pairs`."""

    @abstractmethod
    def score_pairs(self, queries: Sequence[str], passages: Sequence[Passage], batch_size: int = 32,
                    show_progress: bool = False) -> list[float]:
        """One score per pair (queries[i], passages[i]), in input order."""

    def score(
        self, query: str, passages: Sequence[Passage], batch_size: int = 32, show_progress: bool = False
    ) -> list[float]:
        """Scores of one query against several passages, in input order."""
        return self.score_pairs([query] * len(passages), passages, batch_size=batch_size, show_progress=show_progress)

    def rerank(
        self,
        run: Run,
        queries: Queries | Mapping[str, str],
        corpus: Corpus,
        top_k: int = 100,
        batch_size: int = 32,
        show_progress: bool = False,
        name: str | None = None,
    ) -> Run:
        """Re-score the top `top_k` passages of each query of `run` and order them by the new scores.

        Passages beyond `top_k` are dropped, so the new run never mixes ranker and retriever scores.
        Ties are broken by passage id, like every `Run`. All pairs of all queries are scored in one call,
        so batches are filled across queries.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        query_text = _query_lookup(queries)
        pair_queries: list[str] = []
        pair_passages: list[Passage] = []
        owners: list[tuple[str, str]] = []
        for qid, hits in run.items():
            if qid not in query_text:
                raise InputError(
                    getattr(queries, "source", None),
                    f"query {qid!r} of run {run.name!r} is not among the queries given",
                )
            for pid, _ in hits[:top_k]:
                row = corpus.index_of.get(pid)
                if row is None:
                    raise InputError(
                        corpus.source, f"passage {pid!r} (run {run.name!r}, query {qid!r}) is not in the corpus given"
                    )
                pair_queries.append(query_text[qid])
                pair_passages.append((corpus.titles[row], corpus.texts[row]))
                owners.append((qid, pid))
        scores = self.score_pairs(pair_queries, pair_passages, batch_size=batch_size, show_progress=show_progress)
        reranked: dict[str, list[tuple[str, float]]] = {qid: [] for qid in run}  # keeps queries with no hits
        for (qid, pid), score in zip(owners, scores):
            reranked[qid].append((pid, score))
        return Run(reranked, name=name or f"{run.name}.reranked")


def _query_lookup(queries: Queries | Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(queries, Queries):
        return dict(zip(queries.ids, queries.texts))
    return queries
