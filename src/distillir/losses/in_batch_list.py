"""In-batch negatives for list distillation: the student must keep its mass on its own candidate list.

Distilling only over each question's retrieved list (FiD-KD, Izacard & Grave 2021) never shows the student
a passage outside that list, so nothing keeps it ranking the list (all on the question's topic) above the
rest of the corpus; with few candidates (n = 10 here, 100 in the paper) it can learn orderings that hold
inside the lists and fail against the corpus. The fix used by dense-retrieval training at large (DPR's
in-batch negatives, Karpukhin et al. 2020) applies: the other questions' candidates in the batch are
negatives, i.e. teacher probability 0. For KL at temperature tau this splits exactly:

    KL(p_T || softmax over own list + others' passages) = KL(p_T || softmax over own list)
                                                          - log P_S(own list)
    P_S(own list) = sum_{i in own} exp(S_i / tau) / sum_{j in batch} exp(S_j / tau)

so this module is the second term, added to any list loss (FiD-KD: `retriever.in_batch_negatives`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InBatchListLoss(nn.Module):
    """-log P_S(own list) over every passage in the batch, averaged over questions.

    Inputs: `cross_scores` (B, C, n): question b's scores for the passages of list c (c = offset + b: its own
    list; C = B in one process, the global batch's lists with cross-device negatives); `mask` (C, n): True = a
    real passage of list c; `own_mask` (B, n, default the own lists' `mask`): the entries of its own list a
    question should keep its mass on (not those at teacher probability 0, e.g. random negatives, which count
    with the rest of the batch). Questions whose own list is empty are skipped.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, cross_scores: Tensor, mask: Tensor, own_mask: Tensor | None = None, offset: int = 0) -> Tensor:
        b, c, n = cross_scores.shape
        if c < offset + b or mask.shape != (c, n):
            raise ValueError(f"cross scores {tuple(cross_scores.shape)} must be (B, C >= offset + B, n) with a "
                             f"(C, n) mask, got mask {tuple(mask.shape)} and offset {offset}")
        scores = cross_scores.float() / self.temperature
        low = torch.finfo(scores.dtype).min
        everything = scores.masked_fill(~mask.unsqueeze(0), low).reshape(b, c * n)
        rows = torch.arange(b, device=scores.device)
        mine = mask[offset : offset + b]
        own_mask = mine if own_mask is None else own_mask & mine
        own = scores[rows, rows + offset].masked_fill(~own_mask, low)  # (B, n)
        per_query = torch.logsumexp(everything, dim=-1) - torch.logsumexp(own, dim=-1)
        valid = own_mask.any(dim=-1)
        if not bool(valid.any()):
            return per_query.sum() * 0.0
        return per_query[valid].mean()


__all__ = ["InBatchListLoss"]
