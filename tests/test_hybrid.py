"""Run fusion (RRF, interpolation) against hand-computed values, and the hybrid retriever's search and persistence."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from distillir.data.run import Run
from distillir.data.types import Corpus
from distillir.errors import ConfigError, IndexMismatchError
from distillir.retrievers import base
from distillir.retrievers.base import Retriever, load_index, query_lists
from distillir.retrievers.bm25 import BM25Retriever
from distillir.retrievers.hybrid import HybridRetriever, interpolate, reciprocal_rank_fusion

RUN_A = Run({"q": [("d1", 3.0), ("d2", 2.0), ("d3", 1.0)]})
RUN_B = Run({"q": [("d3", 0.9), ("d1", 0.5), ("d4", 0.1)]})


def test_rrf_hand_computed():
    fused = reciprocal_rank_fusion([RUN_A, RUN_B], k=60)
    assert fused["q"] == [
        ("d1", 1 / 61 + 1 / 62),
        ("d3", 1 / 63 + 1 / 61),
        ("d2", 1 / 62),
        ("d4", 1 / 63),
    ]
    weighted = dict(reciprocal_rank_fusion([RUN_A, RUN_B], k=1, weights=[2.0, 1.0])["q"])
    assert weighted == pytest.approx({"d1": 2 / 2 + 1 / 3, "d2": 2 / 3, "d3": 2 / 4 + 1 / 2, "d4": 1 / 4})
    assert [p for p, _ in reciprocal_rank_fusion([RUN_A, RUN_B], top_k=2)["q"]] == ["d1", "d3"]


def test_rrf_ties_are_exact_and_broken_by_passage_id():
    # b and a swap ranks across runs: equal fused scores, whatever the order of the runs.
    x = Run({"q": [("b", 5.0), ("a", 1.0)]})
    y = Run({"q": [("a", 7.0), ("b", 2.0)]})
    for runs in ([x, y], [y, x]):
        hits = reciprocal_rank_fusion(runs)["q"]
        assert [p for p, _ in hits] == ["a", "b"]
        assert hits[0][1] == hits[1][1]


def test_rrf_ranks_follow_run_order_not_insertion_order():
    # Run sorts ties by pid, so "a" is rank 1 even though "b" was given first.
    tied = Run({"q": [("b", 1.0), ("a", 1.0)]})
    assert dict(reciprocal_rank_fusion([tied], k=0)["q"]) == {"a": 1.0, "b": 0.5}


def test_queries_missing_from_a_run():
    other = Run({"r": [("d9", 1.0)]})
    fused = reciprocal_rank_fusion([RUN_A, other], k=60)
    assert list(fused) == ["q", "r"]
    assert fused["r"] == [("d9", 1 / 61)]
    inter = interpolate([RUN_A, other])
    assert [p for p, _ in inter["q"]] == ["d1", "d2", "d3"]
    assert inter["r"] == [("d9", 0.0)]  # a lone hit normalises to 0 (min-max of one score)


def test_interpolate_minmax_hand_computed():
    # min-max: A -> d1 1, d2 .5, d3 0; B -> d3 1, d1 .5, d4 0; absent passages get the run's minimum, 0.
    fused = interpolate([RUN_A, RUN_B], weights=[0.5, 0.5], normalization="minmax")
    assert [p for p, _ in fused["q"]] == ["d1", "d3", "d2", "d4"]
    assert dict(fused["q"]) == pytest.approx({"d1": 0.75, "d3": 0.5, "d2": 0.25, "d4": 0.0})
    skewed = dict(interpolate([RUN_A, RUN_B], weights=[0.2, 0.8])["q"])
    assert skewed == pytest.approx({"d1": 0.2 + 0.4, "d2": 0.1, "d3": 0.8, "d4": 0.0})


def test_interpolate_zscore_hand_computed():
    z = 1 / math.sqrt(2 / 3)  # both runs are evenly spaced triples: z-scores +z, 0, -z
    fused = dict(interpolate([RUN_A, RUN_B], normalization="zscore")["q"])
    # absent passages get the run's minimum z-score, -z
    assert fused == pytest.approx({"d1": z + 0, "d2": 0 - z, "d3": -z + z, "d4": -z - z})


def test_interpolate_raw_scores():
    fused = dict(interpolate([RUN_A, RUN_B], normalization="none")["q"])
    assert fused == pytest.approx({"d1": 3.5, "d2": 2.0 + 0.1, "d3": 1.0 + 0.9, "d4": 1.0 + 0.1})


def test_interpolate_ties_broken_by_passage_id():
    x = Run({"q": [("b", 2.0), ("a", 1.0)]})
    y = Run({"q": [("a", 2.0), ("b", 1.0)]})
    hits = interpolate([x, y])["q"]
    assert hits == [("a", 1.0), ("b", 1.0)]


def test_fusion_argument_errors():
    with pytest.raises(ConfigError, match="weights"):
        reciprocal_rank_fusion([RUN_A, RUN_B], weights=[1.0])
    with pytest.raises(ConfigError, match="normalization"):
        interpolate([RUN_A, RUN_B], normalization="softmax")
    with pytest.raises(ConfigError, match="at least one run"):
        interpolate([])


class FakeRetriever(Retriever):
    """Scores passages by the number of characters they share with the query: a stand-in for a dense part."""

    kind = "fake"

    def __init__(self, corpus: Corpus, device: str = "cpu"):
        super().__init__(list(corpus.ids), corpus.fingerprint(), corpus.source)
        self.texts = {pid: corpus.with_title(i).lower() for i, pid in enumerate(corpus.ids)}
        self.device = device
        self.depths: list[int] = []

    def search(self, queries, top_k=100):
        self.depths.append(top_k)
        qids, texts = query_lists(queries)
        run = Run(
            {
                q: [(p, float(len(set(t.lower()) & set(doc)))) for p, doc in self.texts.items()]
                for q, t in zip(qids, texts)
            }
        )
        return run.top(top_k)

    def _save_to(self, tmp_dir):
        (tmp_dir / "texts.json").write_text(json.dumps(self.texts))

    @classmethod
    def _load_from(cls, directory, manifest, passage_ids, device="cpu"):
        retriever = cls.__new__(cls)
        Retriever.__init__(retriever, passage_ids, manifest["corpus"]["fingerprint"], manifest["corpus"]["source"])
        retriever.texts = json.loads((directory / "texts.json").read_text())
        retriever.device, retriever.depths = device, []
        return retriever


@pytest.fixture()
def fake_kind(monkeypatch):
    monkeypatch.setitem(base._KINDS, "fake", f"{__name__}:FakeRetriever")


def test_hybrid_search_fuses_the_parts(tiny_corpus, tiny_queries):
    sparse = BM25Retriever.build(tiny_corpus)
    other = BM25Retriever.build(tiny_corpus, stemmer=None, include_title=False, k1=1.5, b=0.75)
    hybrid = HybridRetriever([sparse, other], method="rrf")
    expected = reciprocal_rank_fusion([sparse.search(tiny_queries, 100), other.search(tiny_queries, 100)], top_k=3)
    assert hybrid.search(tiny_queries, top_k=3).to_dict() == expected.to_dict()

    inter = HybridRetriever([sparse, other], method="interpolate", weights=[0.3, 0.7], normalization="zscore")
    expected = interpolate(
        [sparse.search(tiny_queries, 100), other.search(tiny_queries, 100)], [0.3, 0.7], "zscore", top_k=2
    )
    assert inter.search(tiny_queries, top_k=2).to_dict() == expected.to_dict()


def test_hybrid_fusion_depth(tiny_corpus, tiny_queries):
    fake = FakeRetriever(tiny_corpus)
    hybrid = HybridRetriever([BM25Retriever.build(tiny_corpus), fake], fusion_depth=4)
    hybrid.search(tiny_queries, top_k=2)
    hybrid.search(tiny_queries, top_k=10)
    assert fake.depths == [4, 10]
    HybridRetriever([BM25Retriever.build(tiny_corpus), fake]).search(tiny_queries, top_k=2)
    assert fake.depths[-1] == 100


def test_hybrid_refuses_parts_from_different_corpora(tiny_corpus):
    other = Corpus(tiny_corpus.ids[:3], tiny_corpus.texts[:3], tiny_corpus.titles[:3], source="<other>")
    with pytest.raises(IndexMismatchError, match="different corpora"):
        HybridRetriever([BM25Retriever.build(tiny_corpus), BM25Retriever.build(other)])
    with pytest.raises(ConfigError, match="two parts"):
        HybridRetriever([BM25Retriever.build(tiny_corpus)])


def test_hybrid_save_load_round_trip(tmp_path, tiny_corpus, tiny_queries, fake_kind):
    sparse = BM25Retriever.build(tiny_corpus, k1=1.2)
    hybrid = HybridRetriever(
        [sparse, FakeRetriever(tiny_corpus)], method="interpolate", weights=[0.6, 0.4], fusion_depth=3
    )
    hybrid.save(tmp_path / "hyb")
    manifest = json.loads((tmp_path / "hyb" / "manifest.json").read_text())
    assert manifest["kind"] == "hybrid"
    assert manifest["parts"] == [{"dir": "part0", "kind": "bm25"}, {"dir": "part1", "kind": "fake"}]
    assert manifest["fusion"]["weights"] == [0.6, 0.4] and manifest["fusion"]["fusion_depth"] == 3

    # `device` is for the fake part only; the BM25 part's loader does not take it.
    loaded = load_index(tmp_path / "hyb", tiny_corpus, device="meta")
    assert isinstance(loaded, HybridRetriever)
    assert isinstance(loaded.parts[0], BM25Retriever) and loaded.parts[0].params["k1"] == 1.2
    assert loaded.parts[1].device == "meta"
    assert (loaded.method, loaded.weights, loaded.fusion_depth) == ("interpolate", [0.6, 0.4], 3)
    assert loaded.search(tiny_queries, 4).to_dict() == hybrid.search(tiny_queries, 4).to_dict()
    # The parts' own directories open on their own, and fuse again with other settings.
    rrf = HybridRetriever.from_dirs([tmp_path / "hyb" / "part0", tmp_path / "hyb" / "part1"], tiny_corpus, rrf_k=10)
    assert rrf.method == "rrf" and rrf.search(tiny_queries, 2)["q1"]

    changed = Corpus(tiny_corpus.ids, tiny_corpus.texts, ["x"] * len(tiny_corpus))
    with pytest.raises(IndexMismatchError):
        load_index(tmp_path / "hyb", changed)


def test_hybrid_of_sparse_parts_does_not_import_torch(tmp_path):
    script = f"""
import sys
from distillir.data.types import Corpus
from distillir.retrievers.base import load_index
from distillir.retrievers.bm25 import BM25Retriever
from distillir.retrievers.hybrid import HybridRetriever
corpus = Corpus(["a", "b"], ["red apples", "green pears"], ["", ""])
HybridRetriever([BM25Retriever.build(corpus), BM25Retriever.build(corpus, b=0.9)]).save({str(tmp_path / "h")!r})
print(load_index({str(tmp_path / "h")!r}).search(["apples"], 1)["0"])
assert "torch" not in sys.modules, "torch was imported"
"""
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=Path(__file__).parent
    )
    assert done.returncode == 0, done.stderr
    assert "'a'" in done.stdout
