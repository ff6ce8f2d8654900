"""BM25 retriever: scores against the Lucene formula and rank_bm25, tokenization, ties, persistence, cache."""

from __future__ import annotations

import json
import math

import pytest

from distillir.data.types import Corpus, Queries
from distillir.errors import ConfigError, IndexMismatchError
from distillir.retrievers import bm25 as bm25_module
from distillir.retrievers.base import load_index
from distillir.retrievers.bm25 import BM25Retriever, bm25_cached, tokenize

RAW = {"stemmer": None, "stopwords": None, "include_title": False}  # whitespace-like tokens, no stemming


def lucene_bm25(docs: list[list[str]], query: list[str], k1: float, b: float) -> list[float]:
    """Lucene's BM25 (no (k1+1) factor, idf = ln(1 + (N - df + .5) / (df + .5))), straight from the formula."""
    n = len(docs)
    avgdl = sum(len(d) for d in docs) / n
    scores = []
    for doc in docs:
        s = 0.0
        for term in query:
            df = sum(term in d for d in docs)
            if df == 0:
                continue
            tf = doc.count(term)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            s += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(s)
    return scores


def test_scores_equal_hand_computed_lucene_bm25():
    texts = ["apple banana apple", "banana cherry", "cherry cherry cherry durian apple"]
    corpus = Corpus(["d1", "d2", "d3"], texts, ["", "", ""])
    retriever = BM25Retriever.build(corpus, k1=1.2, b=0.75, **RAW)
    docs = [t.split() for t in texts]
    for query in ["apple", "cherry banana", "durian apple apple"]:
        expected = lucene_bm25(docs, query.split(), k1=1.2, b=0.75)
        got = dict(retriever.search([query], top_k=3)["0"])
        for pid, score in zip(corpus.ids, expected):
            if score > 0:
                assert got[pid] == pytest.approx(score, rel=1e-6)
            else:
                assert pid not in got  # passages sharing no term are left out


def test_scores_match_rank_bm25_with_lucene_idf(tiny_corpus, tiny_queries):
    rank_bm25 = pytest.importorskip("rank_bm25")

    class LuceneIdfOkapi(rank_bm25.BM25Okapi):
        # rank_bm25's Okapi IDF (with its epsilon floor) differs from Lucene's; give it Lucene's.
        def _calc_idf(self, nd):
            for word, df in nd.items():
                self.idf[word] = math.log(1 + (self.corpus_size - df + 0.5) / (df + 0.5))

    retriever = BM25Retriever.build(tiny_corpus)
    texts = [tiny_corpus.with_title(i) for i in range(len(tiny_corpus))]
    reference = LuceneIdfOkapi(tokenize(texts, "english", "en"), k1=0.9, b=0.4)
    run = retriever.search(tiny_queries, top_k=5)
    for qid, tokens in zip(tiny_queries.ids, tokenize(tiny_queries.texts, "english", "en")):
        expected = reference.get_scores(tokens) / (0.9 + 1)  # rank_bm25 keeps the (k1 + 1) factor
        got = dict(run[qid])
        assert got, qid
        for pid, score in zip(tiny_corpus.ids, expected):
            assert got.get(pid, 0.0) == pytest.approx(score, rel=1e-5, abs=1e-7)


def test_stemming_and_stopwords(tiny_corpus):
    corpus = Corpus(["a", "b"], ["She was running home", "A quiet evening"], ["", ""])
    stemmed = BM25Retriever.build(corpus)
    assert [pid for pid, _ in stemmed.search(["run"], 2)["0"]] == ["a"]
    assert [pid for pid, _ in stemmed.search(["runs"], 2)["0"]] == ["a"]
    unstemmed = BM25Retriever.build(corpus, stemmer=None)
    assert unstemmed.search(["run"], 2)["0"] == []
    # "it was" is all stopwords (Lucene's 33-word English list): an empty list rather than an error
    assert stemmed.search(["it was"], 2)["0"] == []


def test_queries_without_known_terms_get_empty_lists(tiny_corpus):
    retriever = BM25Retriever.build(tiny_corpus)
    run = retriever.search(["zzyzx qwerty", "", "the of and", "capital of France"], top_k=3)
    assert list(run) == ["0", "1", "2", "3"]
    assert run["0"] == run["1"] == run["2"] == []
    assert run["3"][0][0] == "p1"


def test_title_is_indexed_unless_asked_not_to(tiny_corpus):
    # "Mitochondrion" appears only in p5's title ("mitochondria" in its text stems differently)
    with_title = BM25Retriever.build(tiny_corpus)
    without = BM25Retriever.build(tiny_corpus, include_title=False)
    assert [p for p, _ in with_title.search(["mitochondrion"], 5)["0"]] == ["p5"]
    assert without.search(["mitochondrion"], 5)["0"] == []


