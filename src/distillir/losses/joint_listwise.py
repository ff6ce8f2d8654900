"""RocketQAv2's joint listwise objective for a retriever and a re-ranker."""

from __future__ import annotations

from torch import Tensor, nn

from distillir.losses.kl_divergence import KLDivergenceLoss
from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss


class JointListwiseLoss(nn.Module):
    """Ren et al. (2021), "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
    Re-ranking": over each query's list (positive first),

        L = L_sup + L_KL,   L_sup = - log softmax(s_ce)[positive],   L_KL = KL( softmax(s_ce) || softmax(s_de) )

    with no stop-gradient on s_ce ("dynamic": the re-ranker learns from L_sup and L_KL, the retriever from
    L_KL). `ranker_frozen` (the static ablation) trains on L_KL alone; L_sup is still returned for the log.

    Inputs: s_de, s_ce (B, n) retriever and re-ranker scores (s_de already divided by its temperature), an
    optional (B, n) bool mask. Returns {"loss", "sup", "kl"} (the last two detached).
    """

    def __init__(self) -> None:
        super().__init__()
        self.supervised = ListwiseCrossEntropyLoss()
        self.kl = KLDivergenceLoss(detach_teacher=False)

    def forward(self, s_de: Tensor, s_ce: Tensor, mask: Tensor | None = None,
                ranker_frozen: bool = False) -> dict[str, Tensor]:
        supervised = self.supervised(s_ce, mask=mask)
        kl = self.kl(s_de, s_ce, mask)
        loss = kl if ranker_frozen else supervised + kl
        return {"loss": loss, "sup": supervised.detach(), "kl": kl.detach()}
