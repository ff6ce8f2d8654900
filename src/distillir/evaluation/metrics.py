"""Ranking metrics against qrels, computed by pytrec_eval (trec_eval) with the conventions made explicit.

Conventions, chosen so numbers match the papers and do not depend on the tool's quirks:

* Ties: the run's own order decides (score descending, then passage id ascending). trec_eval would
  break ties by doc id *descending*, so scores are replaced by rank-derived ones before evaluation.
* Missing queries: a query in the qrels but absent from the run (or with no passages) scores 0 on
  every metric and stays in the mean. pytrec_eval alone would silently skip it, flattering the run.
  Queries in the run but not in the qrels are ignored.
* MRR@k: trec_eval's `recip_rank` has no cutoff, so the run is truncated to k first.
* Relevance: a judgment >= `relevance_level` (default 1) counts as relevant; nDCG uses the grades as
  linear gains, as trec_eval does.

Metric names may be given as trec_eval measures ("ndcg_cut_10", "recall_100", "map", "P_5"), with the
extension "recip_rank@10" for truncated MRR, or by their display names ("nDCG@10", "MRR@10", "R@100",
"MAP", "P@5"). Results always use the display names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from distillir.data.types import Qrels, Queries
from distillir.utils.log import get_logger

logger = get_logger(__name__)

DEFAULT_METRICS = ("ndcg_cut_10", "recip_rank@10", "recall_100", "map")

# trec_eval measure family -> display prefix; the family takes a cutoff as "family_k".
_CUTOFF_FAMILIES = {
    "ndcg_cut": "nDCG",
    "recall": "R",
    "P": "P",
    "map_cut": "MAP",
    "success": "Success",
}
_PLAIN = {"map": "MAP", "recip_rank": "MRR", "ndcg": "nDCG", "Rprec": "R-Prec", "bpref": "bpref"}
_DISPLAY_TO_FAMILY = {v: k for k, v in _CUTOFF_FAMILIES.items()}
_DISPLAY_TO_PLAIN = {v: k for k, v in _PLAIN.items()}


@dataclass(frozen=True)
class Metric:
    """One parsed metric: the trec_eval family, its cutoff (or None), and whether to truncate the run."""

    family: str
    cutoff: int | None
    truncate: bool  # True for recip_rank@k: cutoff applied by truncating the run

    @property
    def measure(self) -> str:
        """The measure as pytrec_eval takes it ("ndcg_cut.10")."""
        return self.family if self.cutoff is None or self.truncate else f"{self.family}.{self.cutoff}"

    @property
    def result_key(self) -> str:
        """The key pytrec_eval reports it under ("ndcg_cut_10")."""
        return self.family if self.cutoff is None or self.truncate else f"{self.family}_{self.cutoff}"

    @property
    def name(self) -> str:
        """Display name ("nDCG@10", "MRR@10", "MAP")."""
        if self.cutoff is None:
            return _PLAIN.get(self.family, self.family)
        if self.truncate:
            return f"{_PLAIN.get(self.family, self.family)}@{self.cutoff}"
        return f"{_CUTOFF_FAMILIES[self.family]}@{self.cutoff}"


def parse_metric(spec: str) -> Metric:
    """Parse a trec_eval name ("ndcg_cut_10"), a truncated one ("recip_rank@10") or a display name."""
    m = re.fullmatch(r"(.+?)@(\d+)", spec)
    if m:
        head, k = m.group(1), int(m.group(2))
        if head in ("recip_rank", "MRR"):
            return _checked(Metric("recip_rank", k, truncate=True), spec)
        family = _DISPLAY_TO_FAMILY.get(head, head if head in _CUTOFF_FAMILIES else None)
        if family is not None:
            return _checked(Metric(family, k, truncate=False), spec)
        raise ValueError(f"unknown metric {spec!r}")
    m = re.fullmatch(r"(.+)_(\d+)", spec)
    if m and m.group(1) in _CUTOFF_FAMILIES:
        return _checked(Metric(m.group(1), int(m.group(2)), truncate=False), spec)
    family = _DISPLAY_TO_PLAIN.get(spec, spec)
    if family in _PLAIN:
        return Metric(family, None, truncate=False)
    raise ValueError(
        f"unknown metric {spec!r}; use e.g. ndcg_cut_10, recip_rank@10, recall_100, map, P_5 "
        "or nDCG@10, MRR@10, R@100, MAP, P@5"
    )


def _checked(metric: Metric, spec: str) -> Metric:
    if metric.cutoff is not None and metric.cutoff < 1:
        raise ValueError(f"metric {spec!r}: cutoff must be at least 1")
    return metric


def _rank_scored(run: Mapping[str, Sequence[tuple[str, float]]], depth: int | None) -> dict[str, dict[str, float]]:
    """The run as pytrec_eval input, with scores replaced by descending rank scores.

    The run is already ordered by (-score, pid); giving each passage the score -rank makes
    trec_eval reproduce exactly that order instead of breaking ties by doc id descending.
    """
    out: dict[str, dict[str, float]] = {}
    for qid, hits in run.items():
        hits = hits if depth is None else hits[:depth]
        if hits:
            ranks: dict[str, float] = {}
            for rank, (pid, _) in enumerate(hits, 1):
                ranks.setdefault(pid, float(-rank))  # a passage listed twice keeps its better rank
            out[qid] = ranks
    return out


def _clean_qrels(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    # pytrec_eval needs plain str -> int; qrels read from TSV may carry floats such as 1.0.
    return {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}


def evaluate_qrels(
    run: Mapping[str, Sequence[tuple[str, float]]],
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_level: int = 1,
    per_query: bool = False,
) -> dict:
    """Mean metrics over the qrels' queries, e.g. {"nDCG@10": .., "MRR@10": .., "R@100": .., "MAP": ..}.

    Also reports "queries" (the number of qrels queries averaged over), "missing" (how many of them
    the run lacks; they score 0) and, when there are any, "ignored" (run queries without qrels: not scored, and
    a warning says so). With `per_query=True` the result has "per_query": {qid: {name: value}}.
    """
    import pytrec_eval  # imported here: 0.2 s, and only evaluation needs it

    parsed = list(dict.fromkeys(parse_metric(m) for m in metrics))
    if not parsed:
        raise ValueError("no metrics requested")
    qrels = _clean_qrels(qrels)
    scores: dict[str, dict[str, float]] = {qid: {m.name: 0.0 for m in parsed} for qid in qrels}

    # One evaluator call per run depth: the full run, and each truncation that MRR@k needs.
    by_depth: dict[int | None, list[Metric]] = {}
    for m in parsed:
        by_depth.setdefault(m.cutoff if m.truncate else None, []).append(m)
    for depth, group in by_depth.items():
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {m.measure for m in group}, relevance_level=relevance_level)
        for qid, values in evaluator.evaluate(_rank_scored(run, depth)).items():
            for m in group:
                scores[qid][m.name] = float(values[m.result_key])

    n = len(qrels)
    result: dict = {m.name: (sum(s[m.name] for s in scores.values()) / n if n else 0.0) for m in parsed}
    result["queries"] = n
    result["missing"] = sum(1 for qid in qrels if not run.get(qid))
    ignored = sum(1 for qid in run if qid not in qrels)  # run queries the qrels do not judge
    if ignored:
        result["ignored"] = ignored
        logger.warning("evaluated %d queries (those the qrels judge); %d of the run's %d queries have no qrels and "
                       "are not counted", n, ignored, len(run))
    if per_query:
        result["per_query"] = scores
    return result


def qrels_from_gold(queries: Queries) -> Qrels:
    """Qrels from QA files' gold passage ids (relevance 1); queries without gold ids are left out."""
    return {qid: {str(pid): 1 for pid in gold} for qid, gold in zip(queries.ids, queries.gold_ids) if gold}


def gold_mrr(
    run: Mapping[str, Sequence[tuple[str, float]]], gold_ids: Queries | Mapping[str, Iterable[str] | None], k: int = 10
) -> float:
    """MRR@k of the gold passages, given as Queries or qid -> gold passage ids.

    Queries without gold ids are left out; those missing from the run count as 0.
    """
    if isinstance(gold_ids, Queries):
        qrels = qrels_from_gold(gold_ids)
    else:
        qrels = {qid: {str(pid): 1 for pid in pids} for qid, pids in gold_ids.items() if pids}
    return evaluate_qrels(run, qrels, (f"recip_rank@{k}",))[f"MRR@{k}"]
