"""The supervised DPR recipe end to end on a handmade BEIR-layout dataset with the tiny BERT; the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import KillAt

from distillir.data.toy import write_toy_beir
from distillir.errors import ConfigError
from distillir.recipes import RECIPES, get_recipe
from distillir.recipes.dpr import DPRConfig, DPRRecipe
from distillir.training.checkpoint import list_checkpoints
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    """8 topics x 2 passages; one train and one test claim per topic, relevant to the topic's first passage."""
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))  # BM25 and embedding caches stay here
    return write_toy_beir(tmp_path / "tiny")


def tiny_config(bert_dir: str, data: Path, out: Path, *extra: str) -> DPRConfig:
    return load_config(DPRConfig, None, [
        f"model={bert_dir}", f"output_dir={out}", f"data.dataset={data}", "seed=1",
        "query_max_length=16", "passage_max_length=32", "negatives.mined=2", "negatives.per_query=1",
        "trainer.per_device_batch_size=4", "trainer.max_steps=4", "trainer.learning_rate=1e-3",
        "trainer.save_steps=2", "trainer.log_steps=1", "trainer.warmup_steps=0", "normalize=true", *extra,
    ])


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return AutoModel.from_pretrained(out / "final").state_dict()


def train_set_loss(encoder, out: Path) -> float:
    from distillir.losses.contrastive import ContrastiveLoss

    lists = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    corpus = {json.loads(line)["_id"]: json.loads(line) for line in (out.parent / "tiny" / "corpus.jsonl").open()}
    pids = [r["positives"][0] for r in lists] + [pid for r in lists for pid in r["negatives"]]
    with torch.no_grad():
        q = encoder.encode_query(encoder.tokenize_queries([r["query"] for r in lists]))
        p = encoder.encode_passage(encoder.tokenize_passages([corpus[i]["title"] for i in pids],
                                                             [corpus[i]["text"] for i in pids]))
        return ContrastiveLoss(encoder.similarity, temperature=0.05)(q, p[: len(q)], p[len(q):]).item()


def test_dpr_recipe_trains_saves_and_evaluates(tiny_bert_dir, tiny_dataset, tmp_path):
    from distillir.retrievers.dense.encoder import BiEncoder

    out = tmp_path / "run"
    config = tiny_config(tiny_bert_dir, tiny_dataset, out, f"eval.dataset={tiny_dataset}", "eval.split=test",
                         "eval.baseline=true", "eval.top_k=5")
    results = DPRRecipe().run(config)

    assert results["train"]["global_step"] == 4 and results["train_examples"] == 8
    lists = [json.loads(line) for line in (out / "train_lists.jsonl").read_text().splitlines()]
    assert len(lists) == 8 and all(len(r["negatives"]) == 2 for r in lists)
    assert all(not set(r["positives"]) & set(r["negatives"]) for r in lists)
    assert (out / "config.yaml").is_file() and load_config(DPRConfig, out / "config.yaml") == config

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]

    # final/ loads as a BiEncoder with the trained settings, and as a plain HF model; and it learnt:
    # the loss over the whole training set (every positive against every passage of the lists) fell.
    trained = BiEncoder.from_pretrained(out / "final")
    assert trained.settings.passage_max_length == 32 and trained.settings.normalize
    initial = BiEncoder.from_pretrained(tiny_bert_dir, normalize=True, query_max_length=16, passage_max_length=32)
    assert train_set_loss(trained, out) < train_set_loss(initial, out)
    assert final_weights(out).keys() == BiEncoder.from_pretrained(tiny_bert_dir).query_model.state_dict().keys()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trained"]["queries"] == 8 and metrics["baseline"]["queries"] == 8
    assert results["metrics"] == metrics["trained"]
    assert json.loads((out / "results.json").read_text())["final_model"] == str(out / "final")


def test_dpr_recipe_resumes_to_the_same_weights(tiny_bert_dir, tiny_dataset, tmp_path):
    DPRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, tmp_path / "a"))

    killed = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        DPRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed), callbacks=[KillAt(3)])
    assert [s for s, _ in list_checkpoints(killed)] == [2]
    with pytest.raises(ConfigError, match="already holds a run"):
        DPRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed))
    results = DPRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, killed, "resume=true"))
    assert results["train"]["resumed_from"].endswith("step-2")

    a, b = final_weights(tmp_path / "a"), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["dpr-scifact-cpu.yaml", "dpr-squad-cpu.yaml"])
def test_shipped_configs_load(name):
    config = load_config(DPRConfig, REPO / "configs" / name)
    assert config.eval is not None and config.trainer.per_device_batch_size >= 8


def test_registry():
    assert get_recipe("dpr") is DPRRecipe and "dpr" in RECIPES
    assert get_recipe("distillir.recipes.dpr:DPRRecipe") is DPRRecipe
    with pytest.raises(ConfigError, match=r"unknown recipe 'dpx'; did you mean 'dpr'\? Known recipes: .*dpr"):
        get_recipe("dpx")
    with pytest.raises(ConfigError, match="has no class"):
        get_recipe("distillir.recipes.dpr:Nope")