def test_ties_at_the_cutoff_resolved_by_passage_id():
    # 30 identical passages under shuffled ids: every top-k must be the k smallest ids.
    ids = [f"p{i:02d}" for i in range(30)]
    shuffled = ids[::7] + [i for i in ids if i not in ids[::7]]
    corpus = Corpus(shuffled, ["same words here"] * 30, [""] * 30)
    retriever = BM25Retriever.build(corpus)
    for k in (1, 5, 29):
        hits = retriever.search(["words"], top_k=k)["0"]
        assert [p for p, _ in hits] == sorted(ids)[:k]
    full = retriever.search(["words"], top_k=100)["0"]  # top_k beyond the corpus is fine
    assert len(full) == 30


def test_top_k_is_a_prefix_of_a_deeper_search(tiny_corpus, tiny_queries):
    retriever = BM25Retriever.build(tiny_corpus)
    deep = retriever.search(tiny_queries, top_k=5)
    for k in (1, 2, 3):
        shallow = retriever.search(tiny_queries, top_k=k)
        assert shallow.to_dict() == deep.top(k).to_dict()
    assert all(hits == [] for hits in retriever.search(tiny_queries, top_k=0).values())


def test_threads_give_the_same_run(tiny_corpus, tiny_queries):
    retriever = BM25Retriever.build(tiny_corpus)
    assert retriever.search(tiny_queries, 3, n_threads=2).to_dict() == retriever.search(tiny_queries, 3).to_dict()


def test_save_load_round_trip(tmp_path, tiny_corpus, tiny_queries):
    retriever = BM25Retriever.build(tiny_corpus, k1=1.1, b=0.6)
    retriever.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["kind"] == "bm25"
    assert manifest["bm25"]["k1"] == 1.1 and manifest["bm25"]["stemmer"] == "english"
    assert manifest["corpus"]["fingerprint"] == tiny_corpus.fingerprint()

    loaded = load_index(tmp_path / "idx", tiny_corpus)
    assert isinstance(loaded, BM25Retriever)
    assert loaded.params == retriever.params
    assert loaded.search(tiny_queries, 5).to_dict() == retriever.search(tiny_queries, 5).to_dict()
    mapped = load_index(tmp_path / "idx", mmap=True)
    assert mapped.search(tiny_queries, 5).to_dict() == retriever.search(tiny_queries, 5).to_dict()


def test_loading_with_another_corpus_is_refused(tmp_path, tiny_corpus):
    BM25Retriever.build(tiny_corpus).save(tmp_path / "idx")
    other = Corpus(tiny_corpus.ids, tiny_corpus.texts[:-1] + ["changed"], tiny_corpus.titles)
    with pytest.raises(IndexMismatchError, match="fingerprint"):
        load_index(tmp_path / "idx", other)


def test_invalid_settings_are_refused(tiny_corpus):
    with pytest.raises(ConfigError, match="method"):
        BM25Retriever.build(tiny_corpus, method="bm25+")
    with pytest.raises(ConfigError, match="stemmer"):
        BM25Retriever.build(tiny_corpus, stemmer="klingon")
    with pytest.raises(ConfigError, match="stopword"):
        BM25Retriever.build(tiny_corpus, stopwords="klingon")
    with pytest.raises(ConfigError, match="unknown BM25 setting"):
        BM25Retriever.build(tiny_corpus, k3=1.0)


def test_custom_stopword_list(tiny_corpus):
    retriever = BM25Retriever.build(tiny_corpus, stopwords=["capital", "the"])
    assert retriever.search(["capital"], 5)["0"] == []
    assert retriever.params["stopwords"] == ["capital", "the"]


def test_bm25_cached_builds_once(tmp_path, monkeypatch, tiny_corpus):
    monkeypatch.setenv("DISTILLIR_CACHE", str(tmp_path))
    first = bm25_cached(tiny_corpus, k1=1.0)
    entries = list((tmp_path / "bm25").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(tiny_corpus.fingerprint())

    def no_build(*args, **kwargs):
        raise AssertionError("the cached index should have been loaded")

    monkeypatch.setattr(bm25_module.BM25Retriever, "build", no_build)
    again = bm25_cached(tiny_corpus, k1=1.0)
    queries = Queries(["q"], ["capital of Germany"])
    assert again.search(queries, 3).to_dict() == first.search(queries, 3).to_dict()
    # Explicit defaults hash like omitted ones; other settings get their own entry.
    assert bm25_module.params_key(k1=0.9) == bm25_module.params_key()
    assert bm25_module.params_key(b=0.5) != bm25_module.params_key()
