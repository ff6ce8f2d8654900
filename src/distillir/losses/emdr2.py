"""EMDR²: the retriever maximises the reader's marginal likelihood of the answer over its own retrieval."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import check_pair, full_mask, masked_log_softmax, mean_over_queries


class EMDR2Loss(nn.Module):
    """End-to-end training of multi-document reader and retriever, the retriever's side (Sachan et al., 2021,
    "End-to-End Training of Multi-Document Reader and Retriever for Open-Domain Question Answering"; Atlas,
    Izacard et al., 2022, section 2.2, where the reader's term is fixed while the retriever trains)::

        p_S = softmax(S / tau)                       the student's retrieval over the list
        loss = - mean_q log sum_i exp(T_i) * p_S,i   T_i = log p(answer | q, p_i), held fixed

    Unlike KL, the target is not a distribution: the gradient moves p_S toward the posterior
    p_S,i exp(T_i) / sum_j p_S,j exp(T_j), so the student's own retrieval sets where it starts. T must be a
    log-likelihood (a causal LM's or a reader's pdist with `reduce: sum`): z-scored or rescaled scores change
    the objective. A teacher score of -inf (a random negative) adds nothing to the sum but still takes
    probability from p_S, so the loss pushes it down.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student_scores: Tensor, teacher_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        check_pair(student_scores, teacher_scores)
        mask = full_mask(student_scores, mask)
        student_log_p = masked_log_softmax(student_scores.float() / self.temperature, mask)
        joint = teacher_scores.detach().float() + student_log_p
        known = mask & torch.isfinite(teacher_scores)
        joint = joint.masked_fill(~known, float("-inf"))
        has_any = known.any(dim=-1)
        # A list with no known teacher score has nothing to marginalise: it counts as 0 (and is left out of the
        # mean below) rather than +inf.
        marginal = torch.where(has_any.unsqueeze(-1), joint, torch.zeros_like(joint)).logsumexp(dim=-1)
        return mean_over_queries(-marginal, known.sum(dim=-1))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


__all__ = ["EMDR2Loss"]
