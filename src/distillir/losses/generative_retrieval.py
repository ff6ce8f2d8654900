"""DGR's objective for a generative retriever: identifier generation plus distilled RankNet (or, as the paper's
ablation, KL on the teacher's scores or ListNet on its order)."""

from __future__ import annotations

from torch import Tensor, nn

from distillir.losses.kl_divergence import KLDivergenceLoss
from distillir.losses.listnet import RankListNetLoss
from distillir.losses.ranknet import DistilledRankNetLoss

RANK_LOSSES = ("ranknet", "kl", "listnet")


class DGRLoss(nn.Module):
    """Li et al. (2024), "Distillation Enhanced Generative Retrieval": over each query's list (the positive, then
    negatives in the teacher's order), with s the student's identifier log-probabilities,

        L = NLL(docid(positive) | q) / tokens  +  rank_weight * RankNet(s in teacher order)
            (+ NLL(docid(p) | opening words of p) / tokens for DSI-style indexing examples)

    `rank_loss` swaps the RankNet term for the ablation's: "kl", KL(softmax(t / T) || softmax(s / T)) on the
    teacher's scores t; "listnet", ListNet on the teacher's order (`RankListNetLoss`).

    Inputs: scores (B, n) summed token log-probs in teacher order, positive_tokens (B,) the positive's
    identifier length, mask (B, n), teacher (B, n) its scores (for "kl"); index_scores / index_tokens (M,) for
    indexing examples (or None).
    """

    def __init__(self, rank_weight: float = 1.0, base_margin: float = 1.0, margin_step: float = 0.5,
                 first_weight: float = 3.0, rank_loss: str = "ranknet", temperature: float = 1.0):
        super().__init__()
        if rank_loss not in RANK_LOSSES:
            raise ValueError(f"rank_loss must be one of {', '.join(RANK_LOSSES)}, got {rank_loss!r}")
        self.rank_weight = rank_weight
        self.rank_loss = rank_loss
        self.ranknet = DistilledRankNetLoss(base_margin, margin_step, first_weight)
        self.kl = KLDivergenceLoss(temperature)
        self.listnet = RankListNetLoss()

    def _rank_term(self, scores: Tensor, mask: Tensor | None, teacher: Tensor | None) -> Tensor:
        if self.rank_loss == "ranknet":
            return self.ranknet(scores, mask=mask)
        if self.rank_loss == "listnet":
            return self.listnet(scores, mask)
        if teacher is None:
            raise ValueError("rank_loss 'kl' needs the teacher's scores")
        return self.kl(scores, teacher, mask)

    def forward(self, scores: Tensor | None = None, positive_tokens: Tensor | None = None, mask: Tensor | None = None,
                index_scores: Tensor | None = None, index_tokens: Tensor | None = None,
                teacher: Tensor | None = None):
        total = 0.0
        if scores is not None:
            total = total + (-scores[:, 0] / positive_tokens).mean()
            if self.rank_weight > 0 and scores.shape[1] > 1:
                total = total + self.rank_weight * self._rank_term(scores, mask, teacher)
        if index_scores is not None:
            total = total + (-index_scores / index_tokens).mean()
        return total
