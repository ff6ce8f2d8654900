"""The teacher-score JSONL format (round trip, every bad-input error) and scoring with a FiD reader
(training-forward scores = score_with_reader scores; PDist and LOOP against direct reads)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillir.errors import ConfigError, InputError
from distillir.readers import FiDReader
from distillir.teachers import TeacherScores, read_teacher_scores, score_with_reader, write_teacher_scores
from distillir.teachers.attention import output_scores, resolve_aggregation
from distillir.teachers.likelihood import answer_log_likelihood, leave_one_out_scores

EXAMPLES = [
    {
        "id": "q1",
        "question": "What is the capital of France?",
        "answers": ["Paris"],
        "ctxs": [
            {"id": "p1", "title": "Paris", "text": "Paris is the capital and largest city of France."},
            {"id": "p3", "title": "Berlin", "text": "Berlin is the capital of Germany."},
        ],
    },
    {
        "id": "q2",
        "question": "When was the Eiffel Tower completed?",
        "answers": ["1889"],
        "ctxs": [
            {
                "id": "p2",
                "title": "Eiffel Tower",
                "text": "The Eiffel Tower was completed in 1889 for the World's Fair.",
            },
            {"id": "p5", "title": "Mitochondrion", "text": "The mitochondria is the powerhouse of the cell."},
            {"id": "p4", "title": "Photosynthesis", "text": "Plants convert light energy into chemical energy."},
        ],
    },
    {
        "id": "q3",
        "question": "What do plants use light for?",
        "answers": ["chemical energy"],
        "ctxs": [{"id": "p4", "title": "Photosynthesis", "text": "Plants convert light energy into chemical energy."}],
    },
]


@pytest.fixture(scope="module")
def reader(minilm_path):
    torch.manual_seed(0)
    return FiDReader.from_config(
        minilm_path,
        d_model=32,
        num_layers=2,
        num_heads=2,
        d_ff=64,
        d_kv=16,
        dropout_rate=0.0,
        settings={"n_passages": 3, "passage_max_length": 32},
    )


# ---- the file format ----------------------------------------------------------------------------


def sample_scores() -> TeacherScores:
    scores = TeacherScores("fid-attention:fid")
    scores.add("q1", ["p1", "p3"], [0.25, -1.5], query="What is the capital of France?", answers=["Paris"])
    scores.add("q2", ["p2"], [3.0])
    return scores


def test_round_trip(tmp_path, tiny_corpus):
    path = tmp_path / "teacher.jsonl"
    write_teacher_scores(path, sample_scores())
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "qid": "q1",
        "query": "What is the capital of France?",
        "pids": ["p1", "p3"],
        "scores": [0.25, -1.5],
        "teacher": "fid-attention:fid",
        "answers": ["Paris"],
    }
    loaded = read_teacher_scores(path, corpus=tiny_corpus)
    assert loaded.teacher == "fid-attention:fid" and list(loaded) == ["q1", "q2"]
    assert loaded["q1"] == (["p1", "p3"], [0.25, -1.5]) and loaded["q2"] == (["p2"], [3.0])
    assert loaded.queries == {"q1": "What is the capital of France?"} and loaded.answers == {"q1": ["Paris"]}
    assert dict(loaded.to_run()["q1"]) == {"p1": 0.25, "p3": -1.5}
    assert list(loaded.subset(["q2"])) == ["q2"]


def test_minimal_lines_from_elsewhere_are_accepted(tmp_path):
    path = tmp_path / "external.jsonl"
    path.write_text('{"qid": 7, "pids": [1, "b"], "scores": [1, 2.5]}\n\n')
    loaded = read_teacher_scores(path)
    assert loaded.teacher == "unknown" and loaded["7"] == (["1", "b"], [1.0, 2.5])


BAD_LINES = [
    ('{"qid": "q1", "pids": ["p1"], "scores": [1.0]', None, "invalid JSON"),
    ('["q1", ["p1"], [1.0]]', None, "JSON object"),
    ('{"pids": ["p1"], "scores": [1.0]}', "qid", "missing"),
    ('{"qid": "q1", "scores": [1.0]}', "pids", "missing"),
    ('{"qid": "q1", "pids": ["p1"]}', "scores", "missing"),
    ('{"qid": ["q1"], "pids": ["p1"], "scores": [1.0]}', "qid", "string id"),
    ('{"qid": "q1", "pids": "p1", "scores": [1.0]}', "pids", "list"),
    ('{"qid": "q1", "pids": ["p1", null], "scores": [1.0, 2.0]}', "pids", "string id"),
    ('{"qid": "q1", "pids": ["p1", "p1"], "scores": [1.0, 2.0]}', "pids", "appears twice"),
    ('{"qid": "q1", "pids": ["p1", "p2"], "scores": [1.0]}', "scores", "1 scores for 2 pids"),
    ('{"qid": "q1", "pids": ["p1"], "scores": ["high"]}', "scores", "numbers"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [true]}', "scores", "numbers"),
    ('{"qid": "q1", "pids": ["p1", "p2"], "scores": [1.0, NaN]}', "scores", "not finite"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [Infinity]}', "scores", "not finite"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [1e999]}', "scores", "not finite"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [1.0], "teacher": 3}', "teacher", "string"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [1.0], "query": 3}', "query", "string"),
    ('{"qid": "q1", "pids": ["p1"], "scores": [1.0], "answers": [1]}', "answers", "list of strings"),
]


@pytest.mark.parametrize("line,field,message", BAD_LINES)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "teacher.jsonl"
    path.write_text('{"qid": "q0", "pids": ["p1"], "scores": [0.5]}\n' + line + "\n")
    with pytest.raises(InputError, match=message) as info:
        read_teacher_scores(path)
    assert info.value.path == str(path) and info.value.line == 2 and info.value.field == field


def test_file_level_errors(tmp_path, tiny_corpus):
    path = tmp_path / "teacher.jsonl"
    good = '{"qid": "q1", "pids": ["p1", "p2"], "scores": [0.5, 0.1], "teacher": "a"}\n'
    path.write_text(good + '{"qid": "q2", "pids": ["p1"], "scores": [0.5]}\n' + good)
    with pytest.raises(InputError, match="duplicate qid 'q1' \\(first on line 1\\)") as info:
        read_teacher_scores(path)
    assert info.value.line == 3 and info.value.field == "qid"

    path.write_text(good.replace('"teacher": "a"', '"teacher": "a"').replace("q1", "qa") + good.replace('"a"', '"b"'))
    with pytest.raises(InputError, match="one file holds one teacher") as info:
        read_teacher_scores(path)
    assert info.value.line == 2 and info.value.field == "teacher"

    path.write_text(good.replace('"p2"', '"nope"'))
    read_teacher_scores(path)  # no corpus, no check
    with pytest.raises(InputError, match="not in the corpus: 'nope'") as info:
        read_teacher_scores(path, corpus=tiny_corpus)
    assert info.value.line == 1 and info.value.field == "pids"

    path.write_text("\n")
    with pytest.raises(InputError, match="no teacher scores"):
        read_teacher_scores(path)
    with pytest.raises(InputError, match="not found"):
        read_teacher_scores(tmp_path / "missing.jsonl")


def test_in_memory_container_checks():
    scores = sample_scores()
    with pytest.raises(ValueError, match="already"):
        scores.add("q1", ["p1"], [1.0])
    with pytest.raises(ValueError, match="not finite"):
        scores.add("q9", ["p1"], [math.inf])
    with pytest.raises(ValueError, match="pair up"):
        scores.add("q9", ["p1"], [])


def test_most_confident_keeps_the_lists_with_the_widest_lead():
    from distillir.teachers.scores import most_confident

    scores = TeacherScores("hand")
    # Leads of the first over the second, in population standard deviations of each list:
    scores.add("a", ["p1", "p2", "p3"], [3.0, 0.0, 0.0])  # std sqrt(2): lead 3 / 1.414 = 2.12
    scores.add("b", ["p1", "p2", "p3"], [1.0, 0.9, 0.0])  # std 0.45: lead 0.1 / 0.45 = 0.22
    scores.add("c", ["p1", "p2"], [2.0, 2.0])  # equal: last
    scores.add("d", ["p1", "p2", "p3", "p4"], [0.0, 0.0, 0.0, 4.0])  # std sqrt(3): lead 4 / 1.732 = 2.31
    scores.add("e", ["p1"], [1.0])  # one passage: last
    assert list(most_confident(scores, 0.4)) == ["a", "d"]  # file order kept
    assert list(most_confident(scores, 0.6)) == ["a", "b", "d"]
    assert list(most_confident(scores, 0.01)) == ["d"]  # at least one list
    assert list(most_confident(scores, 1.0)) == ["a", "b", "c", "d", "e"]
    assert most_confident(scores, 0.4)["d"] == (["p1", "p2", "p3", "p4"], [0.0, 0.0, 0.0, 4.0])


def test_keep_confident_must_be_a_fraction(tmp_path):
    from distillir.recipes.fid_kd import FiDKDConfig
    from distillir.training.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  scale: 5.0\n")
    for bad in ("0", "1.5", "-0.2"):  # the message names the --set that gave the value, not the section's line
        with pytest.raises(ConfigError, match=rf"^--set teacher\.keep_confident={bad}: teacher: teacher.keep_confident must be in"):
            load_config(FiDKDConfig, path, [f"teacher.keep_confident={bad}"])
    path.write_text("teacher:\n  scale: 5.0\n  keep_confident: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 3: teacher: teacher.keep_confident must be in"):
        load_config(FiDKDConfig, path)


def test_write_is_atomic(tmp_path):
    path = tmp_path / "teacher.jsonl"
    write_teacher_scores(path, sample_scores())
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.jsonl"]


# ---- scoring with a reader ----------------------------------------------------------------------


def test_training_forward_scores_equal_score_with_reader(reader, tmp_path):
    # The training pass (train mode, loss and scores from one forward, batch of 2)...
    reader.train()
    batch = reader.collator()(EXAMPLES[:2])
    out = reader(**batch.model_inputs(), attention=resolve_aggregation("fid").capture)
    training_scores = output_scores(out, batch.labels, "fid")
    out.loss.backward()
    reader.zero_grad()
    # ...gives the scores that scoring (eval mode, no gradient, other batching) writes to file.
    scored = score_with_reader(reader, EXAMPLES, "fid", batch_size=3)
    assert reader.training  # mode restored
    assert scored.teacher == "fid-attention:fid" and list(scored) == ["q1", "q2", "q3"]
    for i, qid in enumerate(["q1", "q2"]):
        pids, values = scored[qid]
        assert pids == batch.pids[i]
        assert torch.allclose(torch.tensor(values), training_scores[i, : len(pids)], atol=1e-5)
    assert scored["q3"][0] == ["p4"] and scored.queries["q3"] == "What do plants use light for?"
    path = tmp_path / "scores.jsonl"
    scored.write(path)
    assert dict(read_teacher_scores(path)) == dict(scored)


def test_score_with_reader_from_file_for_each_aggregation(reader, tmp_path):
    path = tmp_path / "ctxs.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    no_answers = [{**e, "answers": None} for e in EXAMPLES]
    assert len(score_with_reader(reader, no_answers, "max")) == 3  # first-token scoring needs no answers
    for name, teacher in [
        ("post_softmax", "fid-attention:post_softmax"),
        ("all_tokens", "fid-attention:all_tokens"),
        ("adist", "fid-attention:adist"),
        ("pdist", "fid-pdist"),
        ("loop", "fid-loop"),
    ]:
        scored = score_with_reader(reader, path, name, batch_size=2)
        assert scored.teacher == teacher and [len(scored[q][0]) for q in scored] == [2, 3, 1]
    assert score_with_reader(reader, EXAMPLES, "fid", layers=[-1]).teacher == "fid-attention:fid@layers=-1"
    with pytest.raises(InputError, match="has no answers"):
        score_with_reader(reader, no_answers, "pdist")
    with pytest.raises(ConfigError, match="layers"):
        score_with_reader(reader, EXAMPLES, "loop", layers=[0])


def _single_passage_loss(reader, example, ctxs) -> float:
    batch = reader.collator(n_passages=len(ctxs))([{**example, "ctxs": ctxs}])
    return reader(**batch.model_inputs()).loss.item()


def test_pdist_equals_reading_each_passage_alone(reader):
    reader.eval()
    example = EXAMPLES[1]
    batch = reader.collator()([EXAMPLES[0], example])
    mean_scores = answer_log_likelihood(reader, batch, chunk_size=2)
    assert mean_scores[0, 2].item() == -math.inf
    for k, ctx in enumerate(example["ctxs"]):
        # Mean token loss with only passage k in context = - mean log-likelihood.
        assert mean_scores[1, k].item() == pytest.approx(-_single_passage_loss(reader, example, [ctx]), abs=1e-4)
    n_tokens = (batch.labels[1] != -100).sum().item()
    sum_scores = answer_log_likelihood(reader, batch, normalize="sum")
    assert torch.allclose(sum_scores[1], mean_scores[1] * n_tokens, atol=1e-4)


def test_loop_is_the_loss_increase_without_the_passage(reader):
    reader.eval()
    example = EXAMPLES[1]
    batch = reader.collator()([example, EXAMPLES[2]])
    scores = leave_one_out_scores(reader, batch, chunk_size=2)
    full = _single_passage_loss(reader, example, example["ctxs"])
    for k in range(3):
        rest = [c for j, c in enumerate(example["ctxs"]) if j != k]
        assert scores[0, k].item() == pytest.approx(_single_passage_loss(reader, example, rest) - full, abs=1e-4)
    assert scores[1].tolist()[0] == 0.0 and scores[1, 1].item() == -math.inf  # a lone passage; absent slots


def test_answer_hits_against_hand_counted_lists():
    from distillir.teachers import TeacherScores, answer_hits

    def ctx(pid, text):
        return {"id": pid, "title": "", "text": text}

    examples = [
        # retriever's first passage has the answer; the teacher prefers the second, which does not
        {"id": "q1", "answers": ["Paris"], "ctxs": [ctx("a", "Paris is big"), ctx("b", "Lyon"), ctx("c", "Nice")]},
        # the answer is third for the retriever, first for the teacher
        {"id": "q2", "answers": ["1871"], "ctxs": [ctx("d", "no"), ctx("e", "nope"), ctx("f", "in 1871")]},
        # no passage holds the answer: counted in lists, not in answer_lists
        {"id": "q3", "answers": ["x9"], "ctxs": [ctx("g", "none"), ctx("h", "none")]},
    ]
    scores = TeacherScores("hand")
    scores.add("q1", ["a", "b", "c"], [0.1, 0.9, 0.0])
    scores.add("q2", ["d", "e", "f"], [0.0, 0.1, 0.5])
    scores.add("q3", ["g", "h"], [1.0, 0.0])
    got = answer_hits(scores, examples)
    assert got["lists"] == 3 and got["answer_lists"] == 2
    assert got["teacher_hit@1"] == 0.5 and got["retriever_hit@1"] == 0.5
    assert got["teacher_mrr"] == pytest.approx((1 / 2 + 1) / 2) and got["retriever_mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_answer_match_teacher_scores_answer_bearing_passages_one(tmp_path):
    from distillir.teachers import answer_hits, answer_match_scores, read_teacher_scores

    def ctx(pid, text, title=""):
        return {"id": pid, "title": title, "text": text}

    examples = [
        {"id": "q1", "question": "capital?", "answers": ["Paris", "paris city"],
         "ctxs": [ctx("a", "Lyon"), ctx("b", "It is Paris."), ctx("c", "PARIS CITY hall")]},
        # the answer only in the title: matched only with include_title
        {"id": "q2", "question": "year?", "answers": ["1871"], "ctxs": [ctx("d", "nothing", "1871 events")]},
        {"id": "q3", "question": "no answers", "answers": [], "ctxs": [ctx("e", "x")]},  # skipped
    ]
    scores = answer_match_scores(examples)
    assert scores.teacher == "answer-match" and len(scores) == 2
    assert scores["q1"] == (["a", "b", "c"], [0.0, 1.0, 1.0])
    assert scores["q2"] == (["d"], [0.0])
    assert answer_match_scores(examples, include_title=True)["q2"] == (["d"], [1.0])
    assert answer_hits(scores, examples)["teacher_hit@1"] == 1.0  # it always knows, where anything does
    scores.write(tmp_path / "s.jsonl")  # the shared file format round-trips
    back = read_teacher_scores(tmp_path / "s.jsonl")
    assert back["q1"] == scores["q1"] and back.answers["q1"] == ["Paris", "paris city"]
