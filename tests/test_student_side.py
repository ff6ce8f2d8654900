"""The student side of list distillation: random negatives at teacher probability 0 (collator and KL, by hand),
in-batch negatives that leave them out of the own list, candidate lists from several sources, the
answer-string teacher over them."""

from __future__ import annotations

import math
import random

import pytest
import torch

from distillir.errors import ConfigError
from distillir.losses import InBatchListLoss, KLDivergenceLoss
from distillir.recipes.common.config import StudentConfig
from distillir.recipes.common.distill import ListCollator, ListExample


def test_kl_with_a_teacher_probability_zero_entry_by_hand():
    student = torch.tensor([[2.0, 0.0, 1.0]])
    teacher = torch.tensor([[1.0, 0.0, float("-inf")]])  # the third entry: a random negative
    lt = [1.0 - math.log(math.exp(1.0) + 1.0), -math.log(math.exp(1.0) + 1.0)]
    z = math.log(math.exp(2.0) + 1.0 + math.exp(1.0))
    ls = [2.0 - z, 0.0 - z]  # the student's softmax runs over all three
    want = sum(math.exp(a) * (a - b) for a, b in zip(lt, ls))
    got = KLDivergenceLoss()(student, teacher)
    assert torch.isfinite(got) and got.item() == pytest.approx(want, rel=1e-6)
    # Without the -inf entry the student's softmax runs over two: a different (smaller) value.
    assert KLDivergenceLoss()(student[:, :2], teacher[:, :2]).item() < want


def test_in_batch_own_mask_counts_random_negatives_with_the_batch():
    cross = torch.tensor([[[1.0, 2.0], [0.5, -1.0]], [[0.0, 1.0], [3.0, 0.0]]])  # (B=2, B=2, n=2)
    mask = torch.ones(2, 2, dtype=torch.bool)
    own = torch.tensor([[True, False], [True, True]])  # question 0's second entry: teacher probability 0
    got = InBatchListLoss()(cross, mask, own)
    everything0 = math.log(sum(math.exp(x) for x in (1.0, 2.0, 0.5, -1.0)))
    everything1 = math.log(sum(math.exp(x) for x in (0.0, 1.0, 3.0, 0.0)))
    want = ((everything0 - 1.0) + (everything1 - math.log(math.exp(3.0) + math.exp(0.0)))) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert InBatchListLoss()(cross, mask).item() < got.item()  # counting the negative as own lowers the loss


def test_collator_adds_random_negatives_outside_the_list(tiny_corpus, tiny_bert_dir):
    from distillir.recipes.common.distill import build_student

    encoder = build_student(StudentConfig(model=tiny_bert_dir, query_max_length=16, passage_max_length=32))
    examples = [ListExample("q1", "capital of France", ["p1", "p2"], [1.0, 0.0])]
    random.seed(0)
    batch = ListCollator(encoder, tiny_corpus, random_negatives=2)(examples)
    assert batch["teacher"].shape == (1, 4) and batch["mask"].all()
    assert batch["teacher"][0, :2].tolist() == [1.0, 0.0] and torch.isinf(batch["teacher"][0, 2:]).all()
    drawn = ListCollator(encoder, tiny_corpus, random_negatives=2).with_random_negatives(examples[0]).pids[2:]
    assert len(set(drawn)) == 2 and not set(drawn) & {"p1", "p2"}
    # The whole corpus is 5 passages: asking for more than are left draws only what there is.
    assert len(ListCollator(encoder, tiny_corpus, random_negatives=9).with_random_negatives(examples[0]).pids) == 5


def test_random_negatives_need_kl():
    with pytest.raises(ConfigError, match="random_negatives"):
        StudentConfig(random_negatives=4, loss="mse")
    with pytest.raises(ConfigError, match="random_negatives"):
        StudentConfig(random_negatives=-1)


def test_candidate_lists_from_bm25_the_student_and_both(tiny_corpus, tiny_queries, tiny_bert_dir, tmp_path,
                                                        monkeypatch):
    from distillir.recipes.common.candidates import answer_teacher, candidate_run
    from distillir.recipes.common.distill import build_student

    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    student = build_student(StudentConfig(model=tiny_bert_dir, query_max_length=16, passage_max_length=32))
    bm25 = candidate_run(["bm25"], 2, tiny_corpus, tiny_queries)
    dense = candidate_run(["student"], 2, tiny_corpus, tiny_queries, student=student)
    both = candidate_run(["bm25", "student"], 2, tiny_corpus, tiny_queries, student=student)
    for qid in tiny_queries.ids:
        union = {p for p, _ in bm25[qid]} | {p for p, _ in dense[qid]}
        assert {p for p, _ in both[qid]} == union and len(both[qid]) == len(union)
    scores = answer_teacher(bm25, tiny_queries, tiny_corpus)
    pids, values = scores["q1"]
    assert values == [1.0 if pid == "p1" else 0.0 for pid in pids]  # only p1 says "Paris"
    with pytest.raises(ConfigError, match="sources"):
        candidate_run(["nope"], 2, tiny_corpus, tiny_queries)
