"""Re2G: the marginalising generator against hand-computed cases, candidate selection, and the recipe end to
end (tiny random models): stages, what trains, frozen index, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import KillAt, same_weights, weights

from distillir.data.datasets import load_dataset
from distillir.data.run import Run
from distillir.data.toy import write_toy_qa
from distillir.errors import ConfigError
from distillir.evaluation import evaluate_run
from distillir.evaluation.qa import evaluate_answers
from distillir.readers.fid import FiDReader
from distillir.readers.rag import marginal_generate, marginal_log_likelihood, top_passages
from distillir.recipes import RECIPES, get_recipe
from distillir.recipes.re2g import Re2GConfig, Re2GRecipe
from distillir.teachers.likelihood import answer_log_likelihood
from distillir.training.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast


@pytest.fixture(scope="module")
def reader(tiny_bert_dir):
    torch.manual_seed(0)
    r = FiDReader.from_encoder(tiny_bert_dir, n_passages=2, passage_max_length=24, answer_max_length=6)
    return r.eval()


def batch_of(reader, ctxs):
    return reader.collator(2, labels=True)([{"id": "q", "question": "who led the survey", "answers": ["Alvarez"],
                                             "ctxs": ctxs}])


def test_marginal_likelihood_reduces_to_one_passage_and_mixes_sequences(reader):
    a = {"id": "a", "title": "Volcano", "text": "The survey was led by Alvarez."}
    b = {"id": "b", "title": "Comet", "text": "Comets are beautiful."}
    batch = batch_of(reader, [a, b])
    with torch.no_grad():
        per_passage = answer_log_likelihood(reader, batch, normalize="sum")[0]  # log p(y | q, p_k), k = a, b
        one_hot = torch.tensor([[0.0, -math.inf]])
        for style in ("token", "sequence"):
            got = marginal_log_likelihood(reader, batch, one_hot, style)
            torch.testing.assert_close(got[0], per_passage[0], rtol=1e-5, atol=1e-5)
        w = torch.tensor([0.3, 0.7])
        sequence = marginal_log_likelihood(reader, batch, w.log()[None], "sequence")[0]
        torch.testing.assert_close(sequence, torch.logsumexp(w.log() + per_passage, 0), rtol=1e-5, atol=1e-5)
        # The same passage twice: mixing per token or per sequence gives that passage's likelihood.
        same = batch_of(reader, [a, a])
        for style in ("token", "sequence"):
            got = marginal_log_likelihood(reader, same, w.log()[None], style)[0]
            torch.testing.assert_close(got, per_passage[0], rtol=1e-5, atol=1e-5)


def test_gradient_reaches_the_weights_and_absent_passages_get_none(reader):
    a = {"id": "a", "title": "Volcano", "text": "The survey was led by Alvarez."}
    batch = reader.collator(2, labels=True)([{"id": "q", "question": "who", "answers": ["Alvarez"], "ctxs": [a]}])
    scores = torch.tensor([[1.0, 2.0]], requires_grad=True)
    ll = marginal_log_likelihood(reader, batch, torch.log_softmax(scores, -1), "token")
    ll.sum().backward()
    # Passage 2 is absent (question-only filler): all weight moves to passage 1, whatever the scores.
    assert torch.isfinite(ll).all() and torch.allclose(scores.grad, torch.zeros_like(scores), atol=1e-6)
    b = {"id": "b", "title": "Comet", "text": "Comets are beautiful."}
    scores = torch.tensor([[1.0, 2.0]], requires_grad=True)
    marginal_log_likelihood(reader, batch_of(reader, [a, b]), torch.log_softmax(scores, -1), "token").sum().backward()
    assert scores.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="style"):
        marginal_log_likelihood(reader, batch, torch.zeros(1, 2), "nope")


def test_marginal_generate_with_one_hot_weights_matches_reading_that_passage(reader):
    a = {"id": "a", "title": "Volcano", "text": "The survey was led by Alvarez."}
    b = {"id": "b", "title": "Comet", "text": "Comets are beautiful."}
    mixed = reader.collator(2, labels=False)([{"id": "q", "question": "who led it", "ctxs": [a, b]}])
    alone = reader.collator(2, labels=False)([{"id": "q", "question": "who led it", "ctxs": [a]}])
    got = marginal_generate(reader, mixed, torch.tensor([[0.0, -math.inf]]), max_new_tokens=4)
    want = marginal_generate(reader, alone, torch.tensor([[0.0, 0.0]]), max_new_tokens=4)
    assert got == want and isinstance(got[0], str)


def test_top_passages_picks_the_best_real_ones_and_weights_them():
    scores = torch.tensor([[0.0, 3.0, 1.0, 9.0], [2.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    top, log_w, present = top_passages(scores, mask, 2)
    assert top[0].tolist() == [1, 2] and top[1, 0].item() == 0
    assert present.tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(log_w[0].exp(), torch.softmax(torch.tensor([3.0, 1.0]), 0))
    assert log_w[1, 0].item() == 0.0 and log_w[1, 1].item() == -math.inf


# ------------------------------------------------------------------------------------------- recipe


def tiny_config(bert: str, data: Path, out: Path, *extra: str) -> Re2GConfig:
    return load_config(Re2GConfig, None, [
        f"output_dir={out}", f"dataset={data}", "seed=3", "max_train_queries=null",
        "retrieval.bm25_depth=3", "retrieval.dense_depth=3", f"retrieval.query_encoder={bert}",
        "retrieval.query_max_length=16", "retrieval.passage_max_length=32", "retrieval.batch_size=16",
        f"ranker.model={bert}", "ranker.max_length=48", "ranker.query_max_length=16", "ranker.steps=2",
        "ranker.list_size=3", "ranker.trainer={per_device_batch_size: 2, learning_rate: 1.0e-3, save_steps: 1}",
        "generator.init=encoder-decoder", f"generator.model={bert}", "generator.passage_max_length=32",
        "generator.answer_max_length=4",
        "e2e.n_generate=2",
        "e2e.trainer={per_device_batch_size: 2, max_steps: 3, learning_rate: 1.0e-3, save_steps: 1, log_steps: 1}",
        "eval.split=dev", "eval.max_queries=null", "eval.top_k=5", "eval.batch_size=2",
        *extra,
    ])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir):
    base = tmp_path_factory.mktemp("re2g")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        data = write_toy_qa(base / "qa")
        out = base / "run"
        results = Re2GRecipe().run(tiny_config(tiny_bert_dir, data, out))
        yield base, data, out, results


def test_recipe_end_to_end(run, tiny_bert_dir):
    from distillir.retrievers.dense.encoder import BiEncoder

    _, _, out, results = run
    assert "re2g" in RECIPES and get_recipe("re2g") is Re2GRecipe
    assert [s for s in results["stages"]] == ["candidates", "ranker", "e2e", "eval"]
    metrics = results["metrics"]
    # Each reported figure is the evaluation of the run file the recipe wrote beside it.
    data = load_dataset(str(run[1]), "dev")
    for name, file in (("bm25", "candidates/eval_bm25.trec"), ("dense_start", "candidates/eval_dense_start.trec"),
                       ("reranked", "eval/reranked.trec")):
        want = evaluate_run(Run.read_trec(out / file), qrels=data.qrels, queries=data.queries, corpus=data.corpus)
        assert metrics[name] == want, name
    predictions = json.loads((out / "eval" / "predictions.json").read_text())
    assert metrics["generator"] == evaluate_answers(predictions, data.queries.subset(list(predictions)))
    assert metrics["generator"]["queries"] == 4
    # Training lists: the 8 train questions, each with the union of BM25's and the dense top 3.
    lines = (out / "candidates" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 8 and all(3 <= len(json.loads(x)["ctxs"]) <= 6 for x in lines)

    # The query tower learnt from the re-ranker; the passage tower (the index) did not move.
    start = BiEncoder.from_pretrained(tiny_bert_dir)
    trained = BiEncoder.from_pretrained(out / "final" / "query_encoder")
    assert trained.weights_fingerprint(["passage"]) == start.weights_fingerprint(["passage"])
    assert trained.weights_fingerprint(["query"]) != start.weights_fingerprint(["query"])
    # The generator's loss trained the re-ranker past its listwise-CE phase.
    before, after = weights(out / "ranker" / "final"), weights(out / "final" / "ranker")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_skips_finished_stages(run, tiny_bert_dir):
    _, data, out, results = run
    again = Re2GRecipe().run(tiny_config(tiny_bert_dir, data, out, "resume=true"))
    assert all(stage["skipped"] for stage in again["stages"].values())
    assert again["metrics"] == results["metrics"]
    with pytest.raises(ConfigError, match="already holds"):
        Re2GRecipe().run(tiny_config(tiny_bert_dir, data, out))


def test_interrupted_end_to_end_stage_resumes_to_the_same_weights(run, tiny_bert_dir, tmp_path):
    """Killed in the middle of end-to-end training (after its checkpoint at step 2 of 3), then resumed: the
    finished stages are skipped and the three trained models equal those of the uninterrupted run."""
    base, data, reference, results = run
    out = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        with pytest.raises(KeyboardInterrupt):
            Re2GRecipe().run(tiny_config(tiny_bert_dir, data, out), callbacks=[KillAt(2, "e2e")])
        assert not (out / "stages" / "e2e.json").exists() and (out / "stages" / "ranker.json").is_file()
        again = Re2GRecipe().run(tiny_config(tiny_bert_dir, data, out, "resume=true"))
    assert again["stages"]["ranker"]["skipped"] and not again["stages"]["e2e"]["skipped"]
    for part in ("query_encoder/query", "ranker", "generator"):
        assert same_weights(out / "final" / part, reference / "final" / part), part
    assert again["metrics"] == results["metrics"]


def test_frozen_query_encoder_and_pretrained_ranker(run, tiny_bert_dir, tmp_path):
    from distillir.retrievers.dense.encoder import BiEncoder

    base, data, out, _ = run
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILLIR_CACHE", str(base / "cache"))
        results = Re2GRecipe().run(tiny_config(
            tiny_bert_dir, data, tmp_path / "frozen", "e2e.query_encoder=frozen", "ranker.steps=0",
            f"ranker.model={out / 'final' / 'ranker'}", "eval=null"))
    assert results["stages"]["ranker"]["trained"] is False and results["metrics"] is None
    start = BiEncoder.from_pretrained(tiny_bert_dir)
    trained = BiEncoder.from_pretrained(tmp_path / "frozen" / "final" / "query_encoder")
    assert trained.weights_fingerprint(["query"]) == start.weights_fingerprint(["query"])


def test_config_checks():
    with pytest.raises(ConfigError):
        load_config(Re2GConfig, None, ["retrieval.bm25_depth=1", "retrieval.dense_depth=0"])
    with pytest.raises(ConfigError):
        load_config(Re2GConfig, None, ["e2e.n_generate=0"])
    for name in ("re2g-squad-cpu.yaml", "re2g-gpu.yaml"):
        load_config(Re2GConfig, Path(__file__).resolve().parents[1] / "configs" / name, [])


def test_rag_token_and_sequence_marginals_by_hand(reader):
    """Distinct passages, non-uniform weights: each passage's per-token log-probs from reading it alone, then
    RAG-sequence log sum_k w_k prod_t p_k,t and RAG-token sum_t log sum_k w_k p_k,t computed with `math`."""
    from distillir.models.seq2seq import token_log_likelihood

    passages = [{"id": "a", "title": "Volcano", "text": "The survey was led by Alvarez."},
                {"id": "b", "title": "Comet", "text": "Comets are beautiful."},
                {"id": "c", "title": "Glacier", "text": "Bertrand led the glacier survey in 1902."}]
    weights = [0.5, 0.2, 0.3]
    torch.manual_seed(0)  # a small random T5 reads its passages: their likelihoods differ clearly
    reader = FiDReader.from_config(reader.tokenizer, d_model=32, d_ff=64, d_kv=16, num_layers=1, num_heads=2,
                                   settings={"passage_max_length": 24, "answer_max_length": 6}).eval()
    for param in reader.model.parameters():
        param.data.mul_(4.0)
    reader3 = FiDReader(reader.model, reader.tokenizer, n_passages=3, passage_max_length=24, answer_max_length=6)
    batch = reader3.collator(3, labels=True)([{"id": "q", "question": "who led the survey", "answers": ["Alvarez"],
                                                "ctxs": passages}])
    with torch.no_grad():
        per_token = []
        for p in passages:
            alone = reader.collator(1, labels=True)([{"id": "q", "question": "who led the survey",
                                                       "answers": ["Alvarez"], "ctxs": [p]}])
            logits = reader(**alone.model_inputs()).logits
            values = token_log_likelihood(logits, alone.labels)[0]
            per_token.append([v for v, keep in zip(values.tolist(), (alone.labels[0] != -100).tolist()) if keep])
        log_w = torch.tensor(weights).log()[None]
        sequence = marginal_log_likelihood(reader3, batch, log_w, "sequence")[0].item()
        token = marginal_log_likelihood(reader3, batch, log_w, "token")[0].item()
    want_sequence = math.log(sum(w * math.exp(sum(lp)) for w, lp in zip(weights, per_token)))
    want_token = sum(math.log(sum(w * math.exp(lp[t]) for w, lp in zip(weights, per_token)))
                     for t in range(len(per_token[0])))
    assert sequence == pytest.approx(want_sequence, abs=1e-4)
    assert token == pytest.approx(want_token, abs=1e-4)
    assert abs(token - sequence) > 0.1  # distinct passages: mixing per token and per sequence differ
