"""Each loss against values worked out by hand on tiny lists, plus masking and gradient flow.

Scores are often written as log-probabilities (log p + any constant): softmax then gives p back exactly,
which keeps the arithmetic readable.
"""

from __future__ import annotations

import math

import pytest
import torch

from distillir.losses import (
    AdversarialRetrieverLoss,
    DistilledRankNetLoss,
    KLDivergenceLoss,
    ListwiseCrossEntropyLoss,
    MaxMarginDistillLoss,
    MSEDistillLoss,
    order_by_teacher,
)

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def logp(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def close(actual: torch.Tensor, expected: float) -> None:
    assert actual.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --- KL ----------------------------------------------------------------------------------------


def test_kl_by_hand():
    # q1: p_T = (1/2, 1/4, 1/4), p_S = (1/4, 1/4, 1/2):
    #     KL = 1/2 ln(2) + 1/4 ln(1) + 1/4 ln(1/2) = 1/4 ln 2
    # q2: equal distributions: KL = 0.            mean over queries = 1/8 ln 2
    teacher = torch.tensor([logp(0.5, 0.25, 0.25), [0.0, 0.0, 0.0]])
    student = torch.tensor([logp(0.25, 0.25, 0.5), [7.0, 7.0, 7.0]])
    close(KLDivergenceLoss()(student, teacher), LN2 / 8)


def test_kl_temperature_and_t2_scaling():
    # Scores doubled with tau = 2 give back the same distributions; tau^2 = 4 scales the value.
    teacher = 2 * torch.tensor([logp(0.5, 0.25, 0.25)])
    student = 2 * torch.tensor([logp(0.25, 0.25, 0.5)])
    close(KLDivergenceLoss(temperature=2.0)(student, teacher), LN2 / 4)
    close(KLDivergenceLoss(temperature=2.0, scale_by_t2=True)(student, teacher), 4 * LN2 / 4)


def test_kl_masks_padding():
    # Third entry padded: p_T = (1/2, 1/2), p_S = (1/4, 3/4) over the real entries:
    #     KL = 1/2 ln(2) + 1/2 ln(2/3)
    mask = torch.tensor([[True, True, False]])
    teacher = torch.tensor([logp(0.5, 0.5) + [50.0]])
    student = torch.tensor([logp(0.25, 0.75) + [-50.0]], requires_grad=True)
    loss = KLDivergenceLoss()(student, teacher, mask)
    close(loss, 0.5 * LN2 + 0.5 * math.log(2 / 3))
    loss.backward()
    assert student.grad[0, 2] == 0
    # Whatever sits in the padding does not matter.
    other = KLDivergenceLoss()(torch.tensor([logp(0.25, 0.75) + [9.0]]), torch.tensor([logp(0.5, 0.5) + [-9.0]]), mask)
    close(other, loss.item())


def test_kl_gradient_flow_follows_detach_teacher():
    student = torch.tensor([[0.1, 0.5, -0.3]], requires_grad=True)
    teacher = torch.tensor([[1.0, -1.0, 0.2]], requires_grad=True)
    KLDivergenceLoss(detach_teacher=True)(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None

    student.grad = None
    KLDivergenceLoss(detach_teacher=False)(student, teacher).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is not None and teacher.grad.abs().sum() > 0


def test_kl_fully_padded_query_is_left_out():
    teacher = torch.tensor([logp(0.5, 0.25, 0.25), [0.0, 0.0, 0.0]])
    student = torch.tensor([logp(0.25, 0.25, 0.5), [1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, True], [False, False, False]])
    close(KLDivergenceLoss()(student, teacher, mask), LN2 / 4)


# --- MSE ---------------------------------------------------------------------------------------


def test_mse_sums_over_list_and_averages_over_queries():
    # q1: (1-1)^2 + (2-0)^2 + (3-5)^2 = 8;  q2: 3 x (0-1)^2 = 3;  mean = 5.5
    student = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    close(MSEDistillLoss()(student, teacher), 5.5)
    # Masking q1's third entry: q1 = 4, mean = (4 + 3) / 2
    mask = torch.tensor([[True, True, False], [True, True, True]])
    close(MSEDistillLoss()(student, teacher, mask), 3.5)


# --- max-margin --------------------------------------------------------------------------------


def test_max_margin_by_hand():
    # gamma = 1.  q1: S = (3, 1, 2), T = (3, 2, 1); every pair has sign(T_i - T_j) = +1:
    #   (0,1): max(0, 1 - 2) = 0;  (0,2): max(0, 1 - 1) = 0;  (1,2): max(0, 1 - (-1)) = 2  -> 2 / 3 pairs
    # q2: S = (0, 0, 0), T = (1, 1, 0): (0,1) tied in T, skipped; (0,2) and (1,2): 1 each -> 2 / 2 pairs
    # q3: all teacher scores tied: no pairs, left out of the mean.      mean = (2/3 + 1) / 2 = 5/6
    student = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0], [4.0, 4.0, 4.0]])
    close(MaxMarginDistillLoss(margin=1.0)(student, teacher), 5 / 6)


