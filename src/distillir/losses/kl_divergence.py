"""KL divergence from a teacher's distribution over a candidate list to the student's."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_pair(student: Tensor, teacher: Tensor, names: tuple[str, str] = ("student", "teacher")) -> None:
    """ValueError unless the two score tensors have the same (B, n) shape."""
    if student.shape != teacher.shape:
        raise ValueError(f"{names[0]} scores {tuple(student.shape)} and {names[1]} scores {tuple(teacher.shape)} "
                         "must have the same (B, n) shape")


def full_mask(scores: Tensor, mask: Tensor | None) -> Tensor:
    """`mask` as a bool tensor shaped like `scores` (True = a real list entry); all True when None."""
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}")
    return mask.to(device=scores.device, dtype=torch.bool)


def masked_log_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """log softmax over the last dimension, counting only entries where `mask` is True.

    Padded entries are filled with the dtype's lowest finite value rather than -inf: their probability is
    exactly 0, while `0 * log p` stays 0 instead of NaN (and so does its gradient).
    """
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.log_softmax(filled, dim=-1)


def mean_over_queries(per_query: Tensor, counts: Tensor) -> Tensor:
    """Mean of `per_query` over the queries that have something to learn (`counts > 0`).

    A batch where no query counts gives a zero still attached to the graph, so `backward()` works.
    """
    valid = counts > 0
    if not bool(valid.any()):
        return per_query.sum() * 0.0
    return per_query[valid].mean()


class KLDivergenceLoss(nn.Module):
    """KL divergence between the teacher's and the student's softmax over each query's candidate list.

    Used by FiD-KD (Izacard & Grave, 2021, "Distilling Knowledge from Reader to Retriever"), Atlas
    (Izacard et al., 2022; tau = 0.01), RocketQAv2 (Ren et al., 2021; dynamic, no stop-gradient on the
    teacher) and Re2G (Glass et al., 2022; alpha * T^2 * KL with T = 10)::

        p_T = softmax(T / tau),  p_S = softmax(S / tau)
        loss = mean_q  sum_i p_T,i * (log p_T,i - log p_S,i)      [ * tau^2 if scale_by_t2 ]

    Args:
        temperature: tau, dividing both score lists before the softmax.
        scale_by_t2: multiply by tau^2 (Hinton et al.'s correction that keeps gradient sizes comparable
            across temperatures; Re2G's alpha T^2 KL, with alpha left to the caller).
        detach_teacher: stop gradients into the teacher scores. False gives RocketQAv2's dynamic listwise
            distillation, where the re-ranker also learns from the KL.

    Inputs are (B, n) scores and an optional (B, n) bool mask (True = a real passage, False = padding).
    The reduction is the mean over queries (KLDivLoss's "batchmean"). FiD's official code uses
    `nn.KLDivLoss()` with its default "mean", which also divides by the list length n; with Adam that only
    rescales the learning rate.
    """

    def __init__(self, temperature: float = 1.0, scale_by_t2: bool = False, detach_teacher: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.scale_by_t2 = scale_by_t2
        self.detach_teacher = detach_teacher

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        check_pair(student_scores, teacher_scores)
        if self.detach_teacher:
            teacher_scores = teacher_scores.detach()
        mask = full_mask(student_scores, mask)
        # float32 at least: scores / 0.01 overflows half precision.
        student_log_p = masked_log_softmax(student_scores.float() / self.temperature, mask)
        teacher_log_p = masked_log_softmax(teacher_scores.float() / self.temperature, mask)
        pointwise = teacher_log_p.exp() * (teacher_log_p - student_log_p)
        # A teacher score of -inf is probability 0 (e.g. random negatives): it adds nothing, not 0 * inf, while
        # the student's softmax still spreads over it.
        known = mask & torch.isfinite(teacher_log_p)
        per_query = torch.where(known, pointwise, torch.zeros_like(pointwise)).sum(dim=-1)
        loss = mean_over_queries(per_query, mask.sum(dim=-1))
        if self.scale_by_t2:
            loss = loss * self.temperature**2
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, scale_by_t2={self.scale_by_t2}, detach_teacher={self.detach_teacher}"
