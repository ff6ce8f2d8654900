"""Re-ranker denoising and RocketQAv2's hybrid data augmentation: candidate lists users can read.

A retriever's top-N holds hard negatives, but also relevant passages nobody labelled (false negatives).
RocketQA (Qu et al., 2021) and RocketQAv2 (Ren et al., 2021, "RocketQAv2: A Joint Training Method for
Dense Passage Retrieval and Passage Re-ranking", Sec. 4.3) let a trained cross-encoder relabel that top-N:

    score >= pos_threshold            -> an extra positive (a relevant passage the labels missed)
    score <= neg_threshold            -> a hard negative (the re-ranker is confident it is not relevant)
    neg_threshold < score < pos_thr.  -> dropped: uncertain, used in neither role

Scores are the re-ranker's one logit per pair, and `scale` says what the thresholds are compared with:

- "sigmoid" (the default): sigmoid(logit), a probability in [0, 1], as for RocketQA's cross-encoder trained
  pointwise (binary cross-entropy), whose thresholds are around 0.9 and 0.1;
- "relative": sigmoid(logit - logit of the query's labelled positive), the re-ranker's probability of
  preferring the passage over the positive (the pairwise form AR2's reward uses). A re-ranker trained with a
  *listwise* loss, as `distillir train cross-encoder` and the recipes' warm-ups train it, learns only
  differences between a query's scores: its logits carry an arbitrary offset (the head's bias gets no
  gradient) and their plain sigmoid means nothing, while this scale is unaffected by the offset. Each
  query's positives are scored once more for it (the best one is the reference);
- "logit": the raw logit.

`DenoiseStats.quantiles` (also in the recipes' results) shows the scaled scores, to set thresholds from.

Hybrid augmentation gives every training query two lists: an *undenoised* one (negatives sampled from the
retriever's top-N, only known positives and answer-containing passages removed) and a *denoised* one (the
relabelled top-N). Both are plain `TrainingExample` lists, written with `write_training_lists` to JSONL.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from distillir.data.answers import AnswerMatcher
from distillir.data.negatives import TrainingExample, build_examples, mine_negatives
from distillir.data.run import Run
from distillir.data.types import Corpus, Queries
from distillir.errors import ConfigError
from distillir.rankers.base import Ranker
from distillir.utils.log import get_logger

logger = get_logger(__name__)

ScoreScale = Literal["sigmoid", "relative", "logit"]
SCALES = ("sigmoid", "relative", "logit")


@dataclass
class Relabelled:
    """One query's top-N as the re-ranker relabelled it (passage ids in retriever rank order)."""

    positives: list[str] = field(default_factory=list)  # extra positives: score >= pos_threshold
    negatives: list[str] = field(default_factory=list)  # hard negatives: score <= neg_threshold
    dropped: list[str] = field(default_factory=list)  # uncertain, or answer-containing with a low score


@dataclass
class DenoiseStats:
    """What denoising did, for logs and results: counts and the distribution of the thresholded scores."""

    queries: int = 0
    scored: int = 0  # candidate passages scored (known positives excluded)
    extra_positives: int = 0
    negatives: int = 0
    dropped: int = 0
    answer_dropped: int = 0  # low-scored passages that contain an answer string: not trusted as negatives
    lists_without_negatives: int = 0  # left out of the denoised lists: nothing to contrast the positive with
    quantiles: dict[str, float] = field(default_factory=dict)  # of the (scaled) scores: p10, p50, p90, ...

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DenoisedLists:
    """The result of `denoise_lists`: training examples, the per-query relabelling and the re-ranker run."""

    examples: list[TrainingExample]
    relabelled: dict[str, Relabelled]
    scores: Run  # the re-ranker's scores over each query's top-N (raw logits), to inspect or reuse
    stats: DenoiseStats


