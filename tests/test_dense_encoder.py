"""BiEncoder with a tiny random BERT: pooling math, towers, persistence, and the fast encoding path."""

from __future__ import annotations

import json

import pytest
import torch

from distillir.data.types import Corpus
from distillir.errors import ConfigError
from distillir.retrievers.dense.encoder import BiEncoder, encode_corpus_cached, pool

QUERIES = [
    "what is the capital of france",
    "eiffel tower",
    "a much longer question about photosynthesis in plants",
    "x",
    "when was the tower completed and by whom was it designed",
]


@pytest.fixture()
def encoder(tiny_bert_dir) -> BiEncoder:
    return BiEncoder.from_pretrained(tiny_bert_dir)


def test_mean_pooling_averages_only_unmasked_tokens():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.tensor([[2.0, 3.0], [7.0, 8.0]])
    assert torch.equal(pool(hidden, mask, "mean"), expected)
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_padding_does_not_change_an_embedding(encoder):
    alone = encoder.encode_query(encoder.tokenize_queries(["eiffel tower"]))
    batch = encoder.tokenize_queries(["eiffel tower", QUERIES[2]])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # really padded
    padded = encoder.encode_query(batch)[0]
    torch.testing.assert_close(padded, alone[0], atol=1e-5, rtol=1e-5)


def test_normalize_gives_unit_vectors(tiny_bert_dir):
    enc = BiEncoder.from_pretrained(tiny_bert_dir, normalize=True)
    norms = enc.encode_queries(QUERIES).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(len(QUERIES)))
    raw = BiEncoder.from_pretrained(tiny_bert_dir).encode_queries(QUERIES).norm(dim=1)
    assert not torch.allclose(raw, torch.ones(len(QUERIES)))


def test_similarity_is_scaled_inner_product(tiny_bert_dir):
    enc = BiEncoder.from_pretrained(tiny_bert_dir, scale=20.0)
    q, p = torch.randn(3, 32), torch.randn(4, 32)
    torch.testing.assert_close(enc.similarity(q, p), 20.0 * q @ p.T)


def test_shared_towers_share_parameters(encoder):
    assert encoder.shared and encoder.passage_model is encoder.query_model
    assert len(list(encoder.parameters())) == len(list(encoder.query_model.parameters()))
    assert not any(k.startswith("passage_model") for k in encoder.state_dict())


def test_separate_towers_start_equal_and_train_apart(tiny_bert_dir):
    enc = BiEncoder.from_pretrained(tiny_bert_dir, shared=False)
    assert not enc.shared
    q_params, p_params = list(enc.query_model.parameters()), list(enc.passage_model.parameters())
    assert all(a.data_ptr() != b.data_ptr() and torch.equal(a, b) for a, b in zip(q_params, p_params))

    enc.train()
    q = enc.encode_query(enc.tokenize_queries(["eiffel tower"]))
    q.sum().backward()
    assert q_params[0].grad is not None and p_params[0].grad is None


def test_encode_keeps_gradients_and_helpers_do_not(encoder):
    assert encoder.encode_passage(encoder.tokenize_passages(["T"], ["text"])).requires_grad
    out = encoder.encode_queries(["text"])
    assert not out.requires_grad and out.dtype == torch.float32 and out.device.type == "cpu"
    out += 1  # an ordinary tensor, not an inference-mode one


def test_passages_are_title_text_pairs(encoder):
    batch = encoder.tokenize_passages(["Paris", ""], ["capital of france", "no title here"])
    tok = encoder.tokenizer
    first = tok.convert_ids_to_tokens(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert first == ["[CLS]", "paris", "[SEP]", "capital", "of", "france", "[SEP]"]
    assert batch["token_type_ids"][0].tolist()[:7] == [0, 0, 0, 1, 1, 1, 1]
    second = tok.convert_ids_to_tokens(batch["input_ids"][1][batch["attention_mask"][1].bool()])
    assert second == ["[CLS]", "no", "title", "here", "[SEP]"]


def test_truncation_keeps_title(tiny_bert_dir):
    enc = BiEncoder.from_pretrained(tiny_bert_dir, passage_max_length=8, query_max_length=4)
    batch = enc.tokenize_passages(["Paris"], ["word " * 50])
    assert batch["input_ids"].shape[1] == 8
    assert enc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])[:3] == ["[CLS]", "paris", "[SEP]"]
    assert enc.tokenize_queries(["one two three four five"])["input_ids"].shape[1] == 4


def test_length_sorted_encoding_matches_one_by_one(encoder, tiny_corpus):
    batched = encoder.encode_queries(QUERIES, batch_size=2)
    single = torch.cat([encoder.encode_queries([q]) for q in QUERIES])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)

    corpus = encoder.encode_corpus(tiny_corpus, batch_size=2)
    single = torch.cat([encoder.encode_passages([t], [x]) for t, x in zip(tiny_corpus.titles, tiny_corpus.texts)])
    torch.testing.assert_close(corpus, single, atol=1e-5, rtol=1e-5)
    assert encoder.encode_queries([]).shape == (0, 32)


def test_encoding_restores_training_mode(encoder):
    encoder.train()
    encoder.encode_queries(["a"])
    assert encoder.training


