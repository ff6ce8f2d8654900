"""AR2's retriever objective: cheat the ranker (adversarial term) while staying close to it (regulariser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distillir.losses.kl_divergence import check_pair, full_mask, masked_log_softmax, mean_over_queries


class AdversarialRetrieverLoss(nn.Module):
    """The retriever step of AR2 (Zhang et al., 2022, "Adversarial Retriever-Ranker for Dense Text
    Retrieval", Sec. 3; microsoft/AR2 AR2/wiki/co_training_wiki_train.py) over a group of passages with
    the positive d+ at index 0 and the retrieved negatives after it::

        p_theta  = softmax(S)                      the retriever's distribution over the group
        reward_d = log sigmoid(T(d+) - T(d))       the ranker's log-probability of preferring d+ over d
        L_adv    = sum_d reward_d * log p_theta(d)
        p_phi    = softmax(T / teacher_temperature)
        L_R      = - sum_d p_phi(d) * log p_theta(d)
        loss     = mean_q  lambda * L_adv + (1 - lambda) * L_R

    Sign: reward_d < 0, so minimising L_adv raises log p_theta(d) in proportion to |reward_d|, which is
    largest for the passages the ranker finds hardest to tell from d+: the retriever learns to retrieve
    negatives that fool the ranker (a REINFORCE estimate of the minimax objective that treats every
    passage of the group as a sample). L_R is the distillation regulariser pulling p_theta towards the
    ranker's distribution; with lambda = 0 this is KL(p_phi || p_theta) plus a constant.

    Which passages the sums run over, as in the official code: both sums, and the softmaxes, cover the
    whole group, the positive included; the positive's reward is log sigmoid(0) = log 1/2.
    `adversarial_over_negatives_only=True` drops d+ from L_adv (the paper's notation, where the retriever
    samples negatives), leaving L_R over the whole group.

    The ranker scores T get no gradient (the ranker is trained in its own step). Differences from the
    official code: it sums L_adv over the batch while averaging L_R over queries (so its effective
    lambda grows with the batch size); here both are averaged over queries. It also takes log(p + 1e-7)
    where this uses the exact log-softmax and log-sigmoid.

    Inputs: student (retriever) scores (B, n), ranker scores (B, n), optional bool mask (True = real entry).
    """

    def __init__(
        self,
        lambda_: float = 0.5,
        teacher_temperature: float = 1.0,
        adversarial_over_negatives_only: bool = False,
    ):
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
        if teacher_temperature <= 0:
            raise ValueError(f"teacher_temperature must be positive, got {teacher_temperature}")
        self.lambda_ = lambda_
        self.teacher_temperature = teacher_temperature
        self.adversarial_over_negatives_only = adversarial_over_negatives_only

    def forward(self, student_scores: Tensor, ranker_scores: Tensor, mask: Tensor | None = None) -> Tensor:
        check_pair(student_scores, ranker_scores, ("retriever", "ranker"))
        mask = full_mask(student_scores, mask)
        log_p_theta = masked_log_softmax(student_scores.float(), mask)
        zeros = torch.zeros_like(log_p_theta)

        with torch.no_grad():
            ranker = ranker_scores.detach().float()
            reward = F.logsigmoid(ranker[:, :1] - ranker)
            p_phi = masked_log_softmax(ranker / self.teacher_temperature, mask).exp()
            adversarial_entries = mask.clone()
            if self.adversarial_over_negatives_only:
                adversarial_entries[:, 0] = False

        adversarial = torch.where(adversarial_entries, reward * log_p_theta, zeros).sum(dim=-1)
        regulariser = -torch.where(mask, p_phi * log_p_theta, zeros).sum(dim=-1)
        per_query = self.lambda_ * adversarial + (1.0 - self.lambda_) * regulariser
        # The positive must be a real entry: without it there is no reward to compute.
        return mean_over_queries(per_query, mask[:, 0].long() * mask.sum(dim=-1))

    def extra_repr(self) -> str:
        return (
            f"lambda_={self.lambda_}, teacher_temperature={self.teacher_temperature}, "
            f"adversarial_over_negatives_only={self.adversarial_over_negatives_only}"
        )
