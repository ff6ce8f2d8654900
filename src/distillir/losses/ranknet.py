"""DGR's distilled RankNet: hinge losses over every ordered pair of a teacher-ranked list."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import full_mask


def order_by_teacher(
    student_scores: Tensor,
    teacher_scores: Tensor,
    mask: Tensor | None = None,
    keep_first: bool = True,
) -> tuple[Tensor, Tensor]:
    """Reorder each row of `student_scores` by the teacher's ranking, best first.

    With `keep_first` the first entry (the positive) stays at position 0 and only the rest are sorted,
    DGR's "one positive followed by negatives sorted by the teacher". Ties keep their input order; padded
    entries (mask False) go last. Returns the reordered student scores (gradients flow through) and the
    reordered mask.
    """
    mask = full_mask(student_scores, mask)
    key = teacher_scores.detach().float().masked_fill(~mask, float("-inf"))
    if keep_first:
        key[:, 0] = torch.where(mask[:, 0], torch.full_like(key[:, 0], float("inf")), key[:, 0])
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    return student_scores.gather(-1, order), mask.gather(-1, order)


class DistilledRankNetLoss(nn.Module):
    """The distilled RankNet loss of DGR (Li et al., 2024, "Distillation Enhanced Generative Retrieval";
    liyongqi67/MINDER seal/minder_ltr_listwise_seal.py, the `manual_rankNet` branch). The student's scores
    come in the teacher's order (use `order_by_teacher`, or pass `teacher_scores`); for positions i < j::

        l_ij = w_i * max(0, s_j - s_i + m + (j - i - 1) * delta)
        w_0 = first_weight,  w_i = 1 / (i + 1) for i >= 1
        loss = mean of the non-zero l_ij, pooled over the whole batch

    The margin grows by delta for every position between i and j, so the student must separate passages
    the teacher ranks far apart by more. m and delta are on the student's score scale (300 and 100 on
    MINDER's unnormalised FM-index scores): rescale them to yours. Averaging only the non-zero terms, as
    the official code does, keeps satisfied pairs from diluting the loss; pooling over the batch means a
    query with more violated pairs weighs more. When no pair is violated the official code returns NaN
    (the mean of nothing); here the loss is 0, still attached to the graph, with zero gradient.

    Positions count real entries only (mask True), so padding anywhere in the list is skipped.
    """

    def __init__(self, base_margin: float, margin_step: float, first_weight: float = 3.0, keep_first: bool = True):
        super().__init__()
        self.base_margin = base_margin
        self.margin_step = margin_step
        self.first_weight = first_weight
        self.keep_first = keep_first  # only used when forward() is given teacher scores to sort by

    def forward(
        self, student_scores: Tensor, teacher_scores: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        mask = full_mask(student_scores, mask)
        if teacher_scores is not None:
            student_scores, mask = order_by_teacher(student_scores, teacher_scores, mask, keep_first=self.keep_first)
        scores = student_scores.float()
        position = (mask.long().cumsum(dim=-1) - 1).float()  # rank among real entries
        pos_i, pos_j = position.unsqueeze(-1), position.unsqueeze(-2)
        pairs = mask.unsqueeze(-1) & mask.unsqueeze(-2) & (pos_i < pos_j)
        margin = self.base_margin + (pos_j - pos_i - 1.0) * self.margin_step
        hinge = torch.clamp(scores.unsqueeze(-2) - scores.unsqueeze(-1) + margin, min=0.0)  # [b, i, j]: s_j - s_i
        weight = torch.where(pos_i == 0, torch.full_like(pos_i, self.first_weight), 1.0 / (pos_i + 1.0))
        terms = torch.where(pairs, weight * hinge, torch.zeros_like(hinge))
        active = terms > 0
        if not bool(active.any()):
            return terms.sum() * 0.0
        return terms[active].mean()

    def extra_repr(self) -> str:
        return (
            f"base_margin={self.base_margin}, margin_step={self.margin_step}, "
            f"first_weight={self.first_weight}, keep_first={self.keep_first}"
        )