def test_reduced_precision_stays_close(encoder):
    full = encoder.encode_queries(QUERIES)
    for kwargs in ({"quantize": "int8"}, {"dtype": "bfloat16"}):
        cos = torch.nn.functional.cosine_similarity(full, encoder.encode_queries(QUERIES, **kwargs))
        assert cos.min() > 0.9, kwargs
    with pytest.raises(ConfigError, match="GPU"):
        encoder.encode_queries(QUERIES, dtype="float16", device="cpu")


@pytest.mark.parametrize("shared", [True, False])
def test_save_load_round_trip(tiny_bert_dir, tmp_path, shared):
    enc = BiEncoder.from_pretrained(
        tiny_bert_dir,
        shared=shared,
        pooling="cls",
        normalize=True,
        scale=0.5,
        query_max_length=16,
        passage_max_length=32,
    )
    if not shared:  # make the towers differ, as training would
        with torch.no_grad():
            enc.passage_model.embeddings.word_embeddings.weight.mul_(1.5)
    enc.save_pretrained(tmp_path / "enc")
    back = BiEncoder.from_pretrained(tmp_path / "enc")
    assert back.settings == enc.settings
    assert torch.equal(back.encode_queries(QUERIES), enc.encode_queries(QUERIES))
    assert torch.equal(back.encode_passages(["T"], ["some text"]), enc.encode_passages(["T"], ["some text"]))
    if not shared:
        assert (tmp_path / "enc" / "query" / "config.json").is_file()
        assert (tmp_path / "enc" / "passage" / "model.safetensors").is_file()
        with pytest.raises(ConfigError, match="separate"):
            BiEncoder.from_pretrained(tmp_path / "enc", shared=True)


def test_saved_shared_encoder_is_a_plain_hf_and_st_model(encoder, tmp_path):
    from transformers import AutoModel

    encoder.save_pretrained(tmp_path / "enc")
    plain = AutoModel.from_pretrained(tmp_path / "enc")
    batch = encoder.tokenize_queries(["eiffel tower"])
    with torch.no_grad():
        hidden = plain.eval()(**batch).last_hidden_state
    torch.testing.assert_close(hidden.mean(dim=1), encoder.encode_queries(["eiffel tower"]))
    modules = json.loads((tmp_path / "enc" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((tmp_path / "enc" / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 32


def test_minilm_defaults_follow_its_sentence_transformers_files(minilm_path):
    enc = BiEncoder.from_pretrained(minilm_path, num_hidden_layers=1)
    assert (enc.settings.pooling, enc.settings.normalize, enc.settings.passage_max_length) == ("mean", True, 256)
    assert enc.pretrained_path() is None  # a truncated model is not the one on disk


def test_pretrained_path_tracks_in_memory_changes(encoder, tmp_path):
    assert encoder.pretrained_path() is not None
    with torch.no_grad():
        encoder.query_model.pooler.dense.bias.add_(1.0)
    assert encoder.pretrained_path() is None
    encoder.save_pretrained(tmp_path / "enc")
    assert encoder.pretrained_path() == (tmp_path / "enc").resolve()


def test_corpus_embeddings_are_cached(encoder, tiny_corpus, tmp_path, monkeypatch):
    first = encode_corpus_cached(encoder, tiny_corpus, directory=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("should have read the cache")

    monkeypatch.setattr(encoder, "encode_corpus", fail)
    assert torch.equal(encode_corpus_cached(encoder, tiny_corpus, directory=tmp_path), first)
    monkeypatch.undo()

    with torch.no_grad():  # new weights: a new cache entry, not the stale one
        encoder.passage_model.embeddings.word_embeddings.weight.mul_(2.0)
    second = encode_corpus_cached(encoder, tiny_corpus, directory=tmp_path)
    assert not torch.equal(second, first) and len(list(tmp_path.glob("*.npy"))) == 2

    other = Corpus(tiny_corpus.ids[:2], tiny_corpus.texts[:2], tiny_corpus.titles[:2])
    assert encode_corpus_cached(encoder, other, directory=tmp_path).shape == (2, 32)


@pytest.mark.parametrize(("shared", "normalize", "pooling"), [(True, True, "mean"), (False, False, "cls")])
def test_model_card_snippet_reproduces_the_indexed_vectors(tiny_bert_dir, tmp_path, shared, normalize, pooling):
    """The card's plain-transformers snippet, run as written, gives distillir's query and passage vectors."""
    import re

    encoder = BiEncoder.from_pretrained(tiny_bert_dir, shared=shared, normalize=normalize, pooling=pooling,
                                        scale=20.0)
    encoder.card_training = {"recipe": "test", "steps": 3}
    path = encoder.save_pretrained(tmp_path / "enc")
    card = (path / "README.md").read_text()
    assert "(title, text)" in card and "| recipe | test |" in card and ("SentenceTransformer" in card) == shared
    code = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)[1].replace("PATH", str(path))
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the card's own snippet
    encoder.eval()
    q = encoder.encode_queries(["who wrote hamlet?"])
    p = encoder.encode_passages(["Hamlet"], ["Hamlet is a tragedy by William Shakespeare."])
    assert torch.allclose(scope["queries"], q, atol=1e-5) and torch.allclose(scope["passages"], p, atol=1e-5)
    assert torch.allclose(scope["scores"], 20.0 * q @ p.T, atol=1e-4)
