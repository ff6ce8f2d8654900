"""FiD-KD's rounds beyond the stage mechanics: the round guard (a round made worse is rolled back, or stops
the run), the answer-string teacher, union candidates and uniform lists, and a causal LM as reader-teacher."""

from __future__ import annotations

import json
import math

import pytest
from helpers import fid_kd_config

from distillir.errors import ConfigError
from distillir.recipes.common.distill import list_examples
from distillir.recipes.fid_kd import FiDKDConfig, FiDKDRecipe
from distillir.training.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast


def test_on_worse_stop_ends_the_run_after_a_collapsed_round(fidkd_env, tiny_bert_dir, tmp_path, monkeypatch):
    from distillir.evaluation import diagnostics

    _, data = fidkd_env
    seen = []

    def always_collapsed(run):  # 4 tiny questions never reach the real check's minimum: force the verdict
        seen.append(len(run))
        return {"queries": len(run), "distinct_top1": 1, "top1_max_share": 1.0, "top1_max_pid": "x",
                "collapsed": True}

    monkeypatch.setattr(diagnostics, "top1_concentration", always_collapsed)
    out = tmp_path / "stop"
    # No eval split: the check runs on the training questions' top-1.
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, "on_worse=stop", "eval=null"))
    assert seen == [8]
    assert len(results["rounds"]) == 1 and not (out / "round-2").exists()
    assert results["stopped"]["after_round"] == 1 and results["complete"]
    assert results["rounds"][0]["index"]["diagnostics"]["questions"] == "train"
    assert "collapsed" in json.loads((out / "results.json").read_text())["stopped"]["reasons"][0]
    assert results["kept_round"] == 0  # the collapsed round is not kept
    # Resuming the stopped run stops at the same place without redoing anything.
    stages = []
    again = FiDKDRecipe(on_stage=lambda k, s, info: stages.append((k, s, info["skipped"]))).run(
        fid_kd_config(tiny_bert_dir, data, out, "on_worse=stop", "eval=null", "resume=true"))
    assert all(skipped for _, _, skipped in stages) and {k for k, _, _ in stages} == {1}
    assert again["stopped"]["after_round"] == 1
    with pytest.raises(ConfigError, match="on_worse"):
        load_config(FiDKDConfig, None, ["on_worse=ignore"])


@pytest.mark.parametrize("on_worse", ["keep", "continue"])
def test_a_round_made_worse_on_purpose_is_rolled_back(fidkd_env, tiny_bert_dir, tmp_path, monkeypatch, on_worse):
    """Round 1 fails the label-free check (forced: every run collapses): with on_worse keep, round 2 retrieves
    with the start retriever and starts the student afresh, and the result reports the start retriever."""
    from distillir.evaluation import diagnostics

    _, data = fidkd_env

    def always_collapsed(run):
        return {"queries": len(run), "distinct_top1": 1, "top1_max_share": 1.0, "top1_max_pid": "x",
                "collapsed": True}

    monkeypatch.setattr(diagnostics, "top1_concentration", always_collapsed)
    out = tmp_path / on_worse
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, f"on_worse={on_worse}"))
    r1, r2 = results["rounds"]
    assert r1["guard"]["worse"] and "collapsed" in r1["guard"]["reasons"][0]
    if on_worse == "keep":
        assert r1["guard"]["kept"] == "previous" and r2["retrieve"]["retriever"] == "bm25"
        assert r2["retriever"]["start_from"] == tiny_bert_dir  # not round 1's student
        assert results["kept_round"] == 0 and results["final_retriever"] == "bm25"
        assert results["metrics"] == results["start_metrics"]
        # Round 2 read the start retriever's lists: the same as round 1's.
        assert (out / "round-2/retrieve/train.trec").read_text().replace("round-2", "round-1") == (
            out / "round-1/retrieve/train.trec").read_text()
    else:
        assert r1["guard"]["kept"] == "new" and r2["retrieve"]["retriever"] == "round-1 retriever"
        assert results["kept_round"] == 2
    assert json.loads((out / "round-1" / "metrics.json").read_text())["guard"] == r1["guard"]
    with pytest.raises(ConfigError, match="on_worse"):
        load_config(FiDKDConfig, None, ["on_worse=ignore"])


