"""The cross-encoder recipe end to end on a handmade BEIR-layout dataset with the tiny BERT; the list collator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distillir.data.toy import write_toy_beir
from distillir.recipes import RECIPES, get_recipe
from distillir.recipes.common.ranking import CandidateListCollator
from distillir.recipes.cross_encoder import CrossEncoderConfig, CrossEncoderRecipe
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))  # BM25 and embedding caches stay here
    return write_toy_beir(tmp_path / "tiny")


def train_lists_loss(ranker, out: Path, corpus_path: Path) -> float:
    """ListwiseCE of the ranker over every training list (positive first), dropout off."""
    lists = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    corpus = {r["_id"]: r for r in map(json.loads, corpus_path.read_text().splitlines())}
    pids = [[row["positives"][0], *row["negatives"]] for row in lists]  # equal lengths here
    pairs = [(row["query"], (corpus[p]["title"], corpus[p]["text"])) for row, ids in zip(lists, pids) for p in ids]
    scores = torch.tensor(ranker.score_pairs([q for q, _ in pairs], [p for _, p in pairs])).view(len(lists), -1)
    return -torch.log_softmax(scores, dim=1)[:, 0].mean().item()


def test_cross_encoder_recipe_trains_saves_and_reranks(tiny_bert_dir, tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from distillir.cli.main import app
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.run import seed_everything

    out = tmp_path / "run"
    config = load_config(CrossEncoderConfig, None, [
        f"model={tiny_bert_dir}", f"output_dir={out}", f"data.dataset={tiny_dataset}", "seed=1", "max_length=48",
        "list_size=3", "negatives.mined=4", "trainer.per_device_batch_size=4", "trainer.max_steps=4",
        "trainer.learning_rate=1e-3", "trainer.warmup_ratio=0", "trainer.save_steps=2", "trainer.log_steps=1",
        f"eval.dataset={tiny_dataset}", "eval.top_k=5", "eval.depth=10",
    ])
    results = CrossEncoderRecipe().run(config)

    assert results["train"]["global_step"] == 4 and results["train_examples"] == 8
    lists = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    assert len(lists) == 8 and all(len(r["negatives"]) == 4 for r in lists)
    assert all(not set(r["positives"]) & set(r["negatives"]) for r in lists)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    # final/ loads back as a cross-encoder with the trained settings, and it learnt its training lists.
    trained = CrossEncoder.from_pretrained(out / "final")
    assert trained.max_length == 48
    seed_everything(1)  # the recipe's seed: the same fresh head the recipe started from
    initial = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48)
    corpus_path = tiny_dataset / "corpus.jsonl"
    assert train_lists_loss(trained, out, corpus_path) < train_lists_loss(initial, out, corpus_path)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["first_stage"]["name"] == "bm25" and metrics["rerank_top_k"] == 5
    assert metrics["first_stage"]["queries"] == metrics["reranked"]["queries"] == 8
    assert results["metrics"] == metrics

    # The trained model re-ranks any run from the command line.
    from distillir.data.datasets import load_dataset
    from distillir.retrievers.bm25 import bm25_cached

    test = load_dataset(str(tiny_dataset), "test")
    bm25_run = bm25_cached(test.corpus).search(test.queries, top_k=6)
    bm25_run.write_trec(tmp_path / "bm25.trec")
    result = CliRunner().invoke(app, [
        "rerank", str(tmp_path / "bm25.trec"), str(tiny_dataset / "queries.jsonl"), str(tiny_dataset / "corpus.jsonl"),
        "--model", str(out / "final"), "--top-k", "3", "--out", str(tmp_path / "reranked.trec"),
    ])
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "reranked.trec").read_text().splitlines()
    assert len(rows) == sum(min(3, len(h)) for h in bm25_run.values())


def test_list_collator_pads_short_lists_and_tokenizes_for_both_models(tiny_bert_dir, tiny_corpus):
    from distillir.data.negatives import TrainingExample
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.retrievers.dense.encoder import BiEncoder

    retriever = BiEncoder.from_pretrained(tiny_bert_dir, query_max_length=16, passage_max_length=24)
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=32)
    examples = [TrainingExample("q1", "capital of France", ["p1"], ["p2", "p3", "p4"]),
                TrainingExample("q2", "plants", ["p4"], ["p5"])]
    collate = CandidateListCollator(tiny_corpus, 3, retriever=retriever, ranker=ranker)
    ids, mask = collate.lists(examples)
    assert ids[0][0] == "p1" and set(ids[0][1:]) <= {"p2", "p3", "p4"} and len(set(ids[0])) == 3
    assert ids[1] == ["p4", "p5", "p4"] and mask == [[True] * 3, [True, True, False]]
    batch = collate(examples)
    assert batch["mask"].tolist() == [[True] * 3, [True, True, False]]
    assert batch["query"]["input_ids"].shape[0] == 2
    assert batch["passage"]["input_ids"].shape[0] == batch["pairs"]["input_ids"].shape[0] == 6
    assert ranker.list_scores(batch["pairs"], 3).shape == (2, 3)


def test_shipped_config_loads():
    config = load_config(CrossEncoderConfig, REPO / "configs" / "cross-encoder-scifact-cpu.yaml")
    assert config.eval is not None and config.list_size >= 4 and config.trainer.max_steps


def test_registry():
    assert get_recipe("cross-encoder") is CrossEncoderRecipe and "cross-encoder" in RECIPES


def test_head_learning_rate_trains_the_head_at_its_own_rate(tiny_bert_dir, tiny_dataset, tmp_path):
    """With an encoder rate ~0 and a head rate of 1e-2, only the classifier head moves."""
    from distillir.rankers.cross_encoder import CrossEncoder

    out = tmp_path / "run"
    config = load_config(CrossEncoderConfig, None, [
        f"model={tiny_bert_dir}", f"output_dir={out}", f"data.dataset={tiny_dataset}", "seed=1", "max_length=48",
        "list_size=3", "negatives.mined=2", "trainer.per_device_batch_size=4", "trainer.max_steps=2",
        "trainer.learning_rate=1e-30", "head_learning_rate=1e-2", "trainer.warmup_ratio=0",
        "trainer.weight_decay=0.01",
    ])
    CrossEncoderRecipe().run(config)
    start = CrossEncoder.from_pretrained(tiny_bert_dir).model.state_dict()
    trained = CrossEncoder.from_pretrained(out / "final").model.state_dict()
    head = ("classifier.", "bert.pooler.")
    moved = {k for k in start if not k.startswith(head) and not torch.allclose(start[k], trained[k])}
    assert moved == set()
    assert not torch.allclose(start["bert.pooler.dense.weight"], trained["bert.pooler.dense.weight"], atol=1e-4)
    # The head started from its own random init (seeded by the recipe); it must have left it.
    from distillir.recipes.common.run import seed_everything

    seed_everything(1)
    fresh = CrossEncoder.from_pretrained(tiny_bert_dir).model.state_dict()
    assert not torch.allclose(fresh["classifier.weight"], trained["classifier.weight"], atol=1e-4)


def test_ranker_param_groups_split_head_from_encoder(tiny_bert_dir):
    from distillir.errors import ConfigError
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import ranker_param_groups

    ranker = CrossEncoder.from_pretrained(tiny_bert_dir)
    head, body = ranker.head_and_body_parameters()
    names = {id(p): n for n, p in ranker.model.named_parameters()}
    assert sorted(names[id(p)] for p in head) == ["bert.pooler.dense.bias", "bert.pooler.dense.weight",
                                                  "classifier.bias", "classifier.weight"]
    assert len(head) + len(body) == len(names)

    assert ranker_param_groups(ranker, 1e-5, None) is None
    groups = ranker_param_groups(ranker, 1e-5, 1e-3, weight_decay=0.01)
    by_rate = {}
    for g in groups:
        by_rate.setdefault(g["lr"], []).extend(g["params"])
    assert {id(p) for p in by_rate[1e-3]} == {id(p) for p in head}
    assert {id(p) for p in by_rate[1e-5]} == {id(p) for p in body}
    assert all(g["weight_decay"] == (0.01 if all(p.ndim >= 2 for p in g["params"]) else 0.0) for g in groups)
    with pytest.raises(ConfigError, match="head_learning_rate"):
        ranker_param_groups(ranker, 1e-5, 0.0)
    with pytest.raises(ConfigError, match="head_learning_rate"):
        load_config(CrossEncoderConfig, None, ["head_learning_rate=-1"])


def test_training_lists_from_a_file_are_used_as_given(tiny_bert_dir, tiny_dataset, tmp_path):
    from distillir.errors import InputError

    given = tmp_path / "mined.jsonl"
    rows = [{"qid": "train0", "query": "volcano science", "positives": ["d0a"], "negatives": ["d1a", "d2b"]},
            {"qid": "train1", "query": "glacier science", "positives": ["d1a"], "negatives": []},
            {"qid": "train2", "query": "protein science", "positives": ["d2a"], "negatives": ["d0b"]}]
    given.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    sets = [f"model={tiny_bert_dir}", f"output_dir={out}", f"data.dataset={tiny_dataset}", "max_length=48",
            "list_size=3", "trainer.per_device_batch_size=2", "trainer.max_steps=1", f"negatives.lists={given}"]
    results = CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, sets))
    assert results["train_examples"] == 2  # train1 has no negative: left out
    written = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    assert written == [rows[0], rows[2]]

    rows[2]["negatives"] = ["nope"]
    given.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=r"mined.jsonl.*line 3.*negatives.*'nope'"):
        CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, [*sets[:1], f"output_dir={tmp_path / 'r2'}",
                                                                        *sets[2:]]))


def test_on_plateau_flags_a_loss_near_uniform_scores():
    import math

    from distillir.recipes.common.ranking import on_plateau

    assert on_plateau(2.0866, 8)  # ln 8 = 2.079: the shipped RocketQAv2 warm-up's end on SciFact
    assert on_plateau(0.96 * math.log(8), 8) and not on_plateau(0.94 * math.log(8), 8)
    assert not on_plateau(1.09, 8) and not on_plateau(None, 8)


def test_answer_positives_train_a_ranker_from_question_answer_pairs_alone(tiny_bert_dir, tmp_path, monkeypatch):
    """positives: answer -- distant supervision: the best-ranked BM25 passage holding an answer string is the
    positive, answer-bearing passages are never negatives; the split needs no gold ids or qrels."""
    from distillir.data.answers import has_answer
    from distillir.data.loaders import load_corpus, load_queries
    from distillir.data.toy import write_toy_qa
    from distillir.errors import InputError
    from distillir.retrievers.bm25 import BM25Retriever

    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    data = write_toy_qa(tmp_path / "qa")  # training questions with answers, no gold passage ids
    sets = [f"model={tiny_bert_dir}", f"data.dataset={data}", "max_length=48", "list_size=3", "negatives.mined=4",
            "trainer.per_device_batch_size=2", "trainer.max_steps=2"]
    with pytest.raises(InputError, match="no qrels and no gold passage ids"):
        CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, [*sets, f"output_dir={tmp_path / 'gold'}"]))
    out = tmp_path / "answer"
    results = CrossEncoderRecipe().run(load_config(CrossEncoderConfig, None, [*sets, f"output_dir={out}",
                                                                              "positives=answer"]))
    assert results["positives"] == "answer" and results["train"]["global_step"] == 2
    corpus, queries = load_corpus(data), load_queries(data / "train.jsonl")
    run = BM25Retriever.build(corpus).search(queries, top_k=100)
    text = dict(zip(corpus.ids, corpus.texts))
    answers = dict(zip(queries.ids, queries.answers))
    lists = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    assert lists
    for row in lists:
        first = next(p for p, _ in run[row["qid"]] if has_answer(answers[row["qid"]], text[p]))
        assert row["positives"] == [first]
        assert not any(has_answer(answers[row["qid"]], text[p]) for p in row["negatives"])
    with pytest.raises(Exception, match="exclude_answers"):
        load_config(CrossEncoderConfig, None, ["positives=answer", "negatives.exclude_answers=false"])


def test_with_tail_keeps_the_first_stage_after_the_reranked_head():
    """The re-ranked top k first, then the first stage's rest in its order, each scored below the head's lowest
    (floor - 1, floor - 2, ...), so deep metrics still count the tail."""
    from distillir.data.run import Run
    from distillir.recipes.common.ranking import with_tail

    first = Run({"q": [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)], "r": [("x", 1.0)]}, name="bm25")
    head = Run({"q": [("b", 0.5), ("a", 0.25)], "r": [("x", 3.0)]}, name="ranker")
    merged = with_tail(head, first, 2)
    assert merged["q"] == [("b", 0.5), ("a", 0.25), ("c", -0.75), ("d", -1.75)]
    assert merged["r"] == [("x", 3.0)]
    assert merged.name == "bm25.reranked"
