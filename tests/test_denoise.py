"""Re-ranker denoising: thresholds move passages between extra positives, negatives and dropped; hybrid lists."""

from __future__ import annotations

import math

import pytest

from distillir.data.negatives import read_training_lists, write_training_lists
from distillir.data.run import Run
from distillir.data.types import Queries
from distillir.errors import ConfigError
from distillir.rankers.base import Ranker
from distillir.rankers.denoise import (
    check_thresholds,
    denoise_lists,
    relabel,
    scaled,
    undenoised_lists,
)


class TitleScores(Ranker):
    """A stand-in re-ranker: the logit of a pair is looked up by the passage's title."""

    def __init__(self, logits: dict[str, float]):
        self.logits = logits
        self.calls = 0

    def score_pairs(self, queries, passages, batch_size=32, show_progress=False):
        self.calls += 1
        return [self.logits[title] for title, _ in passages]


# Logits and their sigmoids: 4 -> 0.982, 1 -> 0.731, 0 -> 0.5, -1 -> 0.269, -4 -> 0.018
LOGITS = {"p2": 4.0, "p3": 1.0, "p4": 0.0, "p5": -1.0, "p6": -4.0}


def hits(*pids):
    return [(pid, LOGITS[pid]) for pid in pids]


def test_scaled_is_a_stable_sigmoid_or_the_logit():
    assert scaled(0.0, "sigmoid") == 0.5
    assert scaled(2.0, "sigmoid") == pytest.approx(1 / (1 + math.exp(-2)))
    assert scaled(-800.0, "sigmoid") == 0.0 and scaled(800.0, "sigmoid") == 1.0  # no overflow
    assert scaled(-3.5, "logit") == -3.5


@pytest.mark.parametrize(
    "pos, neg, scale, positives, negatives, dropped",
    [
        (0.9, 0.1, "sigmoid", ["p2"], ["p6"], ["p3", "p4", "p5"]),  # RocketQA's thresholds
        (0.7, 0.1, "sigmoid", ["p2", "p3"], ["p6"], ["p4", "p5"]),  # a lower pos threshold: p3 becomes positive
        (0.9, 0.5, "sigmoid", ["p2"], ["p4", "p5", "p6"], ["p3"]),  # a higher neg threshold: p4, p5 negatives
        (0.5, 0.5, "sigmoid", ["p2", "p3", "p4"], ["p5", "p6"], []),  # one cut: nothing dropped, ties positive
        (1.0, 0.0, "sigmoid", [], [], ["p2", "p3", "p4", "p5", "p6"]),  # unreachable thresholds: all dropped
        (0.5, -0.5, "logit", ["p2", "p3"], ["p5", "p6"], ["p4"]),  # thresholds on the raw logit
        # Relative to the positive's logit (3 here): sigmoid(1) = 0.73 for p2, sigmoid(-2) = 0.12 for p3, ...
        (0.7, 0.2, "relative", ["p2"], ["p3", "p4", "p5", "p6"], []),
        (0.9, 0.1, "relative", [], ["p4", "p5", "p6"], ["p2", "p3"]),
    ],
)
def test_thresholds_move_passages_between_lists(pos, neg, scale, positives, negatives, dropped):
    result = relabel({"q": hits("p2", "p3", "p4", "p5", "p6")}, {}, pos_threshold=pos, neg_threshold=neg,
                     scale=scale, reference={"q": 3.0})["q"]
    assert (result.positives, result.negatives, result.dropped) == (positives, negatives, dropped)


def test_the_relative_scale_ignores_a_shift_of_every_logit(corpus):
    queries = Queries(["q1"], ["What is the capital of France?"])
    run = Run({"q1": [("p2", 5), ("p3", 4), ("p4", 3), ("p5", 2)]})
    results = []
    for shift in (0.0, 7.5):  # a listwise-trained ranker can be off by any constant
        logits = {pid: value + shift for pid, value in {**LOGITS, "p1": 1.0}.items()}
        results.append(denoise_lists(TitleScores(logits), run, queries, corpus, {"q1": {"p1"}}, depth=4,
                                     scale="relative", pos_threshold=0.9, neg_threshold=0.3))
    for result in results:  # p2: 4 - 1 -> sigmoid(3) = 0.95; p3: 0.5; p4: 0.27; p5: 0.12
        assert (result.examples[0].positives, result.examples[0].negatives) == (["p1", "p2"], ["p4", "p5"])
        assert result.relabelled["q1"].dropped == ["p3"]
    with pytest.raises(ConfigError, match="reference"):
        relabel({"q": hits("p2")}, {}, scale="relative")


def test_known_positives_are_never_relabelled_and_order_is_kept():
    result = relabel({"q": hits("p6", "p2", "p5")}, {"q": {"p2"}})["q"]
    assert result.positives == [] and result.negatives == ["p6"] and result.dropped == ["p5"]


