"""Vector indexes (exact and faiss) and the dense retriever built on them, with a tiny random BERT."""

from __future__ import annotations

import builtins
import json
import shutil

import pytest
import torch

from distillir.errors import ConfigError, IndexMismatchError
from distillir.retrievers.base import load_index
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.retrievers.dense.index import ExactIndex, FaissIndex, load_vector_index
from distillir.retrievers.dense.retriever import DenseRetriever

try:
    import faiss
except ImportError:  # faiss-cpu is optional
    faiss = None
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss-cpu not installed")


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread():
    """faiss' OpenMP threads spin for seconds on a busy 2-core machine; one thread is instant at this size."""
    if faiss is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def brute_force(queries: torch.Tensor, passages: torch.Tensor, k: int) -> list[list[tuple[float, int]]]:
    """Reference: every (score, row), sorted by score descending then row ascending."""
    scores = (queries @ passages.T).tolist()
    return [sorted(((s, r) for r, s in enumerate(row)), key=lambda x: (-x[0], x[1]))[:k] for row in scores]


def as_pairs(scores: torch.Tensor, rows: torch.Tensor) -> list[list[tuple[float, int]]]:
    return [list(zip(s, r)) for s, r in zip(scores.tolist(), rows.tolist())]


@pytest.mark.parametrize("block_elements", [1 << 26, 40])  # one block, and many corpus chunks to merge
def test_exact_index_matches_brute_force_with_ties(block_elements):
    gen = torch.Generator().manual_seed(0)
    # Small integer vectors: many exactly equal scores, including across the k-th place.
    passages = torch.randint(-1, 2, (60, 4), generator=gen).float()
    queries = torch.randint(-1, 2, (7, 4), generator=gen).float()
    index = ExactIndex(passages, block_elements=block_elements)
    for k in (1, 5, 13, 60, 100):
        assert as_pairs(*index.search(queries, k)) == brute_force(queries, passages, k)


def test_exact_index_add_save_load(tmp_path):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, 8, generator=gen), torch.randn(20, 8, generator=gen)
    index = ExactIndex(a)
    index.add(b)
    q = torch.randn(3, 8, generator=gen)
    scores, rows = index.search(q, 10)
    assert as_pairs(scores, rows) == brute_force(q, torch.cat([a, b]), 10)

    index.save(tmp_path / "f32")
    back = load_vector_index(tmp_path / "f32")
    assert isinstance(back, ExactIndex) and torch.equal(back.search(q, 10)[1], rows)

    index.save(tmp_path / "f16", embeddings_dtype="float16")
    torch.testing.assert_close(load_vector_index(tmp_path / "f16").search(q, 10)[0], scores, atol=1e-2, rtol=1e-2)


def test_exact_index_empty_cases():
    index = ExactIndex(torch.randn(3, 4))
    scores, rows = index.search(torch.empty(0, 4), 5)
    assert scores.shape == (0, 3) and rows.shape == (0, 3)
    with pytest.raises(ValueError, match="dim"):
        index.search(torch.randn(1, 5), 2)


@needs_faiss
def test_faiss_flat_equals_exact(tmp_path):
    gen = torch.Generator().manual_seed(2)
    passages, queries = torch.randn(200, 16, generator=gen), torch.randn(10, 16, generator=gen)
    exact_scores, exact_rows = ExactIndex(passages).search(queries, 10)
    flat = FaissIndex("flat")
    flat.add(passages)
    scores, rows = flat.search(queries, 10)
    assert torch.equal(rows, exact_rows)
    torch.testing.assert_close(scores, exact_scores)
    flat.save(tmp_path / "flat")
    assert torch.equal(load_vector_index(tmp_path / "flat").search(queries, 10)[1], exact_rows)


def recall(rows: torch.Tensor, truth: torch.Tensor) -> float:
    return sum(len(set(a) & set(b)) for a, b in zip(rows.tolist(), truth.tolist())) / truth.numel()


@needs_faiss
def test_hnsw_has_high_recall_and_survives_save(tmp_path):
    gen = torch.Generator().manual_seed(3)
    passages, queries = torch.randn(2000, 16, generator=gen), torch.randn(50, 16, generator=gen)
    truth = ExactIndex(passages).search(queries, 10)[1]
    hnsw = FaissIndex("hnsw", M=16, efSearch=64)
    hnsw.add(passages)
    rows = hnsw.search(queries, 10)[1]
    assert recall(rows, truth) >= 0.95
    hnsw.save(tmp_path / "hnsw")
    assert torch.equal(load_vector_index(tmp_path / "hnsw").search(queries, 10)[1], rows)


@needs_faiss
def test_ivfpq_with_exact_rescoring(tmp_path):
    gen = torch.Generator().manual_seed(4)
    passages, queries = torch.randn(1000, 16, generator=gen), torch.randn(20, 16, generator=gen)
    truth = ExactIndex(passages).search(queries, 5)[1]
    ivf = FaissIndex("ivfpq", nlist=8, m=4, nbits=4, nprobe=8, rescore=200)
    ivf.add(passages)
    assert ivf.params["train_size"] == 640  # max(64 * nlist, 40 * 2^nbits) of the 1000: a sample
    scores, rows = ivf.search(queries, 5)
    assert recall(rows, truth) >= 0.9
    # Re-scored candidates carry exact inner products.
    torch.testing.assert_close(scores, torch.einsum("qd,qkd->qk", queries, passages[rows]))
    ivf.save(tmp_path / "ivf")
    assert torch.equal(load_vector_index(tmp_path / "ivf").search(queries, 5)[1], rows)
    default = FaissIndex("ivfpq", nlist=8, nbits=4)
    default.add(passages)
    assert default.params["m"] == 2  # dim / 8
    with pytest.raises(ConfigError, match="too few"):
        FaissIndex("ivfpq", nlist=64, m=4).add(passages[:100])
    with pytest.raises(ConfigError, match="unknown"):
        FaissIndex("hnsw", nprobe=3)


