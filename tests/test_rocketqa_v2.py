"""RocketQAv2: gradient flow in the dynamic and static variants, the recipe end to end, and resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import KillAt, state_dicts_equal

from distillir.data.toy import write_toy_beir
from distillir.errors import ConfigError
from distillir.recipes import get_recipe
from distillir.recipes.common.retrieval import RetrieverRanker
from distillir.recipes.rocketqa_v2 import JointLoss, RocketQAv2Config, RocketQAv2Recipe
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    return write_toy_beir(tmp_path / "tiny")


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in module.state_dict().items())


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_gradients_reach_the_ranker_only_when_dynamic(mode, tiny_bert_dir, tiny_corpus, tmp_path):
    from distillir.data.negatives import TrainingExample
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import CandidateListCollator
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.training.arguments import TrainingArguments
    from distillir.training.trainer import Trainer

    torch.manual_seed(0)
    retriever = BiEncoder.from_pretrained(tiny_bert_dir, shared=False, query_max_length=16, passage_max_length=24)
    ranker = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=40)
    model = RetrieverRanker(retriever, ranker, ranker_frozen=mode == "static")
    examples = [TrainingExample("q1", "capital of France", ["p1"], ["p2", "p3"]),
                TrainingExample("q2", "light energy in plants", ["p4"], ["p5", "p1"])]
    collate = CandidateListCollator(tiny_corpus, 3, retriever=retriever, ranker=ranker)
    loss_fn = JointLoss(temperature=1.0)

    # One backward: the KL reaches both towers of the retriever, and the ranker only when dynamic.
    model.train()
    assert ranker.training == (mode == "dynamic")  # a frozen ranker stays in eval mode (no dropout)
    out = loss_fn(model, collate(examples))
    out["loss"].backward()
    assert set(out) == {"loss", "sup", "kl"}
    for tower in (retriever.query_model, retriever.passage_model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    ranker_grads = [p.grad for p in ranker.parameters()]
    if mode == "dynamic":
        assert all(p.requires_grad for p in ranker.parameters())
        assert ranker.model.classifier.weight.grad.abs().sum() > 0
        assert out["loss"].item() == pytest.approx(out["sup"].item() + out["kl"].item(), rel=1e-5)
    else:
        assert all(g is None for g in ranker_grads) and not any(p.requires_grad for p in ranker.parameters())
        assert out["loss"].item() == pytest.approx(out["kl"].item())
    model.zero_grad(set_to_none=True)

    # One optimizer step through the shared Trainer with per-model learning rates.
    before_retriever, before_ranker = snapshot(retriever), snapshot(ranker)
    args = TrainingArguments(output_dir=tmp_path / mode, max_steps=1, per_device_batch_size=2, save_steps=0,
                             learning_rate=1e-3, mixed_precision="no")
    groups = [{"params": retriever, "lr": 1e-3}] + ([{"params": ranker, "lr": 1e-3}] if mode == "dynamic" else [])
    Trainer(model, args, examples, collate, loss_fn=loss_fn, param_groups=groups).train()
    assert changed(retriever, before_retriever)
    assert changed(ranker, before_ranker) == (mode == "dynamic")


def tiny_config(bert_dir: str, data: Path, out: Path, *extra: str) -> RocketQAv2Config:
    return load_config(RocketQAv2Config, None, [
        f"retriever={bert_dir}", f"ranker={bert_dir}", f"output_dir={out}", f"data.dataset={data}", "seed=1",
        "query_max_length=16", "passage_max_length=24", "ranker_max_length=40", "normalize=true",
        "shared_encoder=true",
        "lists.candidates=dense", "lists.depth=6", "lists.mined=4", "lists.list_size=3",
        "denoise.depth=4", "denoise.pos_threshold=1.0", "denoise.neg_threshold=1.0",  # every candidate a negative
        "ranker_warmup.steps=2", "ranker_warmup.learning_rate=1e-3",
        "trainer.per_device_batch_size=4", "trainer.max_steps=3", "trainer.learning_rate=1e-3",
        "trainer.warmup_ratio=0", "trainer.save_steps=1", "trainer.log_steps=1", "trainer.max_grad_norm=null", *extra,
    ])


def read_lists(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rocketqa_v2_recipe_end_to_end_and_resume(tiny_bert_dir, tiny_dataset, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    from distillir.data.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.retrievers.dense.encoder import BiEncoder

    out = tmp_path / "a"
    config = tiny_config(tiny_bert_dir, tiny_dataset, out, "trainer.max_steps=2",
                         f"eval.dataset={tiny_dataset}", "eval.top_k=5", "eval.baseline=true", "eval.rerank_top_k=3")
    results = RocketQAv2Recipe().run(config)

    # Hybrid lists: an undenoised and a denoised list for each of the 8 training claims, both on disk.
    undenoised, denoised = read_lists(out / "lists/undenoised.jsonl"), read_lists(out / "lists/denoised.jsonl")
    assert len(undenoised) == len(denoised) == 8 and results["train_examples"]["used"] == 16
    assert all(len(r["negatives"]) == 4 and not set(r["positives"]) & set(r["negatives"]) for r in undenoised)
    # The denoised lists follow the thresholds: with both at 1.0 every non-positive candidate of the re-ranker's
    # top-4 is a negative, in the retriever's order.
    candidates = Run.read(out / "candidates.trec")
    scores = Run.read(out / "lists/denoise_scores.trec")
    for row in denoised:
        top = [pid for pid, _ in candidates[row["qid"]][:4]]
        assert row["negatives"] == [pid for pid in top if pid not in row["positives"]]
        assert set(dict(scores[row["qid"]])) == set(top)
    stats = json.loads((out / "lists/denoise.json").read_text())
    assert stats["extra_positives"] == 0 and stats["negatives"] == sum(len(r["negatives"]) for r in denoised)

    assert (out / "ranker-warmup/final").is_dir() and results["ranker_warmup"]["global_step"] == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    # The warm-up clips (its own max_grad_norm, 1.0), the joint phase does not (trainer.max_grad_norm null):
    # the Trainer logs a gradient norm only when it clips.
    warmup_log = [json.loads(line) for line in (out / "ranker-warmup/log.jsonl").read_text().splitlines()]
    assert warmup_log and all("grad_norm" in row for row in warmup_log)
    assert not any("grad_norm" in json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
    assert {"sup", "kl"} <= set(json.loads((out / "log.jsonl").read_text().splitlines()[0]))
    retriever = BiEncoder.from_pretrained(out / "final/retriever")
    assert retriever.shared and retriever.settings.query_max_length == 16
    assert CrossEncoder.from_pretrained(out / "final/ranker").max_length == 40
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trained"]["queries"] == metrics["baseline"]["queries"] == 8
    assert metrics["reranked"]["rerank_top_k"] == 3 and results["metrics"] == metrics["trained"]

    # The same run (evaluation aside) interrupted during the ranker warm-up, refused without resume=true,
    # resumed and interrupted again during joint training, then resumed to the end: identical weights.
    killed = tmp_path / "b"
    same = ("trainer.max_steps=2",)
    with pytest.raises(KeyboardInterrupt):
        RocketQAv2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, *same),
                               callbacks=[KillAt(2, "ranker-warmup")])
    with pytest.raises(ConfigError, match="already holds a run"):
        RocketQAv2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, *same))
    with pytest.raises(KeyboardInterrupt):
        RocketQAv2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, *same, "resume=true"),
                               callbacks=[KillAt(2, "b")])
    results = RocketQAv2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, *same, "resume=true"))
    assert results["train"]["resumed_from"].endswith("step-1") and results["ranker_warmup"]["global_step"] == 2
    for sub, loader in (("retriever", AutoModel), ("ranker", AutoModelForSequenceClassification)):
        assert state_dicts_equal(loader.from_pretrained(out / "final" / sub),
                                 loader.from_pretrained(killed / "final" / sub)), sub


def test_static_variant_keeps_the_given_ranker(tiny_bert_dir, tiny_dataset, tmp_path):
    out = tmp_path / "static"
    results = RocketQAv2Recipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "mode=static",
                                                 "lists.augmentation=denoised", "trainer.max_steps=1",
                                                 "ranker_warmup.steps=0", "denoise.scale=relative"))
    assert results["mode"] == "static" and results["train_examples"]["used"] == 8
    # Relative to each claim's positive, sigmoid(logit - positive's logit) < 1: every candidate is a negative.
    assert results["denoise"]["negatives"] == results["denoise"]["scored"] and results["denoise"]["scale"] == "relative"
    assert not (out / "final/ranker").exists() and results["final_ranker"] == tiny_bert_dir
    assert not (out / "ranker-warmup").exists() and results["ranker_warmup"] is None
    assert (out / "final/retriever").is_dir()


@pytest.mark.parametrize("name", ["rocketqa-v2-scifact-cpu.yaml", "rocketqa-v2-gpu.yaml"])
def test_shipped_configs_load(name):
    config = load_config(RocketQAv2Config, REPO / "configs" / name)
    assert get_recipe("rocketqa-v2") is RocketQAv2Recipe and config.eval is not None
    if "gpu" in name:  # the paper's settings
        assert config.lists.list_size == 32 and config.trainer.learning_rate == 1e-5
        assert (config.query_max_length, config.passage_max_length) == (32, 128)
        assert (config.denoise.pos_threshold, config.denoise.neg_threshold) == (0.9, 0.1)


def test_ranker_warmup_clipping_must_be_positive():
    assert load_config(RocketQAv2Config, None, ["ranker_warmup.max_grad_norm=null"]).ranker_warmup.max_grad_norm is None
    with pytest.raises(ConfigError, match="max_grad_norm"):
        load_config(RocketQAv2Config, None, ["ranker_warmup.max_grad_norm=0"])
