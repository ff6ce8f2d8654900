"""EMDR² (Sachan et al. 2021; Atlas) against hand-computed marginals, its masking, gradients and its split with
in-batch negatives."""

from __future__ import annotations

import math

import pytest
import torch

from distillir.losses import EMDR2Loss, InBatchListLoss


def test_emdr2_by_hand():
    # q1: p_S = (1/3, 2/3), p(a | p_i) = (1/2, 1/4): marginal 1/6 + 1/6 = 1/3 -> loss ln 3.
    # q2: p_S = (1/2, 1/2), p(a | p_i) = (1, 1/2): marginal 3/4 -> loss -ln 3/4.  Mean over the two.
    student = torch.tensor([[0.0, math.log(2.0)], [1.0, 1.0]])
    teacher = torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.5]]))
    loss = EMDR2Loss()(student, teacher)
    assert loss.item() == pytest.approx((math.log(3.0) - math.log(0.75)) / 2, rel=1e-6)


def test_emdr2_temperature_divides_the_student_only():
    student = torch.tensor([[0.0, 2.0 * math.log(2.0)]])  # / 2 -> p_S = (1/3, 2/3)
    teacher = torch.log(torch.tensor([[0.5, 0.25]]))
    assert EMDR2Loss(temperature=2.0)(student, teacher).item() == pytest.approx(math.log(3.0), rel=1e-6)


def test_emdr2_padding_and_teacher_minus_inf():
    # A padded third entry changes nothing; a random negative (T = -inf) takes student mass but adds nothing.
    student = torch.tensor([[0.0, math.log(2.0), 5.0]])
    teacher = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    mask = torch.tensor([[True, True, False]])
    assert EMDR2Loss()(student, teacher, mask).item() == pytest.approx(math.log(3.0), rel=1e-6)
    student = torch.tensor([[0.0, 0.0, 0.0]])  # p_S = 1/3 each; the negative's 1/3 is lost to the marginal
    teacher = torch.tensor([[0.0, 0.0, float("-inf")]])
    assert EMDR2Loss()(student, teacher).item() == pytest.approx(-math.log(2 / 3), rel=1e-6)
    empty = EMDR2Loss()(torch.zeros(1, 2, requires_grad=True), torch.full((1, 2), float("-inf")))
    assert empty.item() == 0.0 and empty.requires_grad


def test_emdr2_gradient_is_student_minus_posterior_and_spares_the_teacher():
    student = torch.tensor([[0.0, math.log(2.0)]], requires_grad=True)
    teacher = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    EMDR2Loss()(student, teacher).backward()
    # d/dS_i = p_S,i - posterior_i; posterior = (1/6, 1/6) / (1/3) = (1/2, 1/2); p_S = (1/3, 2/3).
    assert student.grad.tolist()[0] == pytest.approx([1 / 3 - 1 / 2, 2 / 3 - 1 / 2], abs=1e-6)
    assert teacher.grad is None


def test_emdr2_with_in_batch_negatives_is_emdr2_over_the_whole_batch():
    # The other list's passages at T = -inf: -log sum_own e^T p_S(over the batch) splits into EMDR² over the
    # own list plus InBatchListLoss's -log P_S(own list), as KL does.
    torch.manual_seed(0)
    cross = torch.randn(2, 2, 3)
    teacher = torch.randn(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    own = cross[torch.arange(2), torch.arange(2)]
    split = EMDR2Loss()(own, teacher) + InBatchListLoss()(cross, mask)
    whole = []
    for b in range(2):
        scores = cross[b].reshape(-1)
        targets = torch.full((6,), float("-inf"))
        targets[3 * b: 3 * b + 3] = teacher[b]
        whole.append(-torch.logsumexp(targets + torch.log_softmax(scores, -1), -1))
    assert split.item() == pytest.approx(torch.stack(whole).mean().item(), rel=1e-5)
