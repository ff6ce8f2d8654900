"""The main job a new user runs first: BM25, an off-the-shelf dense encoder, and their hybrid,
indexed, searched and evaluated side by side on a real dataset."""

from __future__ import annotations

import time
from pathlib import Path

from distillir.utils.log import get_logger

log = get_logger(__name__)


def run_demo(
    dataset: str = "scifact",
    split: str = "test",
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    max_queries: int | None = None,
    top_k: int = 100,
    dtype: str = "auto",
    out: str | Path | None = None,
) -> str:
    """Returns a Markdown table of each retriever's metrics and timings. Indexes are cached by
    (corpus, model) fingerprint, so a second run costs seconds. `out`: also write there (atomically) each
    retriever's run (`bm25.trec`, `dense.trec`, `hybrid.trec`), `metrics.json` and `report.md`."""
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.evaluation.report import format_table
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.dense.inference import default_encoding_dtype
    from distillir.retrievers.dense.retriever import DenseRetriever
    from distillir.retrievers.hybrid import reciprocal_rank_fusion

    if out is not None and Path(out).exists() and not (Path(out) / "report.md").is_file():
        from distillir.errors import ConfigError

        raise ConfigError(f"{out} exists and is not an earlier demo's output: choose another --out")
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
    table = header + format_table(rows, columns)
    if out is not None:
        from distillir.utils.io import atomic_dir, write_json

        with atomic_dir(out) as tmp:
            for name, run in (("bm25", sparse_run), ("dense", dense_run), ("hybrid", hybrid_run)):
                run.write_trec(tmp / f"{name}.trec", tag=name)
            write_json(tmp / "metrics.json", {"dataset": dataset, "split": split, "model": model, "dtype": dtype,
                                              "top_k": top_k, "rows": rows})
            plot = _recall_plot(rows, tmp / "plots" / "recall_at_k.png")
            (tmp / "report.md").write_text(
                f"# distillir demo: {dataset}\n\n{table}\n\n" + (f"![Recall against k](plots/{plot.name})\n\n" if plot else "")
                + f"Reproduce: `distillir demo --dataset {dataset} --split "
                f"{split} --model {model}" + (f" --max-queries {max_queries}" if max_queries else "") + "`\n",
                encoding="utf-8")
        log.info("wrote %s (report.md, metrics.json, bm25/dense/hybrid.trec)", out)
    return table


def _recall_plot(rows: list[dict], path: Path) -> Path | None:
    """Recall against k for the three retrievers (None without matplotlib)."""
    from distillir.evaluation.plots import plot_recall_at_k, plotting_available

    if not plotting_available():
        return None
    return plot_recall_at_k([{"system": r["retriever"], "metrics": r} for r in rows], path)