def test_rising_held_out_kl_makes_a_round_worse(fidkd_env, tiny_bert_dir, tmp_path, monkeypatch):
    """With retriever.agreement_holdout, lists held out of training measure agreement with the teacher; a rising
    KL (forced here) fails the round."""
    from distillir.recipes.common import distill

    _, data = fidkd_env
    calls = []

    def falling(encoder, sample, corpus, **kwargs):
        calls.append(len(sample))
        return {"lists": len(sample), "kl": 0.1 if len(calls) % 2 else 0.5, "spearman": 0.0, "top1": 1.0}

    monkeypatch.setattr(distill, "teacher_agreement", falling)
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "held", "rounds=1",
                                            "retriever.agreement_holdout=0.25", "on_worse=keep"))
    (r1,) = results["rounds"]
    assert calls == [2, 2]  # 2 of the 8 lists held out, measured before and after
    assert r1["retriever"]["lists"] == 6 and r1["retriever"]["agreement_held_out"]
    assert r1["guard"]["worse"] and "held-out" in r1["guard"]["reasons"][0] and results["kept_round"] == 0


def test_answer_string_teacher_iterates_without_a_reader(fidkd_env, tiny_bert_dir, tmp_path):
    """teacher_scores: answers scores each round's own lists with the answer strings: no reader stage runs."""
    from distillir.data.answers import has_answer
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers import read_teacher_scores

    _, data = fidkd_env
    out = tmp_path / "answers"
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, "teacher_scores=answers"))
    assert len(results["rounds"]) == 2 and results["final_reader"] is None
    for k in (1, 2):
        rd = out / f"round-{k}"
        assert not (rd / "reader").exists()
        scores = read_teacher_scores(rd / "teacher" / "scores.jsonl")
        for ex in load_fid_examples(rd / "retrieve" / "train.jsonl"):
            pids, values = scores[str(ex["id"])]
            assert pids == [c["id"] for c in ex["ctxs"]]
            assert values == [float(has_answer(ex["answers"], c["text"])) for c in ex["ctxs"]]
    with pytest.raises(ConfigError, match="rounds"):
        load_config(FiDKDConfig, None, ["teacher_scores=scores.jsonl", "rounds=2"])


def test_union_candidates_from_the_student_and_bm25(fidkd_env, tiny_bert_dir, tmp_path):
    """The defaults' lists: round 1 from the student's own model (start: student) merged with BM25's top-n, in
    RRF order; the answer teacher scores all of them (up to 2n), a reader would read the first n; lists whose
    teacher scores are all equal are not trained on."""
    from distillir.data.loaders import load_corpus, load_queries
    from distillir.data.run import Run
    from distillir.retrievers.bm25 import BM25Retriever
    from distillir.retrievers.dense.retriever import DenseRetriever
    from distillir.retrievers.hybrid import union_of_tops
    from distillir.teachers import read_teacher_scores

    _, data = fidkd_env
    out = tmp_path / "union"
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, "teacher_scores=answers", "start=student",
                                            "candidates=union", "rounds=1", "eval=null"))
    corpus = load_corpus(data)
    queries = load_queries(data / "train.jsonl")
    dense = DenseRetriever.build(corpus, tiny_bert_dir, batch_size=16).search(queries, top_k=4)
    bm25 = BM25Retriever.build(corpus).search(queries, top_k=4)
    expected = union_of_tops([(dense, 4), (bm25, 4)])
    got = Run.read(out / "round-1" / "retrieve" / "train.trec")
    assert {q: [p for p, _ in got[q]] for q in got} == {q: [p for p, _ in expected[q]] for q in expected}
    assert max(len(got[q]) for q in got) > 4  # the union adds BM25's passages the student missed
    scores = read_teacher_scores(out / "round-1" / "teacher" / "scores.jsonl")
    uniform = sum(1 for q in scores if len(set(scores[q][1])) == 1)
    record = results["rounds"][0]["retriever"]
    assert record["uniform_lists_skipped"] == uniform
    assert record["lists"] + record["agreement_before"]["lists"] == len(scores) - uniform


def test_list_examples_skip_uniform_lists():
    from distillir.teachers import TeacherScores

    scores = TeacherScores("t")
    scores.add("a", ["p1", "p2"], [0.0, 0.0], query="qa")  # no signal
    scores.add("b", ["p1", "p2"], [1.0, 0.0], query="qb")
    scores.add("c", ["p3"], [0.0], query="qc")  # one passage: kept (its in-batch term still teaches)
    kept = list_examples(scores, normalize="zscore", scale=5.0, skip_uniform=True)
    assert [ex.qid for ex in kept] == ["b", "c"] and kept[0].scores == [5.0, -5.0] and kept[1].scores == [0.0]
    assert [ex.qid for ex in list_examples(scores)] == ["a", "b", "c"]