def check_thresholds(pos_threshold: float, neg_threshold: float, scale: str) -> None:
    """Refuse thresholds that cannot mean what they say (ConfigError naming the setting)."""
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if neg_threshold > pos_threshold:
        raise ConfigError(
            f"neg_threshold ({neg_threshold}) must not exceed pos_threshold ({pos_threshold}): a passage would be "
            "both a positive and a negative"
        )
    if scale != "logit":
        for name, value in (("pos_threshold", pos_threshold), ("neg_threshold", neg_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a probability with scale={scale!r}: it must be in [0, 1], got {value}")


def scaled(score: float, scale: ScoreScale, reference: float = 0.0) -> float:
    """The value the thresholds are compared with: sigmoid(logit), sigmoid(logit - reference) ("relative", with
    the positive's logit as `reference`), or the logit itself."""
    if scale == "logit":
        return float(score)
    if scale == "relative":
        score = score - reference
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    e = math.exp(score)  # the stable form for large negative logits
    return e / (1.0 + e)


def relabel(
    scores: Mapping[str, Iterable[tuple[str, float]]],
    known_positives: Mapping[str, Iterable[str]],
    *,
    pos_threshold: float = 0.9,
    neg_threshold: float = 0.1,
    scale: ScoreScale = "sigmoid",
    reference: Mapping[str, float] | None = None,
) -> dict[str, Relabelled]:
    """Sort each query's scored candidates into extra positives, hard negatives and dropped passages.

    `scores`: query id -> [(passage id, re-ranker logit), ...] in the order the passages should keep (the
    retriever's rank order); known positives are skipped (they stay positives whatever their score).
    `reference`: query id -> the logit of its labelled positive, needed by `scale="relative"`.
    A score equal to a threshold counts as on that threshold's side.
    """
    check_thresholds(pos_threshold, neg_threshold, scale)
    if scale == "relative" and reference is None:
        raise ConfigError("scale='relative' compares with each query's positive: pass its logit as `reference`")
    out: dict[str, Relabelled] = {}
    for qid, hits in scores.items():
        known = set(known_positives.get(qid, ()))
        ref = reference.get(qid) if scale == "relative" else 0.0
        result = Relabelled()
        for pid, score in hits:
            if pid in known:
                continue
            if ref is None:  # no scored positive to compare with: nothing can be decided
                result.dropped.append(pid)
                continue
            value = scaled(score, scale, ref)
            if value >= pos_threshold:
                result.positives.append(pid)
            elif value <= neg_threshold:
                result.negatives.append(pid)
            else:
                result.dropped.append(pid)
        out[qid] = result
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    picks = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "max": 1.0}
    return {name: round(ordered[min(int(q * (len(ordered) - 1) + 0.5), len(ordered) - 1)], 4)
            for name, q in picks.items()}


def denoise_lists(
    ranker: Ranker,
    run: Mapping[str, list[tuple[str, float]]],
    queries: Queries,
    corpus: Corpus,
    positives: Mapping[str, Iterable[str]],
    *,
    depth: int = 30,
    pos_threshold: float = 0.9,
    neg_threshold: float = 0.1,
    scale: ScoreScale = "sigmoid",
    max_negatives: int | None = None,
    extra_positives: bool = True,
    exclude_answers: bool = True,
    batch_size: int = 64,
    show_progress: bool = False,
) -> DenoisedLists:
    """RocketQA's denoised lists: re-score each query's top-`depth` with `ranker` and relabel it (`relabel`).

    Each training example's positives are the known positives plus (with `extra_positives`) the passages
    scored at or above `pos_threshold`; its negatives are the passages at or below `neg_threshold`, in
    retriever rank order (hardest first), at most `max_negatives` of them. With `exclude_answers`, a
    passage that contains one of the query's answers is never a negative (it moves to `dropped`), the same
    rule `mine_negatives` applies. Queries left with no negative are left out of the examples (counted in
    `stats.lists_without_negatives`). Only queries of `queries` that have a known positive are used.
    """
    check_thresholds(pos_threshold, neg_threshold, scale)
    if depth < 1:
        raise ConfigError(f"depth must be at least 1, got {depth}")
    if max_negatives is not None and max_negatives < 1:
        raise ConfigError(f"max_negatives must be at least 1 (or None for all), got {max_negatives}")
    text_of = dict(zip(queries.ids, queries.texts))
    wanted = [qid for qid in queries.ids if qid in run and set(positives.get(qid, ()))]
    head = Run({qid: run[qid][:depth] for qid in wanted}, name="candidates")
    scored = ranker.rerank(head, text_of, corpus, top_k=depth, batch_size=batch_size, show_progress=show_progress,
                           name="denoise")
    score_of = {qid: dict(hits) for qid, hits in scored.items()}
    # Keep the retriever's order: the best-ranked negatives first, as hard negatives are usually taken.
    in_rank_order = {qid: [(pid, score_of[qid][pid]) for pid, _ in head[qid]] for qid in wanted}
    reference = None
    if scale == "relative":
        reference = positive_scores(ranker, wanted, text_of, corpus, positives, batch_size=batch_size)
    relabelled = relabel(in_rank_order, positives, pos_threshold=pos_threshold, neg_threshold=neg_threshold,
                         scale=scale, reference=reference)

    stats = DenoiseStats(queries=len(wanted))
    answers_of = dict(zip(queries.ids, queries.answers))
    matcher = None
    if exclude_answers and queries.has_answers:
        matcher = AnswerMatcher(corpus)
    values = []
    for qid in wanted:
        known = set(positives.get(qid, ()))
        ref = reference.get(qid) if reference is not None else 0.0
        if ref is not None:
            values += [scaled(s, scale, ref) for pid, s in in_rank_order[qid] if pid not in known]
        result = relabelled[qid]
        answers = answers_of.get(qid)
        if matcher is not None and answers and result.negatives:
            contains = matcher.hits(answers, result.negatives)
            stats.answer_dropped += sum(contains)
            result.dropped += [pid for pid, hit in zip(result.negatives, contains) if hit]
            result.negatives = [pid for pid, hit in zip(result.negatives, contains) if not hit]
        stats.extra_positives += len(result.positives)
        stats.negatives += len(result.negatives)
        stats.dropped += len(result.dropped)
    stats.scored = len(values)
    stats.quantiles = _quantiles(values)

    examples = []
    for qid in wanted:
        result = relabelled[qid]
        if not result.negatives:
            stats.lists_without_negatives += 1
            continue
        pos = sorted(set(positives[qid]) | (set(result.positives) if extra_positives else set()))
        negatives = result.negatives if max_negatives is None else result.negatives[:max_negatives]
        examples.append(TrainingExample(qid, text_of[qid], pos, list(negatives)))
    logger.info(
        "denoised the top-%d of %d queries (%s thresholds %.3g / %.3g): %d extra positives, %d negatives, "
        "%d dropped (%d for containing an answer); %d queries kept no negative; scores %s",
        depth, stats.queries, scale, pos_threshold, neg_threshold, stats.extra_positives, stats.negatives,
        stats.dropped, stats.answer_dropped, stats.lists_without_negatives, stats.quantiles,
    )
    return DenoisedLists(examples, relabelled, scored, stats)


def positive_scores(ranker: Ranker, qids: list[str], text_of: Mapping[str, str], corpus: Corpus,
                    positives: Mapping[str, Iterable[str]], batch_size: int = 64) -> dict[str, float]:
    """Each query's best re-ranker logit over its labelled positives: the reference of `scale="relative"`."""
    pairs = [(qid, pid) for qid in qids for pid in sorted(positives[qid]) if pid in corpus]
    rows = [corpus.index_of[pid] for _, pid in pairs]
    logits = ranker.score_pairs([text_of[qid] for qid, _ in pairs],
                                [(corpus.titles[r], corpus.texts[r]) for r in rows], batch_size=batch_size)
    best: dict[str, float] = {}
    for (qid, _), logit in zip(pairs, logits):
        best[qid] = max(best.get(qid, logit), logit)
    return best


def undenoised_lists(
    run: Mapping[str, list[tuple[str, float]]],
    queries: Queries,
    corpus: Corpus,
    positives: Mapping[str, Iterable[str]],
    *,
    n: int = 31,
    depth: int = 100,
    exclude_answers: bool = True,
    seed: int = 0,
) -> list[TrainingExample]:
    """RocketQAv2's undenoised lists: `n` negatives per query sampled at random from the retriever's
    top-`depth`, only known positives (and, with `exclude_answers`, answer-containing passages) removed."""
    negatives = mine_negatives(run, queries, corpus, positives, n=n, rank_range=(0, depth),
                               exclude_answers=exclude_answers, sample=True, seed=seed)
    return [ex for ex in build_examples(queries, positives, negatives) if ex.negatives]


__all__ = [
    "DenoiseStats",
    "DenoisedLists",
    "Relabelled",
    "ScoreScale",
    "check_thresholds",
    "denoise_lists",
    "positive_scores",
    "relabel",
    "scaled",
    "undenoised_lists",
]
