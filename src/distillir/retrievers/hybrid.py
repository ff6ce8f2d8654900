"""Fusing runs, and a retriever that fuses the runs of two (or more) retrievers over one corpus.

Two fusion rules:

- `reciprocal_rank_fusion` (Cormack, Clarke & Buettcher, SIGIR 2009): score(d) = sum_i w_i / (k + rank_i(d)),
  rank 1-based in run i; a run that did not return d adds nothing. Needs no score calibration.
- `interpolate`: per query, each run's scores are normalised (min-max, z-score, or left as they are), then
  summed with weights. A passage a run did not return gets that run's *minimum* normalised score for the
  query: the run ranked it below everything it returned, so the best guess it can give is "no better than
  its worst hit" (0 under min-max), rather than a value as low as the scale allows, which would let one
  run's cut-off veto a passage the other run put first.

Scores are summed with `math.fsum`, so a passage's fused score does not depend on the order of the runs,
and exact ties stay exact; `Run` then breaks them by passage id.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillir.data.run import Run
from distillir.data.types import Queries
from distillir.errors import ConfigError, IndexMismatchError
from distillir.retrievers.base import Retriever, load_index, read_manifest, retriever_class

NORMALIZATIONS = ("minmax", "zscore", "none")
METHODS = ("rrf", "interpolate")
DEFAULT_FUSION_DEPTH = 100


def _check_weights(n_runs: int, weights: Sequence[float] | None) -> list[float]:
    if n_runs == 0:
        raise ConfigError("fusion needs at least one run")
    if weights is None:
        return [1.0] * n_runs
    if len(weights) != n_runs:
        raise ConfigError(f"got {len(weights)} fusion weights for {n_runs} runs")
    return [float(w) for w in weights]


def _query_ids(runs: Sequence[Run]) -> list[str]:
    """Every query in any run, in order of first appearance."""
    return list(dict.fromkeys(q for run in runs for q in run))


def _fused_run(per_query: dict[str, dict[str, list[float]]], top_k: int | None, name: str) -> Run:
    run = Run({q: ((pid, math.fsum(parts)) for pid, parts in hits.items()) for q, hits in per_query.items()}, name)
    return run.top(top_k) if top_k is not None else run


def reciprocal_rank_fusion(
    runs: Sequence[Run], k: float = 60, weights: Sequence[float] | None = None, top_k: int | None = None
) -> Run:
    """RRF: sum over runs of w_i / (k + rank), rank 1-based in each run's (-score, pid) order."""
    weights = _check_weights(len(runs), weights)
    if k < 0:
        raise ConfigError(f"RRF k must be >= 0, got {k}")
    per_query: dict[str, dict[str, list[float]]] = {q: {} for q in _query_ids(runs)}
    for run, w in zip(runs, weights):
        for qid, hits in run.items():
            fused = per_query[qid]
            for rank, (pid, _) in enumerate(hits, 1):
                fused.setdefault(pid, []).append(w / (k + rank))
    return _fused_run(per_query, top_k, "rrf")


def normalize_scores(scores: list[float], normalization: str) -> list[float]:
    """One query's scores from one run, rescaled. Constant scores (or a single hit) map to 0: they carry no
    preference among the run's own hits."""
    if normalization == "none" or not scores:
        return list(scores)
    if normalization == "minmax":
        lo, hi = min(scores), max(scores)
        return [(s - lo) / (hi - lo) if hi > lo else 0.0 for s in scores]
    if normalization == "zscore":
        mean = math.fsum(scores) / len(scores)
        std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / len(scores))  # population std
        return [(s - mean) / std if std > 0 else 0.0 for s in scores]
    raise ConfigError(f"unknown score normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")


def interpolate(
    runs: Sequence[Run],
    weights: Sequence[float] | None = None,
    normalization: str = "minmax",
    top_k: int | None = None,
) -> Run:
    """Weighted sum of per-query normalised scores (equal weights when None). A passage missing from a run
    gets that run's minimum normalised score for the query; a run with no hits for the query adds 0."""
    weights = _check_weights(len(runs), weights)
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown score normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
    per_query: dict[str, dict[str, list[float]]] = {}
    for qid in _query_ids(runs):
        normalised: list[tuple[dict[str, float], float]] = []  # (pid -> score, floor) per run
        for run in runs:
            hits = run.get(qid, [])
            scores = normalize_scores([s for _, s in hits], normalization)
            normalised.append(({pid: s for (pid, _), s in zip(hits, scores)}, min(scores, default=0.0)))
        candidates = dict.fromkeys(pid for by_pid, _ in normalised for pid in by_pid)
        per_query[qid] = {
            pid: [w * by_pid.get(pid, floor) for (by_pid, floor), w in zip(normalised, weights)] for pid in candidates
        }
    return _fused_run(per_query, top_k, "interpolate")