@pytest.mark.parametrize("pos, neg, scale", [(0.1, 0.9, "sigmoid"), (1.5, 0.1, "sigmoid"), (0.9, -0.1, "sigmoid"),
                                              (0.9, 0.1, "softmax")])
def test_invalid_thresholds_are_refused(pos, neg, scale):
    with pytest.raises(ConfigError):
        check_thresholds(pos, neg, scale)


@pytest.fixture()
def corpus():
    from distillir.data.types import Corpus

    texts = {
        "p1": "Paris is the capital and largest city of France.",
        "p2": "Paris hosts the French government.",
        "p3": "Berlin is the capital of Germany.",
        "p4": "Lyon is a large French city.",
        "p5": "The Eiffel Tower was completed in 1889.",
        "p6": "Photosynthesis converts light energy into chemical energy.",
    }
    ids = list(texts)
    return Corpus(ids, [texts[i] for i in ids], ids, source="<denoise>")  # title = id, for TitleScores


def test_denoise_lists_relabels_the_top_n_and_guards_answer_passages(corpus):
    queries = Queries(["q1", "q2"], ["What is the capital of France?", "Which gas do plants release?"],
                      answers=[["capital"], ["oxygen"]])
    positives = {"q1": {"p1"}, "q2": {"p6"}}
    run = Run({"q1": [("p1", 9), ("p2", 8), ("p3", 7), ("p4", 6), ("p5", 5), ("p6", 4)],
               "q2": [("p6", 9), ("p2", 8)]})
    ranker = TitleScores({**LOGITS, "p1": 5.0, "p3": -3.0})  # p3 contains "capital" but scores low
    result = denoise_lists(ranker, run, queries, corpus, positives, depth=5)

    q1 = result.relabelled["q1"]
    assert q1.positives == ["p2"]  # sigmoid(4) >= 0.9: a positive the labels missed
    assert q1.negatives == []  # p3 (answer string) is not trusted as a negative; p6 is beyond depth 5
    assert set(q1.dropped) == {"p3", "p4", "p5"}
    assert result.relabelled["q2"].negatives == []  # p2: sigmoid(4) -> extra positive of q2 as well
    assert result.examples == []  # neither query kept a negative
    assert result.stats.lists_without_negatives == 2 and result.stats.answer_dropped == 1
    assert result.stats.scored == 5 and result.stats.extra_positives == 2
    assert set(result.scores) == {"q1", "q2"} and len(result.scores["q1"]) == 5

    # A higher negative threshold turns the uncertain p4 and p5 into hard negatives, in retriever order.
    result = denoise_lists(ranker, run, queries, corpus, positives, depth=5, neg_threshold=0.6)
    (ex,) = result.examples
    assert (ex.qid, ex.positives, ex.negatives) == ("q1", ["p1", "p2"], ["p4", "p5"])
    assert result.stats.quantiles["max"] == pytest.approx(scaled(4.0, "sigmoid"), abs=1e-4)
    # ... without extra positives, at most one negative, and the answer filter off.
    result = denoise_lists(ranker, run, queries, corpus, positives, depth=5, neg_threshold=0.6,
                           extra_positives=False, max_negatives=1, exclude_answers=False)
    (ex,) = result.examples
    assert (ex.positives, ex.negatives) == (["p1"], ["p3"])


def test_undenoised_and_denoised_lists_round_trip(corpus, tmp_path):
    queries = Queries(["q1", "q2"], ["capital of France", "plants"])
    positives = {"q1": {"p1"}, "q2": {"p6"}}
    run = Run({"q1": [(f"p{i}", 10 - i) for i in range(1, 7)], "q2": [("p6", 3), ("p5", 2)]})
    undenoised = undenoised_lists(run, queries, corpus, positives, n=2, depth=4, seed=3)
    assert [ex.qid for ex in undenoised] == ["q1", "q2"]
    assert len(undenoised[0].negatives) == 2 and set(undenoised[0].negatives) <= {"p2", "p3", "p4"}
    assert undenoised[1].negatives == ["p5"]  # the only candidate within depth
    assert undenoised == undenoised_lists(run, queries, corpus, positives, n=2, depth=4, seed=3)  # seeded

    ranker = TitleScores({**LOGITS, "p1": 5.0})
    denoised = denoise_lists(ranker, run, queries, corpus, positives, depth=6, neg_threshold=0.5).examples
    both = undenoised + denoised
    write_training_lists(tmp_path / "undenoised.jsonl", undenoised)
    write_training_lists(tmp_path / "denoised.jsonl", denoised)
    back = read_training_lists(tmp_path / "undenoised.jsonl", corpus) + read_training_lists(
        tmp_path / "denoised.jsonl", corpus)
    assert back == both
