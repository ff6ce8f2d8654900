"""Re2G's end-to-end objective: the generator's marginal likelihood plus online distillation into the retriever."""

from __future__ import annotations

from torch import Tensor, nn

from distillir.losses.kl_divergence import KLDivergenceLoss


class Re2GLoss(nn.Module):
    """Glass et al. (2022), "Re2G: Retrieve, Rerank, Generate": the generator reads each of the re-ranker's top
    passages alone and its answer likelihood is marginalised with weights softmax(r) over them (RAG-token or
    RAG-sequence, `distillir.readers.rag`), so its loss trains the re-ranker too; the query encoder gets no
    gradient from it and learns by online distillation from the re-ranker over all candidates:

        L = - mean_q log p(answer_q) / |answer_q|  +  alpha * T^2 * KL( softmax(r / T) || softmax(s / T) )

    (alpha 0.9, T 10 in the paper; `kd_alpha=None` leaves the distillation term out, a frozen query encoder).

    Inputs: log_likelihood (B,) marginal log p(answer), answer_tokens (B,) answer lengths; and for the
    distillation term student (B, C) query-encoder scores, ranker (B, C) re-ranker scores, mask (B, C).
    """

    def __init__(self, kd_alpha: float | None = 0.9, kd_temperature: float = 10.0):
        super().__init__()
        self.kd_alpha = kd_alpha
        self.kd = KLDivergenceLoss(kd_temperature, scale_by_t2=True) if kd_alpha is not None else None

    def forward(self, log_likelihood: Tensor, answer_tokens: Tensor, student: Tensor | None = None,
                ranker: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        loss = -(log_likelihood / answer_tokens.clamp(min=1)).mean()
        if self.kd is not None:
            loss = loss + self.kd_alpha * self.kd(student, ranker, mask)
        return loss
