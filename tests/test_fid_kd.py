"""The FiD-KD recipe on a handmade squad-open-layout dataset with the tiny BERT as reader and retriever:
two rounds end to end, exact resume of an interrupted round, and distillation from a fixed score file
raising the retriever's agreement with the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import KillAt, fid_kd_config, weights

from distillir.data.toy import FACTS
from distillir.errors import ConfigError
from distillir.recipes import RECIPES, get_recipe
from distillir.recipes.common.distill import (
    ListCollator,
    build_student,
    list_examples,
    student_list_scores,
    teacher_agreement,
)
from distillir.recipes.fid_kd import STAGES, FiDKDConfig, FiDKDRecipe
from distillir.training.checkpoint import list_checkpoints
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast


@pytest.fixture(scope="module")
def reference(fidkd_env, tiny_bert_dir):
    base, data = fidkd_env
    out = base / "reference"
    stages: list[tuple[int, str, bool]] = []
    results = FiDKDRecipe(on_stage=lambda k, s, info: stages.append((k, s, info["skipped"]))).run(
        fid_kd_config(tiny_bert_dir, data, out))
    return out, results, stages


def test_two_rounds_end_to_end(reference, fidkd_env):
    from distillir.readers.fid import FiDReader
    from distillir.readers.fid_data import load_fid_examples
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.retriever import DenseRetriever
    from distillir.teachers import read_teacher_scores

    out, results, stages = reference
    _, data = fidkd_env
    assert stages == [(k, s, False) for k in (1, 2) for s in STAGES]
    assert results["complete"] and len(results["rounds"]) == 2
    assert results["train_questions"] == 8 and results["eval_questions"] == 4
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    from distillir.data.loaders import load_corpus

    corpus = load_corpus(data)
    for k in (1, 2):
        rd = out / f"round-{k}"
        assert {p.stem for p in (rd / "stages").glob("*.json")} == set(STAGES)
        examples = load_fid_examples(rd / "retrieve" / "train.jsonl")
        assert len(examples) == 8 and all(len(ex["ctxs"]) == 4 for ex in examples)
        assert (rd / "retrieve" / "train.trec").is_file() and (rd / "retrieve" / "eval.trec").is_file()
        scores = read_teacher_scores(rd / "teacher" / "scores.jsonl", corpus=corpus)
        assert scores.teacher == "fid-attention:fid" and len(scores) == 8
        assert all(pids == [c["id"] for c in ex["ctxs"]] for ex, (pids, _) in zip(examples, scores.values()))
        assert FiDReader.from_pretrained(rd / "reader" / "final").n_passages == 4
        assert BiEncoder.from_pretrained(rd / "retriever" / "final").settings.scale == 20.0
        DenseRetriever.load(rd / "index", corpus=corpus)  # the re-embedded corpus, with its encoder
        predictions = json.loads((rd / "reader" / "predictions.json").read_text())
        assert set(predictions) == {"d2", "d3", "d4", "d5"}
        metrics = json.loads((rd / "metrics.json").read_text())
        assert metrics == json.loads(json.dumps(results["rounds"][k - 1]))
        assert set(metrics["wall_s"]) == {*STAGES, "round"}
        assert {"Top-1", "Top-5", "MRR@10", "R@5"} <= set(metrics["index"]["metrics"])
        assert metrics["index"]["diagnostics"]["queries"] == 4  # the collapse check ran on the dev run
        assert {"EM", "F1"} <= set(metrics["reader_eval"]["metrics"])
        # The default guard holds out ceil(10%) of the 8 lists: agreement is measured on that one.
        assert metrics["retriever"]["agreement_before"]["lists"] == 1 and metrics["retriever"]["lists"] == 7
        assert metrics["reader"]["train"]["global_step"] == 2 and metrics["retriever"]["train"]["global_step"] == 4
    # round 1 starts from BM25; round 2 retrieves with round 1's distilled retriever and continues its reader
    assert results["rounds"][0]["retrieve"]["retriever"] == "bm25"
    assert results["rounds"][1]["retrieve"]["retriever"] == "round-1 retriever"
    assert results["rounds"][1]["retrieve"]["metrics"] == results["rounds"][0]["index"]["metrics"]
    assert results["rounds"][1]["reader"]["warm_start"].endswith("round-1/reader/final")
    assert results["metrics"] == results["rounds"][1]["index"]["metrics"]


def test_interrupted_round_resumes_to_the_same_outputs(reference, fidkd_env, tiny_bert_dir):
    base, data = fidkd_env
    ref_out, ref_results, _ = reference
    out = base / "killed"
    with pytest.raises(KeyboardInterrupt):  # killed in round 2's reader training, after its step-1 checkpoint
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out), callbacks=[KillAt(2, "round-2/reader")])
    assert [s for s, _ in list_checkpoints(out / "round-2" / "reader")] == [1]
    assert not (out / "round-2" / "stages" / "reader.json").exists()
    with pytest.raises(ConfigError, match="already holds a run"):
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out))

    stages: list[tuple[int, str, bool]] = []
    hook = FiDKDRecipe(on_stage=lambda k, s, info: stages.append((k, s, info["skipped"])))
    with pytest.raises(KeyboardInterrupt):  # resumed, then killed again in round 2's retriever training
        hook.run(fid_kd_config(tiny_bert_dir, data, out, "resume=true"), callbacks=[KillAt(3, "round-2/retriever")])
    assert stages == [(1, s, True) for s in STAGES] + [(2, "retrieve", True), (2, "reader", False),
                                                       (2, "reader_eval", False), (2, "teacher", False)]
    assert json.loads((out / "round-2" / "stages" / "reader.json").read_text())["train"]["resumed_from"].endswith(
        "step-1")
    assert [s for s, _ in list_checkpoints(out / "round-2" / "retriever")] == [2]

    stages.clear()
    results = hook.run(fid_kd_config(tiny_bert_dir, data, out, "resume=true"))
    assert stages == [(k, s, not (k == 2 and s in ("retriever", "index"))) for k in (1, 2) for s in STAGES]
    assert results["rounds"][1]["retriever"]["train"]["resumed_from"].endswith("step-2")

    for k in (1, 2):
        for model in ("retriever/final", "reader/final"):
            a, b = weights(ref_out / f"round-{k}" / model), weights(out / f"round-{k}" / model)
            assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), (k, model)
        for name in ("teacher/scores.jsonl", "retrieve/train.trec", "eval/retriever.trec", "reader/predictions.json"):
            assert (ref_out / f"round-{k}" / name).read_text() == (out / f"round-{k}" / name).read_text()
    assert results["metrics"] == ref_results["metrics"]


def test_distilling_fixed_teacher_scores_raises_agreement(fidkd_env, tiny_bert_dir, tmp_path):
    """A score file from elsewhere: each question's list, the passage on its topic that names the answer
    scored highest. ~20 KL steps bring the student's distribution over each list close to the teacher's."""
    from distillir.data.loaders import load_corpus
    from distillir.teachers import TeacherScores, read_teacher_scores

    _, data = fidkd_env
    scores = TeacherScores("handmade")
    for i, (topic, name, _) in enumerate(FACTS):
        others = [f"p{(i + 1) % 6}a", f"p{(i + 2) % 6}b"]
        scores.add(f"t{i}", [f"p{i}b", others[0], f"p{i}a", others[1]], [1.0, -1.0, 4.0, -2.0],
                   query=f"Who led the first {topic} survey?", answers=[name])
    path = tmp_path / "scores.jsonl"
    scores.write(path)
    config = fid_kd_config(tiny_bert_dir, data, tmp_path / "run", f"teacher_scores={path}", "rounds=1", "eval=null",
                         "retriever.trainer={per_device_batch_size: 3, max_steps: 20, learning_rate: 2.0e-3, "
                         "save_steps: 0, log_steps: 5}", "retriever.agreement_sample=0")
    results = FiDKDRecipe().run(config)
    assert list(results["rounds"][0]) == ["round", "retrieve", "retriever", "index", "guard", "wall_s"]  # no reader stages

    corpus = load_corpus(data)
    examples = list_examples(read_teacher_scores(path), corpus=corpus)
    before = teacher_agreement(build_student(config.retriever), examples, corpus)
    after = teacher_agreement(build_student(config.retriever, results["final_retriever"]), examples, corpus)
    assert after["kl"] < 0.5 * before["kl"], (before, after)
    assert after["spearman"] > before["spearman"] and after["top1"] == 1.0


def test_a_score_file_is_cut_to_the_sampled_questions(fidkd_env, tiny_bert_dir, tmp_path):
    """max_train_queries samples the training questions; a score file over all of them trains on that sample
    only (it used to train on every list of the file while the results named the sample)."""
    from distillir.errors import InputError
    from distillir.teachers import TeacherScores

    _, data = fidkd_env
    scores = TeacherScores("handmade")
    for i in range(len(FACTS)):
        scores.add(f"t{i}", [f"p{i}a", f"p{i}b", f"p{(i + 1) % 6}a"], [2.0, 0.0, -1.0])
    path = tmp_path / "scores.jsonl"
    scores.write(path)
    sets = ("rounds=1", "eval=null", "retriever.agreement_sample=0",
            "retriever.trainer={per_device_batch_size: 2, max_steps: 1, save_steps: 0, log_steps: 1}")
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "run", f"teacher_scores={path}",
                                              "max_train_queries=2", *sets))
    assert results["train_questions"] == 2 and results["rounds"][0]["retriever"]["lists"] == 2
    half = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "half", f"teacher_scores={path}",
                                           "teacher.keep_confident=0.5", *sets))
    assert half["rounds"][0]["retriever"]["lists"] == len(FACTS) // 2  # the teacher's surest half
    other = TeacherScores("elsewhere")
    other.add("not-a-training-question", ["p0a", "p1a"], [1.0, 0.0], query="who?")
    other.write(tmp_path / "other.jsonl")
    with pytest.raises(InputError, match="none of its 1 questions is among the 2 sampled training questions"):
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "other", f"teacher_scores={tmp_path / 'other.jsonl'}",
                                        "max_train_queries=2", *sets))


@pytest.mark.parametrize(("loss", "in_batch"), [("mse", False), ("margin", False), ("kl", True), ("mse", True)])
def test_other_losses_train(fidkd_env, tiny_bert_dir, tmp_path, reference, loss, in_batch):
    _, data = fidkd_env
    ref_out, _, _ = reference
    config = fid_kd_config(tiny_bert_dir, data, tmp_path / loss, f"retriever.loss={loss}", "rounds=1", "eval=null",
                         f"retriever.in_batch_negatives={str(in_batch).lower()}",
                         f"teacher_scores={ref_out / 'round-1' / 'teacher' / 'scores.jsonl'}",
                         "retriever.trainer={per_device_batch_size: 4, max_steps: 2, save_steps: 0}")
    results = FiDKDRecipe().run(config)
    summary = results["rounds"][0]["retriever"]
    assert summary["loss"] == loss and summary["train"]["global_step"] == 2
    assert summary["agreement_after"]["lists"] == 1 and torch.isfinite(torch.tensor(summary["train"]["loss"]))


def test_list_scores_are_the_similarity_of_each_question_with_its_own_list(fidkd_env, tiny_bert_dir):
    from distillir.data.loaders import load_corpus
    from distillir.recipes.common.config import StudentConfig
    from distillir.recipes.common.distill import ListExample

    _, data = fidkd_env
    corpus = load_corpus(data)
    encoder = build_student(StudentConfig(model=tiny_bert_dir, query_max_length=16, passage_max_length=32))
    examples = [ListExample("a", "who led the survey", ["p0a", "p1b", "p2a"], [1.0, 2.0, 3.0]),
                ListExample("b", "which year", ["p3a"], [0.5])]
    batch = ListCollator(encoder, corpus)(examples)
    assert batch["passage"]["input_ids"].shape[0] == 6 and batch["mask"].tolist() == [[True] * 3, [True] + [False] * 2]
    encoder.eval()
    with torch.no_grad():
        scores = student_list_scores(encoder, batch)
        for i, ex in enumerate(examples):
            q = encoder.encode_query(encoder.tokenize_queries([ex.query]))
            p = encoder.encode_passage(encoder.tokenize_passages([corpus.titles[corpus.index_of[x]] for x in ex.pids],
                                                                 [corpus.texts[corpus.index_of[x]] for x in ex.pids]))
            assert torch.allclose(scores[i, : len(ex.pids)], encoder.similarity(q, p)[0], atol=1e-5)
        cross = student_list_scores(encoder, batch, cross=True)  # (B, B, n): question b against list c
        assert cross.shape == (2, 2, 3)
        assert torch.allclose(torch.diagonal(cross, dim1=0, dim2=1).transpose(0, 1), scores, atol=1e-5)
        q = encoder.encode_query(encoder.tokenize_queries([examples[1].query]))
        p = encoder.encode_passage(encoder.tokenize_passages([corpus.titles[corpus.index_of["p0a"]]],
                                                             [corpus.texts[corpus.index_of["p0a"]]]))
        assert torch.allclose(cross[1, 0, 0], encoder.similarity(q, p)[0, 0], atol=1e-5)


def test_teacher_targets():
    from distillir.recipes.common.distill import teacher_targets

    assert teacher_targets([0.01, 0.03]) == [0.01, 0.03]  # the paper: raw scores
    z = teacher_targets([0.01, 0.02, 0.03], "zscore", scale=2.0)
    assert z == pytest.approx([-2 * 1.2247449, 0.0, 2 * 1.2247449], rel=1e-6)
    assert teacher_targets([5.0], "zscore") == [0.0] and teacher_targets([1.0, 1.0], "zscore") == [0.0, 0.0]
    with pytest.raises(ConfigError, match="normalization"):
        teacher_targets([1.0], "minmax")


def test_config_checks_and_shipped_configs():
    assert get_recipe("fid-kd") is FiDKDRecipe and "fid-kd" in RECIPES
    with pytest.raises(ConfigError, match="rounds: 1"):
        load_config(FiDKDConfig, None, ["teacher_scores=x.jsonl", "rounds=2"])
    with pytest.raises(ConfigError, match="aggregation"):
        load_config(FiDKDConfig, None, ["teacher.aggregation=mean"])
    cpu = load_config(FiDKDConfig, REPO / "configs" / "fid-kd-squad-cpu.yaml")
    gpu = load_config(FiDKDConfig, REPO / "configs" / "fid-kd-gpu.yaml")
    assert 10 <= cpu.n_passages <= 20 and cpu.reader.init == "encoder-decoder"
    assert gpu.n_passages == 100 and gpu.reader.init == "pretrained" and gpu.reader.model == "t5-base"
    assert gpu.reader.passage_max_length == 200 and gpu.retriever.query_max_length == 40
    answers = load_config(FiDKDConfig, REPO / "configs" / "fid-kd-answers-squad-cpu.yaml")
    assert answers.teacher_scores == "answers" and answers.rounds == 2 and answers.retriever.in_batch_negatives
    assert answers.retriever.agreement_holdout > 0 and answers.on_worse == "keep"
    both = load_config(FiDKDConfig, REPO / "configs" / "fid-kd-answers-both-squad-cpu.yaml")
    assert both.retriever.train_passages and both.retriever.shared and both.retriever.random_negatives == 0
    assert both.retriever.trainer.attention_dropout == 0.0 and both.retriever.trainer.mixed_precision == "native"
    # The shipped CPU configs use the measured student side, which is also the recipe's default.
    default = FiDKDConfig()

    def student_side(c):
        r = c.retriever
        return (c.start, c.candidates, c.on_worse, c.teacher.normalize, c.teacher.scale, c.teacher.skip_uniform,
                r.loss, r.temperature, r.in_batch_negatives, r.random_negatives, r.agreement_holdout,
                r.trainer.learning_rate, r.trainer.per_device_batch_size)

    lm = load_config(FiDKDConfig, REPO / "configs" / "fid-kd-smollm2-squad-cpu.yaml")
    assert lm.reader.kind == "causal-lm" and lm.teacher.aggregation == "pdist"
    assert student_side(cpu) == student_side(answers) == student_side(lm) == student_side(default)
    assert student_side(default) == ("student", "union", "keep", "zscore", 5.0, True, "kl", 1.0, True, 16, 0.1,
                                     3e-5, 16)


def test_the_benchmarked_new_defaults_are_the_recipe_defaults():
    """bench/distill_student.py's `combo_sharp` row is what the defaults were chosen from: the same settings."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from distill_student_report import ABLATIONS, BASE

    row = {**BASE, **ABLATIONS["combo_sharp"], "student": {**BASE["student"], **ABLATIONS["combo_sharp"]["student"]}}
    d = FiDKDConfig()
    assert row["sources"] == ["bm25", "student"] and (d.start, d.candidates) == ("student", "union")
    assert (row["normalize"], row["teacher_scale"], row["skip_without_positive"]) == (
        d.teacher.normalize, d.teacher.scale, d.teacher.skip_uniform)
    st = row["student"]
    assert (st["loss"], st["temperature"], st["in_batch_negatives"], st["random_negatives"], st["batch"], st["lr"]) == (
        d.retriever.loss, d.retriever.temperature, d.retriever.in_batch_negatives, d.retriever.random_negatives,
        d.retriever.trainer.per_device_batch_size, d.retriever.trainer.learning_rate)


