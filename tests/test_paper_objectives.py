"""The paper objectives in losses/ (RocketQAv2, Re2G, DGR) against values computed by hand with `math`."""

from __future__ import annotations

import math

import pytest
import torch

from distillir.losses import DGRLoss, JointListwiseLoss, Re2GLoss


def log_softmax(xs):
    top = max(xs)
    z = math.log(sum(math.exp(x - top) for x in xs)) + top
    return [x - z for x in xs]


def kl(teacher, student):
    lt, ls = log_softmax(teacher), log_softmax(student)
    return sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))


def test_joint_listwise_dynamic_and_static_by_hand():
    s_de = torch.tensor([[2.0, 0.5, -1.0]])
    s_ce = torch.tensor([[1.0, 1.5, 0.0]], requires_grad=True)
    sup = -log_softmax([1.0, 1.5, 0.0])[0]  # the positive is first
    kl_value = kl([1.0, 1.5, 0.0], [2.0, 0.5, -1.0])
    dynamic = JointListwiseLoss()(s_de, s_ce)
    assert dynamic["loss"].item() == pytest.approx(sup + kl_value, rel=1e-6)
    assert dynamic["sup"].item() == pytest.approx(sup, rel=1e-6) and dynamic["kl"].item() == pytest.approx(kl_value)
    static = JointListwiseLoss()(s_de, s_ce, ranker_frozen=True)
    assert static["loss"].item() == pytest.approx(kl_value, rel=1e-6)
    dynamic["loss"].backward()
    assert s_ce.grad.abs().sum() > 0  # no stop-gradient on the re-ranker: it learns from L_KL too


def test_joint_listwise_ignores_padding():
    s_de = torch.tensor([[2.0, 0.5, 99.0]])
    s_ce = torch.tensor([[1.0, 1.5, -99.0]])
    mask = torch.tensor([[True, True, False]])
    got = JointListwiseLoss()(s_de, s_ce, mask)["loss"].item()
    assert got == pytest.approx(-log_softmax([1.0, 1.5])[0] + kl([1.0, 1.5], [2.0, 0.5]), rel=1e-6)


def test_re2g_loss_by_hand():
    log_likelihood = torch.tensor([-3.0, -8.0])
    tokens = torch.tensor([3, 4])
    nll = (3.0 / 3 + 8.0 / 4) / 2
    assert Re2GLoss(kd_alpha=None)(log_likelihood, tokens).item() == pytest.approx(nll)
    student = torch.tensor([[10.0, 0.0, -5.0], [1.0, 2.0, 3.0]])
    ranker = torch.tensor([[0.0, 20.0, 5.0], [3.0, 2.0, 1.0]])
    t = 10.0
    distill = sum(kl([r / t for r in rr], [s / t for s in ss]) for rr, ss in zip(ranker.tolist(), student.tolist())) / 2
    got = Re2GLoss(kd_alpha=0.9, kd_temperature=t)(log_likelihood, tokens, student, ranker)
    assert got.item() == pytest.approx(nll + 0.9 * t * t * distill, rel=1e-5)


def test_dgr_loss_by_hand():
    # One list in teacher order: positive, then two negatives; student scores are identifier log-probs.
    scores = torch.tensor([[-2.0, -1.0, -6.0]])
    positive_tokens = torch.tensor([4])
    m, delta, w0 = 1.0, 0.5, 3.0
    s = scores[0].tolist()
    pairs = []  # l_ij = w_i * max(0, s_j - s_i + m + (j - i - 1) * delta), i < j
    for i in range(3):
        for j in range(i + 1, 3):
            w = w0 if i == 0 else 1.0 / (i + 1)
            pairs.append(w * max(0.0, s[j] - s[i] + m + (j - i - 1) * delta))
    nonzero = [v for v in pairs if v > 0]
    ranknet = sum(nonzero) / len(nonzero)
    loss = DGRLoss(rank_weight=0.5, base_margin=m, margin_step=delta, first_weight=w0)
    assert loss(scores, positive_tokens, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(
        2.0 / 4 + 0.5 * ranknet, rel=1e-6)
    index = loss(index_scores=torch.tensor([-3.0, -5.0]), index_tokens=torch.tensor([3, 5]))
    assert index.item() == pytest.approx((1.0 + 1.0) / 2)
