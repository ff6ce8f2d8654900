"""The cross-encoder re-ranker on a tiny random BERT: scoring, re-ranking, batching, saving, training."""

from __future__ import annotations

import pytest
import torch

from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.losses import ListwiseCrossEntropyLoss
from distillir.rankers import CrossEncoder, Ranker
from distillir.rankers.cross_encoder import SETTINGS_FILE


@pytest.fixture(scope="module")
def cross_encoder(tiny_bert_dir) -> CrossEncoder:
    torch.manual_seed(0)  # the classification head is new: seed it
    return CrossEncoder.from_pretrained(tiny_bert_dir, max_length=64, query_max_length=16)


def passages_of(corpus) -> list[tuple[str, str]]:
    return list(zip(corpus.titles, corpus.texts))


def full_run(corpus, queries) -> Run:
    # Every passage for every query, with retriever scores that rank them in reverse id order.
    return Run({qid: [(pid, float(i)) for i, pid in enumerate(corpus.ids)] for qid in queries.ids}, name="bm25")


def test_scores_and_forward_shapes(cross_encoder, tiny_corpus):
    scores = cross_encoder.score("What is the capital of France?", passages_of(tiny_corpus))
    assert len(scores) == len(tiny_corpus) and all(isinstance(s, float) for s in scores)
    assert cross_encoder.score_pairs([], []) == []

    batch = cross_encoder.tokenize(["q one", "q one", "q one", "q two", "q two", "q two"], ["t"] * 6, ["text"] * 6)
    logits = cross_encoder(batch)
    assert logits.shape == (6,) and logits.requires_grad
    assert cross_encoder.list_scores(batch, 3).shape == (2, 3)
    with pytest.raises(ValueError):
        cross_encoder.list_scores(batch, 4)


def test_only_the_passage_is_truncated(cross_encoder):
    encoded = cross_encoder._encode(["short question"], ["Title"], ["word " * 500])
    ids = encoded["input_ids"][0]
    assert len(ids) == 64
    assert cross_encoder.tokenizer.decode(ids).startswith("[CLS] short question [SEP] title : word")
    # A very long question is clipped to query_max_length tokens instead of failing or eating the passage.
    encoded = cross_encoder._encode(["why " * 100], ["Title"], ["word " * 500])
    segments = encoded["token_type_ids"][0]
    assert len(encoded["input_ids"][0]) == 64
    assert segments.count(0) == 16 + 2  # [CLS] question [SEP]


def test_length_sorted_batching_matches_one_by_one(cross_encoder, tiny_corpus, tiny_queries):
    queries = [q for q in tiny_queries.texts for _ in tiny_corpus.ids]
    passages = passages_of(tiny_corpus) * len(tiny_queries)
    batched = cross_encoder.score_pairs(queries, passages, batch_size=4)
    single = [cross_encoder.score(q, [p], batch_size=1)[0] for q, p in zip(queries, passages)]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), atol=1e-5, rtol=1e-5)


def test_scoring_restores_training_mode(cross_encoder, tiny_corpus):
    cross_encoder.train()
    cross_encoder.score("q", passages_of(tiny_corpus)[:2])
    assert cross_encoder.training
    cross_encoder.eval()


def test_rerank_keeps_top_k_ordered_by_new_scores(cross_encoder, tiny_corpus, tiny_queries):
    run = full_run(tiny_corpus, tiny_queries)
    reranked = cross_encoder.rerank(run, tiny_queries, tiny_corpus, top_k=3)
    assert list(reranked) == list(run)
    for qid, query in zip(tiny_queries.ids, tiny_queries.texts):
        head = [pid for pid, _ in run[qid][:3]]
        assert sorted(pid for pid, _ in reranked[qid]) == sorted(head)  # the rest are dropped
        rows = [tiny_corpus.index_of[pid] for pid in head]
        expected = cross_encoder.score(query, [(tiny_corpus.titles[r], tiny_corpus.texts[r]) for r in rows])
        by_score = sorted(zip(head, expected), key=lambda x: (-x[1], x[0]))
        assert [pid for pid, _ in reranked[qid]] == [pid for pid, _ in by_score]
        scores = [s for _, s in reranked[qid]]
        assert scores == sorted(scores, reverse=True)


class ConstantRanker(Ranker):
    def score_pairs(self, queries, passages, batch_size=32, show_progress=False):
        return [1.0] * len(queries)