def fuse(
    runs: Sequence[Run],
    method: str = "rrf",
    weights: Sequence[float] | None = None,
    rrf_k: float = 60,
    normalization: str = "minmax",
    top_k: int | None = None,
) -> Run:
    """Dispatch to `reciprocal_rank_fusion` or `interpolate` by name (what configs and the CLI use)."""
    if method == "rrf":
        return reciprocal_rank_fusion(runs, k=rrf_k, weights=weights, top_k=top_k)
    if method == "interpolate":
        return interpolate(runs, weights=weights, normalization=normalization, top_k=top_k)
    raise ConfigError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")


class HybridRetriever(Retriever):
    """Searches each part (e.g. BM25 and a dense index) `fusion_depth` deep and fuses the runs.

    Saved self-contained: each part is saved in `part0/`, `part1/`, ... inside the hybrid's directory, and
    the manifest records the fusion settings and the parts' kinds. Loading goes through `base.load_index`
    for each part, so torch is imported only if a part is a dense index.
    """

    kind = "hybrid"

    def __init__(
        self,
        parts: Sequence[Retriever],
        method: str = "rrf",
        weights: Sequence[float] | None = None,
        rrf_k: float = 60,
        normalization: str = "minmax",
        fusion_depth: int | None = None,
    ):
        parts = list(parts)
        if len(parts) < 2:
            raise ConfigError(f"a hybrid retriever needs at least two parts, got {len(parts)}")
        first = parts[0]
        for part in parts[1:]:
            if part.corpus_fingerprint != first.corpus_fingerprint:
                raise IndexMismatchError(
                    f"hybrid parts were built from different corpora: the {first.kind} index from {first.corpus_source} "
                    f"(fingerprint {first.corpus_fingerprint}, {len(first.passage_ids)} passages), the {part.kind} "
                    f"index from {part.corpus_source} (fingerprint {part.corpus_fingerprint}, "
                    f"{len(part.passage_ids)} passages). Build both from the same corpus."
                )
        if method not in METHODS:
            raise ConfigError(f"unknown fusion method {method!r}; choose from {', '.join(METHODS)}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown score normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
        if fusion_depth is not None and fusion_depth < 1:
            raise ConfigError(f"fusion_depth must be >= 1, got {fusion_depth}")
        super().__init__(first.passage_ids, first.corpus_fingerprint, first.corpus_source)
        self.parts = parts
        self.method = method
        self.weights = _check_weights(len(parts), weights)
        self.rrf_k = float(rrf_k)
        self.normalization = normalization
        self.fusion_depth = fusion_depth

    @classmethod
    def from_dirs(cls, directories: Sequence[str | Path], corpus=None, **fusion: Any) -> HybridRetriever:
        """Fuse saved indexes, e.g. `HybridRetriever.from_dirs([bm25_dir, dense_dir], method="rrf")`."""
        return cls([load_index(d, corpus) for d in directories], **fusion)

    def search(self, queries: Queries | list[str], top_k: int = 100) -> Run:
        """Fused top-k. Each part is searched max(top_k, fusion_depth) deep (fusion_depth defaults to 100)."""
        depth = max(top_k, self.fusion_depth or DEFAULT_FUSION_DEPTH)
        runs = [part.search(queries, depth) for part in self.parts]
        run = fuse(runs, self.method, self.weights, self.rrf_k, self.normalization, top_k)
        run.name = self.kind
        return run

    # --- persistence -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {
            "fusion": {
                "method": self.method,
                "weights": self.weights,
                "rrf_k": self.rrf_k,
                "normalization": self.normalization,
                "fusion_depth": self.fusion_depth,
            },
            "parts": [{"dir": f"part{i}", "kind": p.kind} for i, p in enumerate(self.parts)],
        }

    def _save_to(self, tmp_dir: Path) -> None:
        for i, part in enumerate(self.parts):
            part.save(tmp_dir / f"part{i}")

    @classmethod
    def _load_from(
        cls, directory: Path, manifest: dict[str, Any], passage_ids: list[str], **kwargs: Any
    ) -> HybridRetriever:
        """Extra keyword arguments (e.g. a dense part's device) go to each part that accepts them."""
        parts = []
        for entry in manifest["parts"]:
            part_dir = directory / entry["dir"]
            part_class = retriever_class(read_manifest(part_dir)["kind"])
            parts.append(load_index(part_dir, **_accepted_kwargs(part_class._load_from, kwargs)))
        return cls(parts, **manifest["fusion"])


def _accepted_kwargs(function, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` that `function` takes (all of them if it has **kwargs)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in parameters}


def union_of_tops(runs_and_depths: Sequence[tuple[Run, int]], k: float = 60) -> Run:
    """Each query's union of several runs' tops (run, depth), deduplicated, in RRF order: Re2G's merged BM25 +
    dense candidates, whose scores only a re-ranker makes comparable."""
    runs = [run.top(depth) for run, depth in runs_and_depths if depth > 0]
    return reciprocal_rank_fusion(runs, k=k, top_k=sum(depth for _, depth in runs_and_depths))
