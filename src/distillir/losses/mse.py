"""Squared error between the student's and the teacher's raw scores."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import check_pair, full_mask, mean_over_queries


class MSEDistillLoss(nn.Module):
    """Regress the student's scores onto the teacher's, one of the objectives compared in FiD-KD
    (Izacard & Grave, 2021, "Distilling Knowledge from Reader to Retriever", Sec. 3.2)::

        loss = mean_q  sum_i (S_i - T_i)^2

    The squared errors are summed over each list, as in the paper's formula, and averaged over queries,
    so the loss grows with the list length n; divide by n (or scale the learning rate) to compare runs
    with lists of different lengths. `torch.nn.MSELoss()` would instead average over all B x n entries.
    Unlike the KL loss, MSE depends on the scale and offset of the teacher's scores, which the student
    must match exactly (the paper reports it below KL for that reason).

    Teacher scores get no gradient. Inputs are (B, n) scores and an optional bool mask (True = real entry).
    """

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        check_pair(student_scores, teacher_scores)
        mask = full_mask(student_scores, mask)
        squared = (student_scores.float() - teacher_scores.detach().float()) ** 2
        per_query = torch.where(mask, squared, torch.zeros_like(squared)).sum(dim=-1)
        return mean_over_queries(per_query, mask.sum(dim=-1))
