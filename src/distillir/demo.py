"""The main job a new user runs first: BM25, an off-the-shelf dense encoder, and their hybrid,
indexed, searched and evaluated side by side on a real dataset."""

from __future__ import annotations

import time

from distillir.utils.log import get_logger

log = get_logger(__name__)


def run_demo(
    dataset: str = "scifact",
    split: str = "test",
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    max_queries: int | None = None,
    top_k: int = 100,
    dtype: str = "auto",
) -> str:
    """Returns a Markdown table of each retriever's metrics and timings. Indexes are cached by
    (corpus, model) fingerprint, so a second run costs seconds."""
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.evaluation.report import format_table
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.dense.inference import default_encoding_dtype
    from distillir.retrievers.dense.retriever import DenseRetriever
    from distillir.retrievers.hybrid import reciprocal_rank_fusion

    data = load_dataset(dataset, split=split, max_queries=max_queries)
    log.info("%s/%s: %d passages, %d queries", dataset, split, len(data.corpus), len(data.queries))

    rows = []

    def report(name: str, run, seconds: float) -> None:
        metrics = evaluate_run(run, qrels=data.qrels, queries=data.queries, corpus=data.corpus)
        rows.append({"retriever": name, **metrics, "search s": round(seconds, 2)})

    t = time.perf_counter()
    bm25 = bm25_cached(data.corpus)
    log.info("BM25 index ready in %.1fs", time.perf_counter() - t)
    t = time.perf_counter()
    sparse_run = bm25.search(data.queries, top_k=top_k)
    report("BM25", sparse_run, time.perf_counter() - t)

    t = time.perf_counter()
    dtype = default_encoding_dtype() if dtype == "auto" else dtype
    dense = DenseRetriever.build(data.corpus, model, cache=True, dtype=dtype, show_progress=True)
    log.info("dense index ready in %.1fs (embeddings cached by corpus and model)", time.perf_counter() - t)
    t = time.perf_counter()
    dense_run = dense.search(data.queries, top_k=top_k)
    report(f"dense ({model.split('/')[-1]}, {dtype})", dense_run, time.perf_counter() - t)

    t = time.perf_counter()
    hybrid_run = reciprocal_rank_fusion([sparse_run, dense_run], top_k=top_k)
    report("hybrid (RRF)", hybrid_run, time.perf_counter() - t)

    columns = [c for c in rows[0] if c not in ("queries",)]
    header = f"{dataset} ({split}, {len(data.queries)} queries, {len(data.corpus)} passages)\n\n"
    return header + format_table(rows, columns)
