"""Pairwise hinge loss that makes the student order each pair of passages the way the teacher does."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import check_pair, full_mask, mean_over_queries


class MaxMarginDistillLoss(nn.Module):
    """The max-margin ranking objective compared in FiD-KD (Izacard & Grave, 2021, "Distilling Knowledge
    from Reader to Retriever", Sec. 3.2): for every pair of passages of a query, the student's scores must
    differ by at least the margin gamma in the direction the teacher's scores do::

        loss_q = 1/|P_q| * sum_{(i, j) in P_q} max(0, gamma - sign(T_i - T_j) * (S_i - S_j))
        loss   = mean over queries with at least one pair

    P_q holds the unordered pairs i < j of real (unpadded) entries with T_i != T_j: a pair the teacher
    ties says nothing about order and is skipped. The paper writes a plain sum over pairs; dividing by
    |P_q| keeps the loss size independent of the list length (n passages give up to n(n-1)/2 pairs).
    gamma is on the student's score scale; 1.0 is a starting point, not a tuned value.

    Teacher scores get no gradient. Inputs are (B, n) scores and an optional bool mask (True = real entry).
    """

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        check_pair(student_scores, teacher_scores)
        mask = full_mask(student_scores, mask)
        student = student_scores.float()
        teacher = teacher_scores.detach().float()
        n = student.shape[-1]
        upper = torch.ones(n, n, dtype=torch.bool, device=student.device).triu(diagonal=1)
        # (B, n, n) differences x_i - x_j for every ordered pair.
        student_diff = student.unsqueeze(-1) - student.unsqueeze(-2)
        teacher_sign = torch.sign(teacher.unsqueeze(-1) - teacher.unsqueeze(-2))
        pairs = upper & mask.unsqueeze(-1) & mask.unsqueeze(-2) & (teacher_sign != 0)
        hinge = torch.clamp(self.margin - teacher_sign * student_diff, min=0.0)
        counts = pairs.sum(dim=(-2, -1))
        per_query = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum(dim=(-2, -1)) / counts.clamp(min=1)
        return mean_over_queries(per_query, counts)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
