"""The round guard of every iterating recipe (fid-kd's rounds, AR2's iterations): a label-free check of whether
a round made its retriever worse than the one it started from, and the decision to keep the earlier one.

Worse means collapsed (one passage first for most questions: `evaluation.top1_concentration`), or a KL to the
teacher on lists held out of training that rose over the round. KL, the objective itself, and not top-1
agreement: with a 0/1 teacher several candidates tie for its top, and on a few hundred lists top-1 agreement
moves by chance (measured: 0.73 -> 0.69 on 100 held-out lists while KL, Spearman and dev recall all improved).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from distillir.recipes.common.ranking import CandidateListCollator
from distillir.recipes.common.retrieval import retriever_list_scores
from distillir.utils.log import get_logger

logger = get_logger(__name__)

ON_WORSE = ("keep", "stop", "continue")


def round_verdict(retriever: dict[str, Any] | None, index: dict[str, Any] | None) -> dict[str, Any]:
    """Label-free: is a round's retriever worse than the one it started from? `retriever`: its record, with
    agreement_before / agreement_after ({"kl", ...}) and agreement_held_out (on training lists agreement says
    nothing about this); `index`: with the collapse check's "diagnostics"."""
    reasons = []
    diagnostics = (index or {}).get("diagnostics") or {}
    if diagnostics.get("collapsed"):
        reasons.append(f"collapsed: passage {diagnostics.get('top1_max_pid')} first for "
                       f"{100 * diagnostics.get('top1_max_share', 0):.0f}% of questions")
    before, after = (retriever or {}).get("agreement_before"), (retriever or {}).get("agreement_after")
    if (retriever or {}).get("agreement_held_out") and before and after and after["kl"] > before["kl"]:
        reasons.append(f"KL to the teacher on held-out lists rose from {before['kl']:.4f} to {after['kl']:.4f}")
    return {"worse": bool(reasons), "reasons": reasons}


def guard_round(k: int, source: int, retriever: dict | None, index: dict | None, on_worse: str,
                unit: str = "round") -> tuple[int, dict]:
    """(the round whose retriever is in use after round k, the guard's record): round k started from round
    `source`'s retriever (0: the start one); when `round_verdict` finds it worse and `on_worse` is "keep" (or
    "stop"), that earlier retriever stays in use, and the log says so."""
    verdict = round_verdict(retriever, index)
    keep = verdict["worse"] and on_worse in ("keep", "stop")
    if verdict["worse"]:
        logger.warning("%s %d made the retriever worse than %s (%s): %s", unit, k,
                       f"{unit} {source}'s" if source else "the start retriever", "; ".join(verdict["reasons"]),
                       f"keeping that one (on_worse: {on_worse})" if keep else "using it anyway (on_worse: continue)")
    return (source if keep else k), {**verdict, "started_from_round": source, "kept": "previous" if keep else "new"}


def ranker_agreement(retriever, ranker, examples: Sequence[Any], corpus, group_size: int, *, temperature: float,
                     ranker_temperature: float = 1.0, seed: int = 0, batch_size: int = 16) -> dict[str, float]:
    """How closely the retriever's group scores follow a cross-encoder teacher's (no gradient, eval mode) on
    `examples` (AR2's lists: positives + mined negatives): mean KL(softmax(R / ranker_temperature) ||
    softmax(S)) and the share of groups whose first passage is the same. The groups are drawn with a seeded
    `random`, whose state is restored, so the same groups are measured before and after a round."""
    if not examples:
        return {"lists": 0, "kl": float("nan"), "top1": float("nan")}
    collate = CandidateListCollator(corpus, group_size, retriever=retriever, ranker=ranker)
    state = random.getstate()
    random.seed(seed)
    modes = retriever.training, ranker.training
    retriever.eval()
    ranker.eval()
    kl_sum = top1 = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = collate(examples[start:start + batch_size])
                mask = batch["mask"]
                s = retriever_list_scores(retriever, batch, temperature).float().cpu()
                r = ranker.list_scores(batch["pairs"], mask.shape[1]).float().cpu() / ranker_temperature
                s, r = s.masked_fill(~mask, float("-inf")), r.masked_fill(~mask, float("-inf"))
                log_p_r, log_p_s = torch.log_softmax(r, -1), torch.log_softmax(s, -1)
                terms = torch.where(mask, log_p_r.exp() * (log_p_r - log_p_s), torch.zeros_like(s))
                kl_sum += float(terms.sum())
                top1 += float((s.argmax(-1) == r.argmax(-1)).sum())
    finally:
        random.setstate(state)
        retriever.train(modes[0])
        ranker.train(modes[1])
    return {"lists": len(examples), "kl": kl_sum / len(examples), "top1": top1 / len(examples)}


__all__ = ["ON_WORSE", "guard_round", "ranker_agreement", "round_verdict"]