def test_max_margin_masks_padding():
    # q1 with its third entry padded keeps only pair (0,1): 0.  q2 unchanged: 1.  mean = 1/2
    student = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    close(MaxMarginDistillLoss(margin=1.0)(student, teacher, mask), 0.5)


# --- listwise cross-entropy --------------------------------------------------------------------


def test_listwise_ce_by_hand():
    # softmax = (1/2, 1/4, 1/4) for both queries.
    # q1, positive first: -ln(1/2) = ln 2.   q2, gold = {1, 2}: -(ln 1/4 + ln 1/4) / 2 = 2 ln 2.
    scores = torch.tensor([logp(0.5, 0.25, 0.25), logp(0.5, 0.25, 0.25)])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    close(ListwiseCrossEntropyLoss()(scores, labels), 1.5 * LN2)
    # Positive first is the default; integer indices and bool labels work too.
    close(ListwiseCrossEntropyLoss()(scores), LN2)
    close(ListwiseCrossEntropyLoss()(scores, torch.tensor([0, 1])), (LN2 + 2 * LN2) / 2)
    close(ListwiseCrossEntropyLoss()(scores, labels.bool()), 1.5 * LN2)
    # Weights are normalised by their sum: (2, 0, 0) is the same as (1, 0, 0).
    close(ListwiseCrossEntropyLoss()(scores, 2 * labels), 1.5 * LN2)


def test_listwise_ce_masking_and_queries_without_gold():
    # q1: third entry padded: softmax over (1/2, 1/4) renormalised = (2/3, 1/3): -ln(2/3).
    # q2: no gold passage: left out.
    scores = torch.tensor([logp(0.5, 0.25, 0.25), logp(0.5, 0.25, 0.25)])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # the gold label on padding is ignored
    mask = torch.tensor([[True, True, False], [True, True, True]])
    close(ListwiseCrossEntropyLoss()(scores, labels, mask), -math.log(2 / 3))


# --- AR2 adversarial ---------------------------------------------------------------------------


def ar2_example():
    # p_theta = (1/2, 1/4, 1/4). Ranker T = (0, 0, ln 3): positive first.
    # reward = log sigmoid(T_0 - T_d) = (log 1/2, log 1/2, log 1/4) = (-ln 2, -ln 2, -2 ln 2)
    # p_phi = softmax(T) = (1/5, 1/5, 3/5)
    # L_adv = sum reward * log p_theta = ln2*ln2 + ln2*2ln2 + 2ln2*2ln2 = 7 ln^2 2
    # L_R   = -sum p_phi log p_theta  = (1/5) ln2 + (1/5) 2ln2 + (3/5) 2ln2 = 9/5 ln 2
    student = torch.tensor([logp(0.5, 0.25, 0.25)], requires_grad=True)
    ranker = torch.tensor([[0.0, 0.0, LN3]], requires_grad=True)
    return student, ranker


def test_adversarial_by_hand():
    student, ranker = ar2_example()
    close(AdversarialRetrieverLoss(lambda_=0.5)(student, ranker), 0.5 * 7 * LN2**2 + 0.5 * 9 / 5 * LN2)
    close(AdversarialRetrieverLoss(lambda_=1.0)(student, ranker), 7 * LN2**2)
    # Over the negatives only, the positive's term ln2*ln2 drops out of L_adv.
    close(AdversarialRetrieverLoss(lambda_=1.0, adversarial_over_negatives_only=True)(student, ranker), 6 * LN2**2)


