"""AR2: the retriever step's gradient flow, the iteration schedule end to end, the baseline, and resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import KillAt, state_dicts_equal

from distillir.data.toy import write_toy_beir
from distillir.errors import ConfigError
from distillir.recipes import get_recipe
from distillir.recipes.ar2 import AR2Config, AR2Recipe, RetrieverGroupLoss
from distillir.recipes.common.retrieval import frozen
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    return write_toy_beir(tmp_path / "tiny")


def tiny_config(bert_dir: str, data: Path, out: Path, *extra: str) -> AR2Config:
    return load_config(AR2Config, None, [
        f"retriever={bert_dir}", f"ranker={bert_dir}", f"output_dir={out}", f"data.dataset={data}", "seed=1",
        "query_max_length=16", "passage_max_length=24", "ranker_max_length=40", "normalize=true",
        "shared_encoder=true", "iterations=2", "ranker_steps=2", "retriever_steps=2", "group_size=3", "depth=6",
        "ranker_learning_rate=1e-3", "trainer.learning_rate=1e-3", "trainer.per_device_batch_size=4",
        "trainer.warmup_ratio=0", "trainer.save_steps=1", "trainer.log_steps=1", "ranker_warmup.steps=1",
        "ranker_warmup.learning_rate=1e-3", "trainer.max_grad_norm=null",
        "on_worse=continue",  # every iteration used: the schedule's mechanics (the guard's own test sets it)
        *extra,
    ])


def test_retriever_step_trains_the_retriever_only(tiny_bert_dir, tiny_corpus):
    from distillir.data.negatives import TrainingExample
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import CandidateListCollator
    from distillir.retrievers.dense.encoder import BiEncoder

    retriever = BiEncoder.from_pretrained(tiny_bert_dir, query_max_length=16, passage_max_length=24)
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=40)
    examples = [TrainingExample("q1", "capital of France", ["p1"], ["p2", "p3"]),
                TrainingExample("q2", "light energy in plants", ["p4"], ["p5", "p1"])]
    batch = CandidateListCollator(tiny_corpus, 3, retriever=retriever, ranker=ranker)(examples)
    for lambda_ in (0.5, 0.0):  # 0: pure distillation from the ranker
        loss = RetrieverGroupLoss("adversarial", temperature=1.0, ranker=ranker, lambda_=lambda_)
        ranker.train()
        with frozen(ranker):
            assert not ranker.training and not any(p.requires_grad for p in ranker.parameters())
            out = loss(retriever, batch)
            out["loss"].backward()
        assert ranker.training and all(p.requires_grad for p in ranker.parameters())  # restored
        assert all(p.grad is None for p in ranker.parameters())
        assert retriever.query_model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        retriever.zero_grad(set_to_none=True)
    contrastive = RetrieverGroupLoss("contrastive", temperature=1.0)(retriever, batch)
    assert contrastive.dim() == 0 and contrastive.item() > 0


def test_ar2_iterations_end_to_end_and_resume(tiny_bert_dir, tiny_dataset, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from distillir.data.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.retrievers.dense.encoder import BiEncoder

    out = tmp_path / "a"
    results = AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "ranker_steps=1",
                                          f"eval.dataset={tiny_dataset}", "eval.top_k=5", "eval.baseline=true",
                                          "eval.rerank_top_k=3"))
    assert (out / "ranker-warmup/final").is_dir() and results["ranker_warmup"]["global_step"] == 1
    # The warm-up clips at its own max_grad_norm whatever the trainer's (the Trainer logs a norm when it clips).
    assert "grad_norm" in json.loads((out / "ranker-warmup/log.jsonl").read_text().splitlines()[0])
    assert "grad_norm" not in json.loads((out / "iter-1/ranker/log.jsonl").read_text().splitlines()[0])
    for k in (1, 2):
        it = out / f"iter-{k}"
        lists = [json.loads(line) for line in (it / "train_lists.jsonl").read_text().splitlines()]
        candidates = Run.read(it / "candidates.trec")  # mined from this iteration's refreshed index
        assert len(lists) == 8 and all(len(r["negatives"]) >= 5 for r in lists)
        assert all(r["negatives"] == [p for p, _ in candidates[r["qid"]][:6] if p not in r["positives"]]
                   for r in lists)
        for phase, steps in (("ranker", 1), ("retriever", 2)):
            assert (it / phase / "final").is_dir() and (it / phase / f"checkpoints/step-{steps}").is_dir()
            log = [json.loads(x)["step"] for x in (it / phase / "log.jsonl").read_text().splitlines()]
            assert log == list(range(1, steps + 1))
        row = json.loads((it / "metrics.json").read_text())
        assert row["iteration"] == k and row["eval"]["retriever"]["queries"] == 8
        assert row["eval"]["reranked"]["rerank_top_k"] == 3 and row["ranker"]["global_step"] == 1
    log = json.loads((out / "iter-2/retriever/log.jsonl").read_text().splitlines()[0])
    assert {"loss", "ranker_ce"} <= set(log)
    report = json.loads((out / "metrics.json").read_text())
    assert report["baseline"]["queries"] == 8 and [r["iteration"] for r in report["iterations"]] == [1, 2]
    assert results["final_retriever"] == str(out / "iter-2/retriever/final")
    assert BiEncoder.from_pretrained(results["final_retriever"]).settings.passage_max_length == 24
    assert CrossEncoder.from_pretrained(results["final_ranker"]).max_length == 40
    assert results["metrics"] == report["iterations"][-1]["eval"]["retriever"]

    # The same run (evaluation aside), interrupted in the second iteration's retriever phase after a checkpoint,
    # refused without resume=true, then resumed: completed phases are skipped, the weights come out identical.
    killed = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, "ranker_steps=1"),
                        callbacks=[KillAt(2, "iter-2/retriever")])
    assert (killed / "iter-2/ranker/final").is_dir() and not (killed / "iter-2/retriever/final").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, "ranker_steps=1"))
    results = AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, "ranker_steps=1", "resume=true"))
    assert results["iterations"][1]["retriever"]["resumed_from"].endswith("step-1")
    assert results["iterations"][0]["retriever"]["resumed_from"] is None  # read back from iter-1's summary
    for sub, loader in (("iter-2/retriever/final", AutoModel),
                        ("iter-2/ranker/final", AutoModelForSequenceClassification)):
        assert state_dicts_equal(loader.from_pretrained(out / sub), loader.from_pretrained(killed / sub))


@pytest.mark.parametrize("on_worse", ["keep", "stop"])
def test_an_iteration_made_worse_on_purpose_is_rolled_back(tiny_bert_dir, tiny_dataset, tmp_path, monkeypatch,
                                                           on_worse):
    """The retriever's KL to the ranker on held-out lists is forced to rise: iteration 1 is not kept, so
    iteration 2 mines with the start retriever and trains it afresh ("keep"), or the run ends ("stop"); the
    result reports the start retriever and the baseline."""
    from distillir.recipes import ar2

    calls = []

    def rising(retriever, ranker, held, corpus, group_size, **kwargs):
        calls.append(len(held))
        return {"lists": len(held), "kl": 0.1 if len(calls) % 2 else 0.5, "top1": 1.0}

    monkeypatch.setattr(ar2, "ranker_agreement", rising)
    out = tmp_path / on_worse
    results = AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, f"on_worse={on_worse}",
                                          "agreement_holdout=0.25", f"eval.dataset={tiny_dataset}", "eval.top_k=5",
                                          "eval.baseline=true"))
    first = results["iterations"][0]
    assert first["held_out_lists"] == 2 and first["train_lists"] == 6 and calls[:2] == [2, 2]
    assert first["guard"]["worse"] and "held-out" in first["guard"]["reasons"][0]
    assert first["guard"]["kept"] == "previous"
    assert results["kept_iteration"] == 0 and results["final_retriever"] == tiny_bert_dir
    assert results["metrics"] == results["baseline_metrics"]
    if on_worse == "stop":
        assert len(results["iterations"]) == 1 and not (out / "iter-2").exists()
        return
    # Iteration 2 mined with the start retriever: the same candidates as iteration 1's.
    assert (out / "iter-2/candidates.trec").read_text().replace("iter-2", "iter-1") == (
        out / "iter-1/candidates.trec").read_text()
    assert json.loads((out / "iter-2/retriever/agreement_before.json").read_text())["lists"] == 2


def test_ranker_agreement_against_hand_computed_kl(tiny_bert_dir, tiny_corpus):
    """KL(softmax(R / tau_r) || softmax(S)) per group, computed by hand from the two models' group scores; the
    same seeded groups on every call, and the caller's random state untouched."""
    import random

    import torch

    from distillir.data.negatives import TrainingExample
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.guard import ranker_agreement
    from distillir.recipes.common.ranking import CandidateListCollator
    from distillir.recipes.common.retrieval import retriever_list_scores
    from distillir.retrievers.dense.encoder import BiEncoder

    retriever = BiEncoder.from_pretrained(tiny_bert_dir, query_max_length=16, passage_max_length=24)
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=40)
    examples = [TrainingExample("q1", "capital of France", ["p1"], ["p2", "p3", "p5"]),
                TrainingExample("q2", "light energy in plants", ["p4"], ["p5"])]  # one pad entry
    random.seed(123)
    state = random.getstate()
    found = ranker_agreement(retriever, ranker, examples, tiny_corpus, 3, temperature=0.5, ranker_temperature=2.0,
                             seed=7)
    assert random.getstate() == state
    assert ranker_agreement(retriever, ranker, examples, tiny_corpus, 3, temperature=0.5, ranker_temperature=2.0,
                            seed=7) == found
    random.seed(7)
    batch = CandidateListCollator(tiny_corpus, 3, retriever=retriever, ranker=ranker)(examples)
    retriever.eval()
    ranker.eval()
    with torch.no_grad():
        s = retriever_list_scores(retriever, batch, 0.5)
        r = ranker.list_scores(batch["pairs"], 3) / 2.0
    total = 0.0
    for i, n in enumerate(batch["mask"].sum(-1).tolist()):
        p, q = torch.softmax(r[i, :n], -1), torch.softmax(s[i, :n], -1)
        total += float((p * (p / q).log()).sum())
    assert found["lists"] == 2 and found["kl"] == pytest.approx(total / 2, rel=1e-5)


