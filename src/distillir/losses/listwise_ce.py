"""Cross-entropy over a candidate list with one or several gold passages."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distillir.losses.kl_divergence import full_mask, masked_log_softmax, mean_over_queries


class ListwiseCrossEntropyLoss(nn.Module):
    """Listwise softmax cross-entropy against gold labels, as used to train re-rankers and retrievers in
    RocketQAv2 (Ren et al., 2021; L_sup, positive first), Re2G (Glass et al., 2022; re-ranker training
    with several gold passages) and AR2 (Zhang et al., 2022; ranker step)::

        loss_q = - sum_i c_i * log softmax(r)_i / sum_i c_i
        loss   = mean over queries with sum_i c_i > 0

    c is a 0/1 label vector or non-negative weights; normalising by sum c makes a query with three gold
    passages weigh as much as a query with one. A query with no gold passage (or only padding) teaches
    nothing and is left out of the mean. With `labels=None` the positive is the first entry of each list.

    Inputs: scores (B, n); labels (B, n) weights/bools, or (B,) integer positive indices, or None; an
    optional bool mask (True = real entry). Labels on padded entries are ignored.
    """

    def forward(self, scores: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        mask = full_mask(scores, mask)
        weights = self._label_weights(scores, labels) * mask
        log_p = masked_log_softmax(scores.float(), mask)
        weighted = torch.where(weights > 0, weights * log_p, torch.zeros_like(log_p))
        totals = weights.sum(dim=-1)
        per_query = -weighted.sum(dim=-1) / totals.clamp(min=torch.finfo(totals.dtype).tiny)
        return mean_over_queries(per_query, totals)

    @staticmethod
    def _label_weights(scores: Tensor, labels: Tensor | None) -> Tensor:
        batch, n = scores.shape
        if labels is None:
            labels = torch.zeros(batch, dtype=torch.long, device=scores.device)
        if labels.dim() == 1:
            if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape[0] != batch:
                raise ValueError(
                    f"1-D labels must be {batch} integer positive indices, got {labels.dtype} {tuple(labels.shape)}"
                )
            return torch.nn.functional.one_hot(labels.to(scores.device), n).float()
        if labels.shape != scores.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} does not match scores shape {tuple(scores.shape)}")
        weights = labels.to(device=scores.device, dtype=torch.float32)
        if bool((weights < 0).any()):
            raise ValueError("label weights must be non-negative")
        return weights