def test_query_side_training_keeps_the_passage_tower_and_reuses_its_corpus_embeddings(fidkd_env, tiny_bert_dir, tmp_path,
                                                                                       reference):
    """retriever.train_passages=false: only the query tower moves; the passage tower stays the start model's
    weights, so the index of every round is the start model's cached corpus embeddings; precomputed passage
    embeddings in a batch give the same scores as encoding the passages."""
    from distillir.data.loaders import load_corpus
    from distillir.recipes.common.config import StudentConfig
    from distillir.recipes.common.distill import ListExample
    from distillir.retrievers.dense.retriever import DenseRetriever

    _, data = fidkd_env
    ref_out, _, _ = reference
    config = fid_kd_config(tiny_bert_dir, data, tmp_path / "qside", "retriever.train_passages=false", "rounds=1",
                         "eval=null", f"teacher_scores={ref_out / 'round-1' / 'teacher' / 'scores.jsonl'}",
                         "retriever.trainer={per_device_batch_size: 4, max_steps: 3, learning_rate: 1.0e-3, "
                         "save_steps: 0}")
    assert config.retriever.shared is False
    results = FiDKDRecipe().run(config)
    start = build_student(config.retriever)
    trained = build_student(config.retriever, results["final_retriever"])
    assert trained.passage_tower_frozen and not trained.shared
    assert trained.weights_fingerprint(["passage"]) == start.weights_fingerprint(["passage"])
    assert trained.weights_fingerprint(["query"]) != start.weights_fingerprint(["query"])

    corpus = load_corpus(data)
    index = DenseRetriever.load(Path(results["output_dir"]) / "round-1" / "index", corpus=corpus)
    start.eval()
    fresh = start.encode_corpus(corpus, batch_size=16)
    assert torch.allclose(index.index.embeddings.float(), fresh, atol=1e-5)

    encoder = build_student(StudentConfig(model=tiny_bert_dir, query_max_length=16, passage_max_length=32,
                                           train_passages=False))
    encoder.eval()
    examples = [ListExample("a", "who led the survey", ["p0a", "p1b", "p2a"], [1.0, 2.0, 3.0]),
                ListExample("b", "which year", ["p3a"], [0.5])]
    with torch.no_grad():
        online = student_list_scores(encoder, ListCollator(encoder, corpus)(examples))
        batch = ListCollator(encoder, corpus, encoder.encode_corpus(corpus, batch_size=16))(examples)
        assert "passage" not in batch and batch["passage_embeddings"].shape[:2] == (2, 3)
        assert torch.allclose(student_list_scores(encoder, batch)[batch["mask"]], online[batch["mask"]], atol=1e-5)
    with pytest.raises(ConfigError):
        build_student(StudentConfig(model=tiny_bert_dir)).freeze_passage_tower()
