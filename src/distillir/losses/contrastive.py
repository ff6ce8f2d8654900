"""Contrastive loss with in-batch and hard negatives: the supervised DPR objective."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from distillir.utils.dist import distributed_world, gather_with_grad


def dot_product(q: Tensor, p: Tensor) -> Tensor:
    return q @ p.T


class ContrastiveLoss(nn.Module):
    """DPR's loss (Karpukhin et al., 2020, "Dense Passage Retrieval for Open-Domain Question Answering").

    Query i is scored against every passage of the batch, its own positive p_i, the other queries'
    positives (in-batch negatives) and all hard negatives::

        scores = sim(q, [p_1 .. p_B ; n_1 .. n_M]) / temperature      (B x (B + M))
        loss   = mean_i  -log softmax(scores_i)[i]

    Args:
        similarity: `sim(q, p) -> (B, P)` scores; default the dot product. Pass `encoder.similarity` to use
            the encoder's own (possibly scaled) score.
        temperature: divides the scores (1 for DPR's raw dot product; ~0.05 for cosine similarity).

    `forward(q, positives, negatives=None, mask=None)`: q and positives are (B, d), negatives (M, d) from
    any of the queries. `mask` (B, B + M) bool, True where a passage must not count as a negative for that
    query (e.g. another query's positive that is also relevant to this one: a false in-batch negative);
    a query's own positive is never masked.

    `cross_device=True` (under torchrun, several processes): each query is also scored against every other
    process's passages (gathered with gradients), so the negatives are the global batch's, as in one process
    with the global batch; `mask` then covers this process's passages only (the others' are never masked).
    """

    def __init__(self, similarity: Callable[[Tensor, Tensor], Tensor] | None = None, temperature: float = 1.0,
                 cross_device: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.similarity = similarity or dot_product
        self.temperature = temperature
        self.cross_device = cross_device

    def forward(self, q: Tensor, positives: Tensor, negatives: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if q.shape[0] != positives.shape[0]:
            raise ValueError(f"need one positive per query: {q.shape[0]} queries, {positives.shape[0]} positives")
        passages = positives if negatives is None or negatives.shape[0] == 0 else torch.cat([positives, negatives])
        if mask is not None and mask.shape != (q.shape[0], passages.shape[0]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores shape "
                             f"{(q.shape[0], passages.shape[0])}")
        offset, local = 0, passages.shape[0]
        if self.cross_device and distributed_world() > 1:
            passages, offset = gather_with_grad(passages)
        # float32 at least: a low temperature overflows half precision.
        scores = self.similarity(q, passages).float() / self.temperature
        rows = torch.arange(q.shape[0], device=scores.device)
        targets = rows + offset
        if mask is not None:
            full = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            full[:, offset : offset + local] = mask.to(device=scores.device, dtype=torch.bool)
            full[rows, targets] = False
            scores = scores.masked_fill(full, torch.finfo(scores.dtype).min)
        return nn.functional.cross_entropy(scores, targets)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, cross_device={self.cross_device}"
