"""A cross-encoder learning a teacher's scores (`teacher.scores`): the scored-list collator, the loss against
hand-computed values, and the recipe end to end on the toy BEIR data with the tiny BERT."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distillir.data.datasets import load_dataset
from distillir.data.toy import write_toy_beir
from distillir.errors import InputError
from distillir.losses import KLDivergenceLoss
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.recipes.common.distill import ListExample, teacher_targets
from distillir.recipes.common.ranking import RankerDistillLoss, ScoredListCollator
from distillir.recipes.cross_encoder import CrossEncoderConfig, CrossEncoderRecipe
from distillir.teachers.scores import TeacherScores
from distillir.training.config import load_config


@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    return write_toy_beir(tmp_path / "tiny")


def test_scored_lists_are_cut_to_list_size_in_list_order_and_padded(tiny_bert_dir, tiny_dataset):
    corpus = load_dataset(str(tiny_dataset), "train").corpus
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48)
    examples = [ListExample("train0", "volcano", ["d0a", "d1a", "d2b"], [3.0, 1.0, 2.0]),
                ListExample("train1", "glacier", ["d1a"], [0.5])]
    random.seed(0)
    batch = ScoredListCollator(corpus, 2, ranker)(examples)
    random.seed(0)
    again = ScoredListCollator(corpus, 2, ranker)(examples)
    assert torch.equal(batch["teacher"], again["teacher"])  # the draw follows Python's (checkpointed) random
    assert batch["mask"].tolist() == [[True, True], [True, False]]
    first = batch["teacher"][0].tolist()
    assert first in ([3.0, 1.0], [3.0, 2.0], [1.0, 2.0])  # two of the three, in the list's order
    assert batch["teacher"][1].tolist() == [0.5, 0.0]
    assert batch["pairs"]["input_ids"].shape[0] == 4  # B * n pairs, query-major


def test_ranker_distill_loss_is_the_kl_to_the_teacher_over_the_real_entries():
    scores = torch.tensor([[0.0, 0.0, 7.0]])  # the third entry is padding
    ranker = SimpleNamespace(list_scores=lambda pairs, n: scores.view(-1, n))
    batch = {"pairs": {}, "teacher": torch.tensor([[0.0, math.log(3.0), 0.0]]),
             "mask": torch.tensor([[True, True, False]])}
    loss = RankerDistillLoss(KLDivergenceLoss())(ranker, batch)
    # teacher p = (1/4, 3/4), ranker q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2)
    assert loss.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)


def _teacher_file(path: Path) -> Path:
    """Each train query's gold first (d{i}a, score 2), its sibling (d{i}b, 1), another topic's page (0)."""
    given = TeacherScores("lm:question_likelihood")
    for i in range(8):
        given.add(f"train{i}", [f"d{(i + 1) % 8}a", f"d{i}a", f"d{i}b"], [0.0, 2.0, 1.0])
    given.write(path)
    return path


def _kl_to_teacher(ranker, corpus, examples) -> float:
    loss = KLDivergenceLoss()
    total = 0.0
    for ex in examples:
        passages = [(corpus.titles[corpus.index_of[p]], corpus.texts[corpus.index_of[p]]) for p in ex.pids]
        s = torch.tensor(ranker.score_pairs([ex.query] * len(ex.pids), passages))[None]
        total += loss(s, torch.tensor([teacher_targets(ex.scores, "zscore", 5.0)])).item()
    return total / len(examples)


def test_a_ranker_learns_a_teacher_score_file(tiny_bert_dir, tiny_dataset, tmp_path):
    from distillir.recipes.common.run import seed_everything

    scores = _teacher_file(tmp_path / "lm.jsonl")
    out = tmp_path / "run"
    sets = [f"model={tiny_bert_dir}", f"output_dir={out}", f"data.dataset={tiny_dataset}", "seed=1", "max_length=48",
            "list_size=3", "trainer.per_device_batch_size=4", "trainer.max_steps=6", "trainer.learning_rate=1e-3",
            "trainer.warmup_ratio=0", f"teacher.scores={scores}"]
    results = CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, sets))
    assert results["teacher"] == {"scores": str(scores), "loss": "kl", "lists": 8}
    assert results["train"]["global_step"] == 6 and not (out / "train_lists.jsonl").exists()  # nothing mined

    train = load_dataset(str(tiny_dataset), "train")
    corpus, text = train.corpus, dict(zip(train.queries.ids, train.queries.texts))
    examples = [ListExample(f"train{i}", text[f"train{i}"], [f"d{(i + 1) % 8}a", f"d{i}a", f"d{i}b"], [0.0, 2.0, 1.0])
                for i in range(8)]
    seed_everything(1)  # the fresh head the recipe started from
    initial = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48)
    trained = CrossEncoder.from_pretrained(out / "final")
    assert _kl_to_teacher(trained, corpus, examples) < _kl_to_teacher(initial, corpus, examples)


def test_a_bad_teacher_file_is_refused_before_the_run_directory_exists(tiny_bert_dir, tiny_dataset, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"qid": "train0", "pids": ["d0a", "nope"], "scores": [1.0, 0.0]}\n')
    other = TeacherScores("lm")
    other.add("elsewhere", ["d0a"], [1.0])
    other.write(tmp_path / "other.jsonl")
    for name, message in (("bad.jsonl", "line 1.*not in the corpus"), ("other.jsonl", "no line names a query")):
        out = tmp_path / f"run-{name}"
        sets = [f"model={tiny_bert_dir}", f"output_dir={out}", f"data.dataset={tiny_dataset}",
                f"teacher.scores={tmp_path / name}"]
        with pytest.raises(InputError, match=message):
            CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, sets))
        assert not out.exists()
