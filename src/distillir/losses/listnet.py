"""ListNet on a teacher's ranking: its order as graded labels, the top-one cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import full_mask


class RankListNetLoss(nn.Module):
    """ListNet (Cao et al., 2007, "Learning to Rank: From Pairwise Approach to Listwise Approach") with labels
    taken from a teacher's order alone, as DGR's ablation of its distillation loss (Li et al., 2024): the
    student's scores come in the teacher's order (best first), the entry at real position i of a list with n real
    entries gets grade n - 1 - i, and

        loss = mean_q  - sum_i softmax(grade)_i * log softmax(s)_i

    So, like RankNet and unlike KL on the teacher's scores, it reads only the ranking, not the teacher's scale.
    Inputs: (B, n) student scores in teacher order and an optional (B, n) bool mask (padding False).
    """

    def forward(self, student_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        mask = full_mask(student_scores, mask)
        position = mask.long().cumsum(dim=-1) - 1
        grade = (mask.sum(dim=-1, keepdim=True) - 1 - position).float()
        target = torch.softmax(grade.masked_fill(~mask, float("-inf")), dim=-1)
        log_p = torch.log_softmax(student_scores.float().masked_fill(~mask, float("-inf")), dim=-1)
        return -(target * log_p.masked_fill(~mask, 0.0)).sum(dim=-1).mean()