def test_contrastive_baseline_at_the_same_budget(tiny_bert_dir, tiny_dataset, tmp_path):
    out = tmp_path / "baseline"
    results = AR2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "retriever_loss=contrastive",
                                          "refresh=never", "retriever_steps=1"))
    assert results["final_ranker"] is None and results["lambda_"] is None
    assert not (out / "iter-1/ranker").exists() and (out / "iter-2/retriever/final").is_dir()
    assert not (out / "iter-2/candidates.trec").exists()  # refresh: never reuses iteration 1's lists
    assert (out / "iter-2/train_lists.jsonl").read_text() == (out / "iter-1/train_lists.jsonl").read_text()
    assert [r["retriever"]["global_step"] for r in results["iterations"]] == [1, 1]


def test_config_checks_and_shipped_configs():
    with pytest.raises(ConfigError, match="lambda_"):
        load_config(AR2Config, None, ["lambda_=1.5"])
    with pytest.raises(ConfigError, match="ranker_steps and retriever_steps"):
        load_config(AR2Config, None, ["trainer.max_steps=10"])
    assert load_config(AR2Config, None, ["lambda_=0"]).lambda_ == 0.0
    assert get_recipe("ar2") is AR2Recipe
    cpu = load_config(AR2Config, REPO / "configs" / "ar2-scifact-cpu.yaml")
    gpu = load_config(AR2Config, REPO / "configs" / "ar2-gpu.yaml")
    assert cpu.eval is not None and gpu.eval is not None
    assert (gpu.group_size, gpu.ranker_steps, gpu.retriever_steps, gpu.depth) == (16, 500, 1500, 100)
    assert (gpu.trainer.learning_rate, gpu.ranker_learning_rate, gpu.lambda_) == (1e-5, 1e-6, 0.5)
    with pytest.raises(ConfigError, match="on_worse"):
        load_config(AR2Config, None, ["on_worse=ignore"])
    with pytest.raises(ConfigError, match="agreement_holdout"):
        load_config(AR2Config, None, ["agreement_holdout=1"])