def test_rerank_ties_are_broken_by_passage_id(tiny_corpus, tiny_queries):
    run = Run({"q1": [("p5", 9.0), ("p3", 8.0), ("p1", 7.0), ("p2", 6.0)]})
    reranked = ConstantRanker().rerank(run, tiny_queries, tiny_corpus, top_k=3)
    assert reranked["q1"] == [("p1", 1.0), ("p3", 1.0), ("p5", 1.0)]
    # Plain {qid: text} mappings work as queries too.
    assert ConstantRanker().rerank(run, {"q1": "x"}, tiny_corpus, top_k=10)["q1"][0] == ("p1", 1.0)


def test_rerank_reports_unknown_ids(tiny_corpus, tiny_queries):
    with pytest.raises(InputError, match="p99"):
        ConstantRanker().rerank(Run({"q1": [("p99", 1.0)]}), tiny_queries, tiny_corpus)
    with pytest.raises(InputError, match="q99"):
        ConstantRanker().rerank(Run({"q99": [("p1", 1.0)]}), tiny_queries, tiny_corpus)


def test_save_load_round_trip(cross_encoder, tiny_corpus, tmp_path):
    from transformers import AutoModelForSequenceClassification

    query = "When was the Eiffel Tower completed?"
    before = cross_encoder.score(query, passages_of(tiny_corpus))
    saved = cross_encoder.save_pretrained(tmp_path / "ce")
    assert (saved / SETTINGS_FILE).is_file()

    loaded = CrossEncoder.from_pretrained(saved)
    assert (loaded.max_length, loaded.query_max_length) == (64, 16)
    assert loaded.score(query, passages_of(tiny_corpus)) == pytest.approx(before, abs=1e-6)

    # The directory is a plain transformers classifier with one output.
    plain = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert plain.config.num_labels == 1
    batch = cross_encoder.tokenize([query] * 2, tiny_corpus.titles[:2], tiny_corpus.texts[:2])
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits.squeeze(-1), cross_encoder.eval()(batch))


def test_refuses_multi_label_classifier(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="2 outputs"):
        CrossEncoder.from_pretrained(tmp_path)


def test_listwise_training_raises_the_positive(tiny_bert_dir, tiny_corpus):
    torch.manual_seed(0)
    model = CrossEncoder.from_pretrained(tiny_bert_dir, max_length=48)
    query = "What is the capital of France?"
    passages = passages_of(tiny_corpus)[:4]
    initial = model.score(query, passages)
    # Make the passage the untrained model likes least the positive, and put it first in the list.
    positive = min(range(len(passages)), key=initial.__getitem__)
    order = [positive] + [i for i in range(len(passages)) if i != positive]
    titles, texts = [passages[i][0] for i in order], [passages[i][1] for i in order]
    batch = model.tokenize([query] * len(order), titles, texts)

    loss_fn = ListwiseCrossEntropyLoss()
    # The 30k x 32 word embeddings stay frozen: Adam on them costs more here than the whole forward pass.
    trained = [p for name, p in model.named_parameters() if "word_embeddings" not in name]
    optimizer = torch.optim.AdamW(trained, lr=2e-3)
    model.train()
    for _ in range(6):  # 1 or 2 steps suffice at this seed; 6 leaves room
        loss = loss_fn(model.list_scores(batch, len(order)))  # positive first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    final = model.score(query, passages)
    rank_before = sorted(initial, reverse=True).index(initial[positive])
    rank_after = sorted(final, reverse=True).index(final[positive])
    assert rank_before == len(passages) - 1
    assert rank_after == 0


def test_bf16_inference_scores_close_to_float32(cross_encoder, tiny_corpus):
    query, passages = "What is the capital of France?", passages_of(tiny_corpus)
    exact = cross_encoder.with_inference_dtype("float32").score(query, passages)
    fast = cross_encoder.with_inference_dtype("bfloat16").score(query, passages)
    try:
        assert cross_encoder.inference_dtype == "bfloat16" and fast != exact  # it did run in bf16
        assert fast == pytest.approx(exact, abs=0.05)
        assert cross_encoder.with_inference_dtype("auto").inference_dtype in ("float32", "bfloat16")
        with pytest.raises(ConfigError, match="float32, bfloat16 or auto"):
            cross_encoder.with_inference_dtype("int4")
    finally:
        cross_encoder.with_inference_dtype("float32")