def test_adversarial_two_queries_average():
    # q2: p_theta uniform, T all 0: reward = -ln 2 each, L_adv = 3 ln2 ln3; p_phi uniform, L_R = ln 3.
    student = torch.tensor([logp(0.5, 0.25, 0.25), [0.0, 0.0, 0.0]])
    ranker = torch.tensor([[0.0, 0.0, LN3], [0.0, 0.0, 0.0]])
    q1 = 0.5 * 7 * LN2**2 + 0.5 * 9 / 5 * LN2
    q2 = 0.5 * 3 * LN2 * LN3 + 0.5 * LN3
    close(AdversarialRetrieverLoss(lambda_=0.5)(student, ranker), (q1 + q2) / 2)


def test_adversarial_gives_no_gradient_to_ranker():
    student, ranker = ar2_example()
    AdversarialRetrieverLoss(lambda_=0.5)(student, ranker).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert ranker.grad is None


def test_adversarial_lambda_zero_is_distillation():
    student, ranker = ar2_example()
    loss = AdversarialRetrieverLoss(lambda_=0.0)(student, ranker)
    close(loss, 9 / 5 * LN2)
    loss.backward()
    ar2_grad = student.grad.clone()
    # Cross-entropy to p_phi = KL(p_phi || p_theta) + H(p_phi): same gradient as the KL loss.
    student.grad = None
    KLDivergenceLoss()(student, ranker).backward()
    torch.testing.assert_close(ar2_grad, student.grad)


def test_adversarial_step_moves_retriever_towards_hard_negative():
    # With lambda = 1 a descent step raises p_theta of the negative the ranker rates highest (index 2).
    student, ranker = ar2_example()
    AdversarialRetrieverLoss(lambda_=1.0)(student, ranker).backward()
    with torch.no_grad():
        before = torch.softmax(student, -1)[0, 2]
        after = torch.softmax(student - 0.1 * student.grad, -1)[0, 2]
    assert after > before


def test_adversarial_masks_padding():
    # The example plus a padded fourth entry gives the same value.
    student = torch.tensor([logp(0.5, 0.25, 0.25) + [30.0]])
    ranker = torch.tensor([[0.0, 0.0, LN3, 30.0]])
    mask = torch.tensor([[True, True, True, False]])
    close(AdversarialRetrieverLoss(lambda_=0.5)(student, ranker, mask), 0.5 * 7 * LN2**2 + 0.5 * 9 / 5 * LN2)


# --- DGR distilled RankNet ---------------------------------------------------------------------


def test_distilled_ranknet_by_hand():
    # m = 1, delta = 0.5, w_0 = 3, w_1 = 1/2.  Scores already in teacher order: s = (2, 1, 1.5)
    #   (0,1): 3 * max(0, 1 - 2 + 1 + 0)     = 0        (satisfied: not averaged)
    #   (0,2): 3 * max(0, 1.5 - 2 + 1 + 0.5) = 3
    #   (1,2): 1/2 * max(0, 1.5 - 1 + 1 + 0) = 0.75
    # q2: s = (5, 0, -5): every pair satisfied.     mean of the non-zero terms = (3 + 0.75) / 2
    loss = DistilledRankNetLoss(base_margin=1.0, margin_step=0.5, first_weight=3.0)
    close(loss(torch.tensor([[2.0, 1.0, 1.5], [5.0, 0.0, -5.0]])), 1.875)


def test_distilled_ranknet_weights_by_position():
    # Four equal scores, m = 1, delta = 0: every pair gives w_i * 1.
    #   i = 0: 3 pairs x 3;  i = 1: 2 pairs x 1/2;  i = 2: 1 pair x 1/3  -> (9 + 1 + 1/3) / 6
    loss = DistilledRankNetLoss(base_margin=1.0, margin_step=0.0)
    close(loss(torch.zeros(1, 4)), (9 + 1 + 1 / 3) / 6)