@pytest.mark.parametrize("teacher", ["pdist", "question_likelihood", "attention"])
def test_causal_lm_reader_teaches_without_training(fidkd_env, tiny_bert_dir, tiny_lm_dir, tmp_path, monkeypatch, teacher):
    """reader.kind: causal-lm: no reader stage; the LM's scores of each round's lists are the teacher (as
    `lm_teacher_scores` computes them by hand here), its answers are evaluated, and a resumed run rescoring
    nothing reads every score from the cache."""
    from distillir.readers.causal_lm import CausalLMReader
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers import read_teacher_scores
    from distillir.teachers.lm_likelihood import lm_teacher_scores

    _, data = fidkd_env
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / teacher
    extra = ["reader.kind=causal-lm", f"reader.model={tiny_lm_dir}", f"teacher.aggregation={teacher}",
             "reader.lm.dtype=float32", "reader.passage_max_length=24", "reader.answer_max_length=3"]
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, *extra))
    assert len(results["rounds"]) == 2 and not (out / "round-1" / "reader" / "final").exists()
    from distillir.teachers.lm_attention import lm_attention_scores

    reader = CausalLMReader.from_pretrained(tiny_lm_dir, passage_max_tokens=24,
                                            attn_implementation="eager" if teacher == "attention" else None)
    for k in (1, 2):
        rd = out / f"round-{k}"
        record = results["rounds"][k - 1]
        assert "reader" not in record and {"EM", "F1"} <= set(record["reader_eval"]["metrics"])
        scores = read_teacher_scores(rd / "teacher" / "scores.jsonl")
        lists = load_fid_examples(rd / "retrieve" / "train.jsonl")
        expected = (lm_attention_scores(reader, lists, n_passages=4) if teacher == "attention" else
                    lm_teacher_scores(reader, lists, teacher, n_passages=4, progress=None))
        assert scores.teacher == f"lm-{teacher}:{tiny_lm_dir}" and list(scores) == list(expected)
        assert all(scores[q][0] == expected[q][0] and scores[q][1] == pytest.approx(expected[q][1], abs=1e-4)
                   for q in scores)
    with pytest.raises(ConfigError, match="causal-lm scores with"):
        load_config(FiDKDConfig, None, ["reader.kind=causal-lm", "teacher.aggregation=fid"])
    with pytest.raises(ConfigError, match="needs reader.kind: causal-lm"):
        load_config(FiDKDConfig, None, ["teacher.aggregation=question_likelihood"])
    assert load_config(FiDKDConfig, None, ["reader.kind=causal-lm", "teacher.aggregation=pdist"]).reader.model == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_questions_only_on_a_beir_dataset(fidkd_env, tiny_bert_dir, tiny_lm_dir, tmp_path, monkeypatch):
    """Claims or questions without answers (BEIR layout): question likelihood needs none, so every question is a
    training list, and the eval split is scored with its qrels (nDCG@10); nor does a score file made from it."""
    from distillir.data.toy import write_toy_beir

    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    beir = write_toy_beir(tmp_path / "beir")
    config = fid_kd_config(tiny_bert_dir, beir, tmp_path / "run", "reader.kind=causal-lm", f"reader.model={tiny_lm_dir}",
                           "teacher.aggregation=question_likelihood", "reader.lm.dtype=float32", "rounds=1",
                           "train_split=train", "eval.split=test", "eval.reader=false", "start=student")
    results = FiDKDRecipe().run(config)
    (r1,) = results["rounds"]
    assert results["train_questions"] > 0 and r1["teacher"]["questions"] == results["train_questions"]
    assert "nDCG@10" in results["metrics"] and "nDCG@10" in results["start_metrics"]
    # Those scores, distilled again from their file (no reader, no answers anywhere): the same lists train.
    scores = tmp_path / "run" / "round-1" / "teacher" / "scores.jsonl"
    again = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, beir, tmp_path / "again", f"teacher_scores={scores}",
                                            "rounds=1", "train_split=train", "eval.split=test", "eval.reader=false",
                                            "start=student"))
    assert again["train_questions"] == results["train_questions"] and "nDCG@10" in again["metrics"]
    assert again["rounds"][0]["retriever"]["train"]["global_step"] > 0
    with pytest.raises(ConfigError, match="no question has an answer"):
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, beir, tmp_path / "answers", "teacher_scores=answers",
                                        "rounds=1", "train_split=train", "eval.split=test", "eval.reader=false"))
    with pytest.raises(ConfigError, match="no question has an answer"):
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, beir, tmp_path / "pdist", "reader.kind=causal-lm",
                                        f"reader.model={tiny_lm_dir}", "teacher.aggregation=pdist", "rounds=1",
                                        "train_split=train", "eval.split=test"))


