"""DPR's contrastive loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distillir.losses.contrastive import ContrastiveLoss


def hand_ce(scores: list[float], target: int) -> float:
    return -scores[target] + math.log(sum(math.exp(s) for s in scores))


def test_in_batch_and_hard_negatives_match_a_hand_computed_value():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    neg = torch.tensor([[0.0, 3.0]])
    # Row 1: q1 . [p1, p2, n1] = [2, 1, 0]; row 2: q2 . [p1, p2, n1] = [0, 1, 3].
    expected = (hand_ce([2, 1, 0], 0) + hand_ce([0, 1, 3], 1)) / 2
    loss = ContrastiveLoss()(q, pos, neg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_temperature_and_custom_similarity():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    expected = (hand_ce([2 / 0.5, 1 / 0.5], 0) + hand_ce([0, 1 / 0.5], 1)) / 2
    assert ContrastiveLoss(temperature=0.5)(q, pos).item() == pytest.approx(expected, abs=1e-6)
    scaled = ContrastiveLoss(similarity=lambda a, b: 2 * (a @ b.T))
    assert scaled(q, pos).item() == pytest.approx(expected, abs=1e-6)


def test_mask_removes_false_negatives_but_never_the_target():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    neg = torch.tensor([[0.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])  # (0,0) and (1,1) are targets: ignored
    expected = (hand_ce([2, 0], 0) + hand_ce([0, 1], 1)) / 2
    assert ContrastiveLoss()(q, pos, neg, mask=mask).item() == pytest.approx(expected, abs=1e-6)


def test_gradient_flows_to_queries_and_all_passages():
    q = torch.randn(3, 4, requires_grad=True)
    pos = torch.randn(3, 4, requires_grad=True)
    neg = torch.randn(2, 4, requires_grad=True)
    ContrastiveLoss()(q, pos, neg).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, pos, neg))


def test_shape_errors():
    with pytest.raises(ValueError, match="one positive per query"):
        ContrastiveLoss()(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="mask shape"):
        ContrastiveLoss()(torch.randn(2, 4), torch.randn(2, 4), mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0)
