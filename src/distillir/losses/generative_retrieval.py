"""DGR's objective for a generative retriever: identifier generation plus distilled RankNet."""

from __future__ import annotations

from torch import Tensor, nn

from distillir.losses.ranknet import DistilledRankNetLoss


class DGRLoss(nn.Module):
    """Li et al. (2024), "Distillation Enhanced Generative Retrieval": over each query's list (the positive, then
    negatives in the teacher's order), with s the student's identifier log-probabilities,

        L = NLL(docid(positive) | q) / tokens  +  rank_weight * RankNet(s in teacher order)
            (+ NLL(docid(p) | opening words of p) / tokens for DSI-style indexing examples)

    Inputs: scores (B, n) summed token log-probs in teacher order, positive_tokens (B,) the positive's
    identifier length, mask (B, n); index_scores / index_tokens (M,) for indexing examples (or None).
    """

    def __init__(self, rank_weight: float = 1.0, base_margin: float = 1.0, margin_step: float = 0.5,
                 first_weight: float = 3.0):
        super().__init__()
        self.rank_weight = rank_weight
        self.ranknet = DistilledRankNetLoss(base_margin, margin_step, first_weight)

    def forward(self, scores: Tensor | None = None, positive_tokens: Tensor | None = None, mask: Tensor | None = None,
                index_scores: Tensor | None = None, index_tokens: Tensor | None = None):
        total = 0.0
        if scores is not None:
            total = total + (-scores[:, 0] / positive_tokens).mean()
            if self.rank_weight > 0 and scores.shape[1] > 1:
                total = total + self.rank_weight * self.ranknet(scores, mask=mask)
        if index_scores is not None:
            total = total + (-index_scores / index_tokens).mean()
        return total