def test_a_causal_lm_that_does_not_load_fails_before_any_round(fidkd_env, tiny_bert_dir, tmp_path):
    _, data = fidkd_env
    out = tmp_path / "bad-lm"
    with pytest.raises(ConfigError, match="no installed package"):
        FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, "reader.kind=causal-lm",
                                        "reader.model=package:no-such-model-package", "teacher.aggregation=pdist"))
    assert not (out / "round-1").exists()


def test_a_ranker_teaches_the_retriever_with_its_scores_of_each_list(fidkd_env, tiny_bert_dir, tmp_path):
    """teacher_scores: ranker -- a cross-encoder scores every (question, passage) of each round's lists and the
    student is distilled on those scores through the same path as every other teacher; no reader."""
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers import read_teacher_scores

    _, data = fidkd_env
    CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48).save_pretrained(tmp_path / "ce")
    ranker = CrossEncoder.from_pretrained(tmp_path / "ce").eval()
    out = tmp_path / "ranker"
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, out, "teacher_scores=ranker",
                                              f"teacher.ranker={tmp_path / 'ce'}", "teacher.ranker_max_length=48",
                                              "teacher.ranker_dtype=float32"))  # exact: compared in float32 below
    assert len(results["rounds"]) == 2 and results["final_reader"] is None
    for k in (1, 2):
        rd = out / f"round-{k}"
        assert not (rd / "reader").exists()
        record = results["rounds"][k - 1]["teacher"]
        assert record["teacher"] == f"ranker:{tmp_path / 'ce'}" and "answer_hits" in record
        scores = read_teacher_scores(rd / "teacher" / "scores.jsonl")
        ex = load_fid_examples(rd / "retrieve" / "train.jsonl")[0]
        pids, values = scores[str(ex["id"])]
        want = ranker.score_pairs([ex["question"]] * len(ex["ctxs"]), [(c["title"], c["text"]) for c in ex["ctxs"]])
        assert pids == [c["id"] for c in ex["ctxs"]] and values == pytest.approx(want, abs=1e-5)
        assert results["rounds"][k - 1]["retriever"]["lists"] > 0
    with pytest.raises(ConfigError, match="teacher.ranker"):
        load_config(FiDKDConfig, None, ["teacher_scores=ranker"])


def test_loop_teacher_and_the_emdr2_student(fidkd_env, tiny_bert_dir, tiny_lm_dir, tmp_path, monkeypatch):
    """teacher.aggregation: loop scores each list as `lm_loop_scores` does by hand; retriever.loss: emdr2 trains
    on pdist log-likelihoods as they are (and refuses normalised ones)."""
    from distillir.readers.causal_lm import CausalLMReader
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers import read_teacher_scores
    from distillir.teachers.lm_loop import lm_loop_scores

    _, data = fidkd_env
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    lm = ["reader.kind=causal-lm", f"reader.model={tiny_lm_dir}", "reader.lm.dtype=float32",
          "reader.passage_max_length=24", "rounds=1", "eval.reader=false"]
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "loop", *lm, "teacher.aggregation=loop"))
    rd = tmp_path / "loop" / "round-1"
    reader = CausalLMReader.from_pretrained(tiny_lm_dir, passage_max_tokens=24)
    expected = lm_loop_scores(reader, load_fid_examples(rd / "retrieve" / "train.jsonl"), n_passages=4, progress=None)
    scores = read_teacher_scores(rd / "teacher" / "scores.jsonl")
    assert scores.teacher.startswith("lm-loop:") and list(scores) == list(expected)
    assert all(scores[q][1] == pytest.approx(expected[q][1], abs=1e-4) for q in scores)
    assert results["rounds"][0]["retriever"]["lists"] > 0

    emdr2 = ["teacher.aggregation=pdist", "reader.lm.reduce=sum", "retriever.loss=emdr2"]
    with pytest.raises(ConfigError, match="emdr2 reads teacher scores as log-likelihoods"):
        fid_kd_config(tiny_bert_dir, data, tmp_path / "emdr2", *lm, *emdr2)
    results = FiDKDRecipe().run(fid_kd_config(tiny_bert_dir, data, tmp_path / "emdr2", *lm, *emdr2,
                                              "teacher.normalize=none", "teacher.scale=1.0"))
    train = results["rounds"][0]["retriever"]
    assert train["loss"] == "emdr2" and train["lists"] > 0 and math.isfinite(train["train"]["loss"])