def test_distilled_ranknet_masks_padding_anywhere():
    loss = DistilledRankNetLoss(base_margin=1.0, margin_step=0.5)
    mask = torch.tensor([[True, False, True, True]])
    close(loss(torch.tensor([[2.0, 99.0, 1.0, 1.5]]), mask=mask), 1.875)


def test_distilled_ranknet_all_satisfied_is_zero_with_gradient():
    scores = torch.tensor([[5.0, 0.0, -5.0]], requires_grad=True)
    value = DistilledRankNetLoss(base_margin=1.0, margin_step=0.5)(scores)
    assert value.item() == 0.0 and not torch.isnan(value)
    value.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


def test_order_by_teacher():
    student = torch.tensor([[10.0, 20.0, 30.0, 40.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0, 3.0, 2.0]])
    ordered, _ = order_by_teacher(student, teacher)  # positive kept first
    assert ordered.tolist() == [[10.0, 30.0, 40.0, 20.0]]
    ordered, _ = order_by_teacher(student, teacher, keep_first=False)
    assert ordered.tolist() == [[30.0, 40.0, 20.0, 10.0]]
    # Ties keep the input order; padding goes last.
    ordered, _ = order_by_teacher(student, torch.tensor([[0.0, 1.0, 1.0, 1.0]]), keep_first=False)
    assert ordered.tolist() == [[20.0, 30.0, 40.0, 10.0]]
    ordered, mask = order_by_teacher(student, torch.tensor([[0.0, 1.0, 5.0, 2.0]]), torch.tensor([[1, 1, 0, 1]]).bool())
    assert ordered.tolist() == [[10.0, 40.0, 20.0, 30.0]] and mask.tolist() == [[True, True, True, False]]
    ordered.sum().backward()
    assert student.grad.tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_distilled_ranknet_sorts_by_teacher_when_given():
    student = torch.tensor([[2.0, 1.5, 1.0]])
    teacher = torch.tensor([[0.0, 1.0, 2.0]])  # positive first, then negatives by teacher: (2, 1, 1.5)
    loss = DistilledRankNetLoss(base_margin=1.0, margin_step=0.5)
    close(loss(student, teacher), 1.875)


def test_in_batch_list_loss_is_the_kl_over_lists_extended_with_the_batch():
    from distillir.losses import InBatchListLoss, KLDivergenceLoss

    torch.manual_seed(0)
    b, n, tau = 3, 4, 0.5
    cross = torch.randn(b, b, n)
    teacher = torch.randn(b, n)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[2, 3] = False  # list 2 has a padded slot: in nobody's softmax
    own = torch.diagonal(cross, dim1=0, dim2=1).transpose(0, 1)
    split = KLDivergenceLoss(tau)(own, teacher, mask) + InBatchListLoss(tau)(cross, mask)

    # the same KL written out over each question's extended list: own passages carry the teacher's scores,
    # the other lists' passages teacher probability 0 (a score far below everything)
    extended_s, extended_t, extended_m = [], [], []
    for q in range(b):
        order = [q] + [c for c in range(b) if c != q]
        extended_s.append(torch.cat([cross[q, c] for c in order]))
        extended_t.append(torch.cat([teacher[q]] + [torch.full((n,), -1e4) for _ in order[1:]]))
        extended_m.append(torch.cat([mask[c] for c in order]))
    direct = KLDivergenceLoss(tau)(torch.stack(extended_s), torch.stack(extended_t), torch.stack(extended_m))
    assert split.item() == pytest.approx(direct.item(), rel=1e-5)

    # by hand: mean over questions of -log( sum_own exp(S/tau) / sum_batch exp(S/tau) ), padding left out
    by_hand = []
    for q in range(b):
        total = sum(torch.exp(cross[q, c][mask[c]] / tau).sum() for c in range(b))
        by_hand.append(-torch.log(torch.exp(cross[q, q][mask[q]] / tau).sum() / total))
    assert InBatchListLoss(tau)(cross, mask).item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-6)
    assert InBatchListLoss(tau)(cross[:1, :1], mask[:1]).item() == pytest.approx(0.0, abs=1e-6)  # nothing else
    with pytest.raises(ValueError):
        InBatchListLoss(tau)(cross[:, :2], mask)
