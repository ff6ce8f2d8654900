"""DGR: identifiers and their prefix tree, the student's scores and constrained search, the loss as its parts,
and the recipe end to end (tiny random models) with resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import KillAt, same_weights

from distillir.data.datasets import load_dataset
from distillir.data.loaders import load_corpus
from distillir.data.run import Run
from distillir.data.toy import write_toy_beir
from distillir.errors import ConfigError, InputError
from distillir.evaluation import evaluate_run
from distillir.losses import DGRLoss, DistilledRankNetLoss, KLDivergenceLoss, RankListNetLoss
from distillir.readers.fid import FiDReader
from distillir.recipes import get_recipe
from distillir.recipes.dgr import DGRCollator, DGRConfig, DGRRecipe, DGRStep, DGRStudentConfig, RankedList
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.generative import DocidTrie, GenerativeRetriever, make_docids
from distillir.teachers.scores import read_teacher_scores
from distillir.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is as fast


@pytest.fixture()
def tiny_dataset(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))
    return write_toy_beir(tmp_path / "tiny")


@pytest.fixture()
def student(tiny_dataset, tiny_bert_dir):
    torch.manual_seed(0)
    corpus = load_corpus(tiny_dataset)
    reader = FiDReader.from_encoder(tiny_bert_dir, n_passages=1)
    return GenerativeRetriever(reader, corpus.ids, make_docids(corpus), query_max_length=16, docid_max_length=12)


def test_docids_are_unique_and_the_trie_allows_only_their_continuations(tiny_dataset):
    corpus = load_corpus(tiny_dataset)
    docids = make_docids(corpus)
    assert len(set(docids)) == len(docids) and docids[0].endswith(" | 1")
    assert docids[1] == "d0b | 1"  # no title: the id stands in
    assert make_docids(corpus, "id") == list(corpus.ids)
    trie = DocidTrie([[5, 6, 2], [5, 7, 2], [8, 2]])
    assert sorted(trie.next_tokens([])) == [5, 8] and sorted(trie.next_tokens([5])) == [6, 7]
    assert trie.next_tokens([5, 9]) == [] and trie.row_of([5, 7, 2]) == 1 and trie.row_of([5, 7]) is None
    with pytest.raises(InputError, match="share"):
        DocidTrie([[1, 2], [1, 2]])
    with pytest.raises(ConfigError):
        make_docids(corpus, "semantic")


def test_search_returns_real_passages_scored_as_their_identifier_log_probability(student):
    student.seq2seq.eval()
    run = student.search({"q": "what do scientists study about the volcano"}, top_k=4)
    hits = run["q"]
    assert 1 <= len(hits) <= 4 and all(pid in student.row_of_pid for pid, _ in hits)
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    with torch.no_grad():
        forced = student.score(student.tokenize_queries(["what do scientists study about the volcano"]),
                               student.docid_labels([pid for pid, _ in hits]), per_query=len(hits))[0]
    torch.testing.assert_close(forced, torch.tensor(scores), rtol=1e-4, atol=1e-4)


def test_loss_is_the_positive_nll_plus_weighted_ranknet(student):
    config = DGRStudentConfig(rank_weight=0.5, base_margin=1.0, margin_step=0.5, list_size=3)
    lists = [RankedList("a", "volcano research", ["d0a", "d1a", "d2b"]), RankedList("b", "glacier", ["d1a", "d0b"])]
    batch = DGRCollator(student, 3)(lists)
    assert batch["index"] is None and batch["lists"]["mask"].tolist() == [[True] * 3, [True, True, False]]
    student.seq2seq.eval()
    with torch.no_grad():
        loss = DGRStep(student, config)(student.seq2seq, batch)
        s = student.score(batch["lists"]["query"], batch["lists"]["labels"], per_query=3)
        tokens = (batch["lists"]["labels"] != -100).sum(-1).view(2, 3)[:, 0]
        want = (-s[:, 0] / tokens).mean() + 0.5 * DistilledRankNetLoss(1.0, 0.5, 3.0)(s, mask=batch["lists"]["mask"])
    torch.testing.assert_close(loss, want)


def test_plain_objective_scores_only_the_positive_and_equals_the_nll(student, monkeypatch):
    config = DGRStudentConfig(rank_weight=0.0, list_size=3)
    lists = [RankedList("a", "volcano research", ["d0a", "d1a", "d2b"]), RankedList("b", "glacier", ["d1a", "d0b"])]
    batch = DGRCollator(student, 3)(lists)
    student.seq2seq.eval()
    with torch.no_grad():
        full = student.score(batch["lists"]["query"], batch["lists"]["labels"], per_query=3)
        tokens = (batch["lists"]["labels"] != -100).sum(-1).view(2, 3)[:, 0]
        want = (-full[:, 0] / tokens).mean()
        seen = []
        score = student.score
        monkeypatch.setattr(student, "score", lambda q, labels, per_query=1: seen.append(per_query) or
                            score(q, labels, per_query=per_query))
        loss = DGRStep(student, config)(student.seq2seq, batch)
    assert seen == [1]  # one identifier per list: the negatives are not scored at all
    torch.testing.assert_close(loss, want)


def tiny_config(bert: str, data: Path, out: Path, *extra: str) -> DGRConfig:
    return load_config(DGRConfig, None, [
        f"output_dir={out}", f"dataset={data}", "seed=2", "candidates=6", "positives=gold",
        f"teacher.model={bert}", "teacher.max_length=40", "teacher.query_max_length=16", "teacher.steps=2",
        "teacher.list_size=3", "teacher.trainer={per_device_batch_size: 2, learning_rate: 1.0e-3, save_steps: 1}",
        "student.seq2seq.init=encoder-decoder", f"student.seq2seq.model={bert}", "student.query_max_length=16",
        "student.docid_max_length=12", "student.list_size=3", "student.indexing_words=8",
        ("student.trainer={per_device_batch_size: 4, max_steps: 3, learning_rate: 1.0e-3, save_steps: 1, "
         "log_steps: 1}"),
        "eval.split=test", "eval.top_k=3", "eval.batch_size=4", *extra,
    ])


def test_recipe_end_to_end_and_resume(tiny_dataset, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    results = DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out))
    assert get_recipe("dgr") is DGRRecipe and list(results["stages"]) == ["candidates", "teacher", "student", "eval"]
    assert results["stages"]["student"]["indexing_examples"] == 16
    # The teacher's lists in the shared score format: the gold passage first, then negatives by teacher score.
    scores = read_teacher_scores(out / "teacher" / "scores.jsonl")
    assert len(scores) == 8
    for qid in scores:
        pids, values = scores[qid]
        assert pids[0] == f"d{qid.removeprefix('train')}a"
        assert values[1:] == sorted(values[1:], reverse=True)
    # The reported figures are the evaluation of the run the recipe wrote, and of BM25's own run.
    test = load_dataset(str(tiny_dataset), "test")
    want = evaluate_run(Run.read_trec(out / "eval" / "dgr.trec"), qrels=test.qrels, queries=test.queries,
                        corpus=test.corpus)
    assert results["metrics"] == want and results["metrics"]["queries"] == 8
    bm25 = bm25_cached(test.corpus).search(test.queries, top_k=3)
    assert results["bm25_metrics"] == evaluate_run(bm25, qrels=test.qrels, queries=test.queries, corpus=test.corpus)
    loaded = GenerativeRetriever.from_pretrained(out / "final")
    assert len(loaded.passage_ids) == 16
    again = DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "resume=true"))
    assert all(stage["skipped"] for stage in again["stages"].values()) and again["metrics"] == results["metrics"]
    with pytest.raises(ConfigError, match="already holds"):
        DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out))


def test_a_teacher_score_file_ranks_the_lists_instead_of_a_cross_encoder(tiny_dataset, tiny_bert_dir, tmp_path):
    from distillir.teachers.scores import TeacherScores

    given = TeacherScores("lm:question_likelihood")
    for i in range(8):  # another query's gold first, then the gold, then the gold's sibling
        given.add(f"train{i}", [f"d{(i + 1) % 8}a", f"d{i}a", f"d{i}b"], [3.0, 2.0, 1.0 + i / 10])
    given.write(tmp_path / "lm_scores.jsonl")
    out = tmp_path / "run"
    results = DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, f"teacher.scores={tmp_path / 'lm_scores.jsonl'}"))
    assert results["stages"]["teacher"]["teacher"] == "lm:question_likelihood"
    assert not (out / "teacher" / "final").exists()  # no cross-encoder was trained
    lists = read_teacher_scores(out / "teacher" / "scores.jsonl")
    assert lists["train3"] == (["d3a", "d4a", "d3b"], [2.0, 3.0, 1.3])  # the positive first, then the file's order
    candidates = Run.read_trec(out / "candidates.trec")  # the file's lists, not a BM25 run
    assert set(candidates) == {f"train{i}" for i in range(8)} and [p for p, _ in candidates["train3"]] == ["d4a", "d3a", "d3b"]
    # A file naming no training query, or a passage outside the corpus, is refused before any run directory exists.
    other = TeacherScores("lm")
    other.add("elsewhere", ["d0a"], [1.0])
    other.write(tmp_path / "other.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"qid": "train0", "pids": ["nope"], "scores": [1.0]}\n')
    for name, message in (("other.jsonl", "no line names"), ("bad.jsonl", "line 1.*not in the corpus")):
        run_dir = tmp_path / f"run-{name}"
        with pytest.raises(InputError, match=message):
            DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, run_dir, f"teacher.scores={tmp_path / name}"))
        assert not run_dir.exists()


def test_interrupted_student_stage_resumes_to_the_same_weights(tiny_dataset, tiny_bert_dir, tmp_path):
    """Killed in the middle of the student's training (after step 2 of 3), then resumed: the candidates and
    teacher stages are skipped, and the student equals the one an uninterrupted run trains."""
    DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, tmp_path / "reference", "eval=null"))
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "eval=null"), callbacks=[KillAt(2, "student")])
    assert (out / "stages" / "teacher.json").is_file() and not (out / "stages" / "student.json").exists()
    again = DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "eval=null", "resume=true"))
    assert again["stages"]["teacher"]["skipped"] and not again["stages"]["student"]["skipped"]
    assert same_weights(out / "final" / "model", tmp_path / "reference" / "final" / "model")
    ours, theirs = (read_teacher_scores(d / "teacher" / "scores.jsonl") for d in (out, tmp_path / "reference"))
    assert dict(ours.items()) == dict(theirs.items())


def test_config_checks_and_shipped_configs():
    with pytest.raises(ConfigError):
        load_config(DGRConfig, None, ["student.list_size=1"])
    with pytest.raises(ConfigError):
        load_config(DGRConfig, None, ["candidates=1"])
    for name in ("dgr-scifact-cpu.yaml", "dgr-smollm2-scifact-cpu.yaml", "dgr-gpu.yaml"):
        load_config(DGRConfig, REPO / "configs" / name, [])


def test_identifiers_that_tokenize_alike_are_made_distinct(tiny_bert_dir):
    reader = FiDReader.from_encoder(tiny_bert_dir, n_passages=1)
    docids = ["Volcano | 1", "VOLCANO | 1", "a very long title that the limit cuts | 1",
              "a very long title that the limit cuts | 2"]
    student = GenerativeRetriever(reader, ["p1", "p2", "p3", "p4"], docids, docid_max_length=6)
    assert len({tuple(t) for t in student.docid_tokens}) == 4
    assert student.docids[1] == "VOLCANO | 1 ~2" and all(len(t) <= 6 for t in student.docid_tokens)


def test_listnet_on_the_teacher_order_by_hand():
    scores = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    got = RankListNetLoss()(scores, mask)
    # grades 2, 1, 0 over three real entries; 1, 0 over two
    t1 = [math.exp(g) / sum(math.exp(x) for x in (2, 1, 0)) for g in (2, 1, 0)]
    p1 = [math.exp(s) / sum(math.exp(x) for x in (1.0, 0.0, -1.0)) for s in (1.0, 0.0, -1.0)]
    t2 = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    p2 = [math.exp(0.5) / (math.exp(0.5) + math.exp(2.0)), math.exp(2.0) / (math.exp(0.5) + math.exp(2.0))]
    want = (-sum(t * math.log(p) for t, p in zip(t1, p1)) - sum(t * math.log(p) for t, p in zip(t2, p2))) / 2
    assert got.item() == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("rank_loss", ["kl", "listnet"])
def test_ablation_losses_replace_the_ranknet_term(student, rank_loss):
    config = DGRStudentConfig(rank_weight=0.5, list_size=3, rank_loss=rank_loss, kl_temperature=2.0)
    lists = [RankedList("a", "volcano research", ["d0a", "d1a", "d2b"], [3.0, 1.0, -2.0]),
             RankedList("b", "glacier", ["d1a", "d0b"], [0.5, 0.1])]
    batch = DGRCollator(student, 3)(lists)
    torch.testing.assert_close(batch["lists"]["teacher"], torch.tensor([[3.0, 1.0, -2.0], [0.5, 0.1, 0.0]]))
    student.seq2seq.eval()
    with torch.no_grad():
        loss = DGRStep(student, config)(student.seq2seq, batch)
        s = student.score(batch["lists"]["query"], batch["lists"]["labels"], per_query=3)
        tokens = (batch["lists"]["labels"] != -100).sum(-1).view(2, 3)[:, 0]
        mask = batch["lists"]["mask"]
        term = (KLDivergenceLoss(2.0)(s, batch["lists"]["teacher"], mask) if rank_loss == "kl"
                else RankListNetLoss()(s, mask))
    torch.testing.assert_close(loss, (-s[:, 0] / tokens).mean() + 0.5 * term)
    with pytest.raises(ValueError, match="rank_loss"):
        DGRLoss(rank_loss="lambdarank")


def test_causal_lm_student_end_to_end(tiny_dataset, tiny_lm_dir, tiny_bert_dir, tmp_path):
    """A decoder-only LM as the student: only its last layer trains, the saved retriever is the LM kind, and
    its evaluation is the run it wrote."""
    from transformers import AutoModelForCausalLM

    from distillir.readers.generative_lm import CausalGenerativeRetriever, load_generative_retriever

    out = tmp_path / "lm"
    results = DGRRecipe().run(tiny_config(tiny_bert_dir, tiny_dataset, out, "student.seq2seq.kind=causal-lm",
                                          f"student.seq2seq.model={tiny_lm_dir}", "student.seq2seq.lm.train_layers=1",
                                          "student.rank_loss=listnet"))
    loaded = load_generative_retriever(out / "final")
    assert isinstance(loaded, CausalGenerativeRetriever)
    start = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).state_dict()
    trained = loaded.model.state_dict()
    changed = {k for k in start if not torch.equal(start[k], trained[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed)
    test = load_dataset(str(tiny_dataset), "test")
    want = evaluate_run(Run.read_trec(out / "eval" / "dgr.trec"), qrels=test.qrels, queries=test.queries,
                        corpus=test.corpus)
    assert results["metrics"] == want
    with pytest.raises(ConfigError, match="train_layers"):
        load_config(DGRConfig, None, ["student.seq2seq.kind=causal-lm"])
