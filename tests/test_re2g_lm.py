"""Re2G with a causal-LM generator (a tiny Llama built from a config): frozen, it trains only the re-ranker and
is saved as a pointer; with `train_layers` its last layer trains too; the pipeline baselines are read by the
same generator; a killed generation log resumes to the same answers."""

from __future__ import annotations

import json

import pytest
import torch
from test_re2g import tiny_config

from distillir.data.datasets import load_dataset
from distillir.data.toy import write_toy_qa
from distillir.evaluation.qa import evaluate_answers
from distillir.recipes.re2g import Re2GRecipe

pytestmark = pytest.mark.usefixtures("one_thread")


def lm_config(bert, lm, data, out, *extra):
    return tiny_config(bert, data, out, "generator.kind=causal-lm", f"generator.model={lm}",
                       "generator.lm.dtype=float32", "generator.answer_max_length=3", "eval.generator_baselines=true",
                       "eval.ranker_dtype=float32", *extra)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, tiny_bert_dir, tiny_lm_dir):
    base = tmp_path_factory.mktemp("re2g_lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        data = write_toy_qa(base / "qa")
        out = base / "run"
        yield base, data, out, Re2GRecipe().run(lm_config(tiny_bert_dir, tiny_lm_dir, data, out))


def test_frozen_lm_generator_trains_the_ranker_and_reads_every_pipeline(lm_run):
    _, data, out, results = lm_run
    metrics = results["metrics"]
    rows = [json.loads(x) for x in (out / "eval" / "generations.jsonl").read_text().splitlines()]
    queries = load_dataset(str(data), "dev").queries
    for system, key in (("reranked", "generator"), ("bm25", "generator_bm25"),
                        ("dense_start", "generator_dense_start"), ("reranked_start", "generator_reranked_start")):
        answers = {r["id"]: r["answer"] for r in rows if r["system"] == system}
        assert len(answers) == 4, system
        assert metrics[key] == evaluate_answers(answers, queries.subset(list(answers))), system
    assert "reranked_start" in metrics and "dense_trained" in metrics
    # Frozen: saved as the model it is (no weights copied), and the ranker learnt from its likelihood.
    saved = json.loads((out / "final" / "generator" / "generator.json").read_text())
    assert saved["trained"] is False and not (out / "final" / "generator" / "config.json").exists()
    from helpers import weights

    before, after = weights(out / "ranker" / "final"), weights(out / "final" / "ranker")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_killed_generation_resumes_to_the_same_answers(lm_run, tiny_bert_dir, tiny_lm_dir):
    base, data, out, results = lm_run
    log = out / "eval" / "generations.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[: len(lines) // 2]) + '\n{"system": "bm25", "id": ')  # killed mid-line
    (out / "stages" / "eval.json").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        again = Re2GRecipe().run(lm_config(tiny_bert_dir, tiny_lm_dir, data, out, "resume=true"))
    assert again["metrics"] == results["metrics"]
    now = [json.loads(x) for x in log.read_text().splitlines()]  # the torn line is gone, every line parses
    assert len(now) == len(lines)  # only the missing answers were generated again
    assert now == [json.loads(x) for x in lines] or sorted(map(str, now)) == sorted(map(str, map(json.loads, lines)))


def test_last_layers_of_the_lm_train_end_to_end(lm_run, tiny_bert_dir, tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    base, data, _, _ = lm_run
    out = tmp_path / "trained"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        results = Re2GRecipe().run(lm_config(tiny_bert_dir, tiny_lm_dir, data, out, "generator.lm.train_layers=1",
                                             "eval.generator_baselines=false"))
    start = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out / "final" / "generator").state_dict()
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed)
    assert results["metrics"]["generator"]["queries"] == 4