def test_missing_faiss_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        FaissIndex("hnsw")


# --- the dense retriever -----------------------------------------------------------------------------


@pytest.fixture()
def model_dir(tiny_bert_dir, tmp_path):
    """A private copy of the tiny model, so tests may alter it on disk."""
    return shutil.copytree(tiny_bert_dir, tmp_path / "model")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path / "cache"))


def test_search_scores_are_encoder_similarities(model_dir, tiny_corpus, tiny_queries):
    encoder = BiEncoder.from_pretrained(model_dir, scale=2.0)
    retriever = DenseRetriever.build(tiny_corpus, encoder)
    run = retriever.search(tiny_queries, top_k=3)
    assert list(run) == tiny_queries.ids and all(len(hits) == 3 for hits in run.values())
    q = encoder.encode_queries(tiny_queries.texts)
    expected = encoder.similarity(q, encoder.encode_corpus(tiny_corpus))
    for i, qid in enumerate(tiny_queries.ids):
        best = expected[i].topk(3)
        assert [pid for pid, _ in run[qid]] == [tiny_corpus.ids[r] for r in best.indices.tolist()]
        torch.testing.assert_close(torch.tensor([s for _, s in run[qid]]), best.values, atol=1e-5, rtol=1e-5)
    assert list(retriever.search(["capital of france"], top_k=2)) == ["0"]


@pytest.mark.parametrize("index", ["exact", pytest.param("hnsw", marks=needs_faiss)])
def test_save_load_search_round_trip(model_dir, tiny_corpus, tiny_queries, tmp_path, index):
    retriever = DenseRetriever.build(tiny_corpus, str(model_dir), index=index)
    before = retriever.search(tiny_queries, top_k=5)
    retriever.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["path"] == str(model_dir.resolve()) and not manifest["encoder"]["copied"]
    assert (tmp_path / "index" / "embeddings.npy").is_file()

    loaded = load_index(tmp_path / "index", corpus=tiny_corpus)
    assert isinstance(loaded, DenseRetriever)
    assert loaded.search(tiny_queries, top_k=5).to_dict() == before.to_dict()
    torch.testing.assert_close(loaded.embeddings, retriever.embeddings)


def test_encoder_changed_in_memory_is_copied_into_the_index(model_dir, tiny_corpus, tiny_queries, tmp_path):
    encoder = BiEncoder.from_pretrained(model_dir)
    with torch.no_grad():  # as a training step would
        encoder.query_model.embeddings.word_embeddings.weight.mul_(1.1)
    retriever = DenseRetriever.build(tiny_corpus, encoder)
    retriever.save(tmp_path / "index")
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["copied"] and (tmp_path / "index" / "encoder" / "model.safetensors").is_file()
    shutil.rmtree(model_dir)  # the copy does not depend on the original
    loaded = DenseRetriever.load(tmp_path / "index")
    assert loaded.search(tiny_queries, 5).to_dict() == retriever.search(tiny_queries, 5).to_dict()


def test_changed_model_on_disk_is_refused(model_dir, tiny_corpus, tmp_path):
    DenseRetriever.build(tiny_corpus, str(model_dir)).save(tmp_path / "index")
    other = BiEncoder.from_pretrained(model_dir)
    with torch.no_grad():
        other.query_model.pooler.dense.bias.add_(0.5)
    other.query_model.save_pretrained(model_dir)  # same path, different weights
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        load_index(tmp_path / "index")


def test_explicit_encoder_must_match(model_dir, tiny_corpus, tiny_queries, tmp_path):
    DenseRetriever.build(tiny_corpus, str(model_dir)).save(tmp_path / "index")
    same = BiEncoder.from_pretrained(model_dir)
    assert DenseRetriever.load(tmp_path / "index", encoder=same).encoder is same

    with pytest.raises(IndexMismatchError, match="settings differ"):
        DenseRetriever.load(tmp_path / "index", encoder=BiEncoder.from_pretrained(model_dir, pooling="cls"))
    changed = BiEncoder.from_pretrained(model_dir)
    with torch.no_grad():
        changed.query_model.pooler.dense.bias.add_(0.5)
    with pytest.raises(IndexMismatchError, match="weights differ"):
        DenseRetriever.load(tmp_path / "index", encoder=changed)


def test_other_corpus_is_refused(model_dir, tiny_corpus, tmp_path):
    DenseRetriever.build(tiny_corpus, str(model_dir)).save(tmp_path / "index")
    with pytest.raises(IndexMismatchError, match="corpus"):
        load_index(tmp_path / "index", corpus=tiny_corpus.subset(tiny_corpus.ids[:3]))
