"""Retrieval quality, side by side: BM25, the untrained MiniLM encoder, their RRF hybrid, the supervised
DPR-style baseline (trained here by the `dpr` recipe) and the RRF hybrid of BM25 + DPR.

squad-open dev: DPR answer recall Top-1/5/20/100 and gold-passage MRR@10 (+ gold R@k).
scifact test:   nDCG@10, R@100, MRR@10.

Writes bench/results/retrieval_quality.{json,md}. Corpus embeddings and BM25 indexes come from
~/.cache/distillir when present; finished DPR run dirs under bench/work/dpr-<dataset> are reused, so a
re-run costs query encoding and evaluation only.

    .venv/bin/python bench/retrieval_quality.py                       # everything (about 40-60 min on 2 cores)
    .venv/bin/python bench/retrieval_quality.py --datasets scifact --skip-dpr --max-queries 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR as RESULTS
from _common import WORK_DIR, command_line, environment, peak_rss_mb, write_results
from retrieval_quality_report import BM25_PARAMS, FUSION_DEPTH, REPO, RRF_K, markdown, rows_of, summary

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TOP_K = 100
SPLITS = {"squad-open": "dev", "scifact": "test"}
DPR_CONFIGS = {"squad-open": REPO / "configs/dpr-squad-cpu.yaml", "scifact": REPO / "configs/dpr-scifact-cpu.yaml"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_or_reuse_dpr(dataset: str, run_dir: Path, overrides: list[str]) -> dict:
    """Train the DPR baseline with the project's CPU config (its own evaluation turned off: this script
    evaluates), or reuse a finished run in `run_dir`."""
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    results_file = run_dir / "results.json"
    if (run_dir / "final").is_dir() and results_file.is_file():
        log(f"DPR {dataset}: reusing {run_dir}")
        info = json.loads(results_file.read_text())
        info["reused"] = True
        return info
    recipe_cls = get_recipe("dpr")
    resume = run_dir.is_dir() and any(run_dir.glob("checkpoints/*"))
    config = load_config(
        recipe_cls.Config, DPR_CONFIGS[dataset], [*overrides, f"output_dir={run_dir}", f"resume={str(resume).lower()}"]
    )
    config.eval = None  # evaluated below, beside the other systems, on the same queries
    log(f"DPR {dataset}: training with {DPR_CONFIGS[dataset].name} -> {run_dir} (resume={resume})")
    start = time.perf_counter()
    info = recipe_cls().run(config)
    info["wall_s"] = round(time.perf_counter() - start, 1)
    info["reused"] = False
    return info


def dense_run(encoder, dataset, dtype: str, label: str, timings: dict):
    """Encode the corpus (cached) and the queries, search exactly; returns the run."""
    from distillir.retrievers.dense.retriever import DenseRetriever

    start = time.perf_counter()
    retriever = DenseRetriever.build(dataset.corpus, encoder, dtype=dtype, cache=True, show_progress=False)
    timings[f"{label}: corpus embeddings (cached or encoded)"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    run = retriever.search(dataset.queries, top_k=TOP_K)
    elapsed = time.perf_counter() - start
    timings[f"{label}: encode + search {len(dataset.queries)} queries"] = round(elapsed, 1)
    log(f"{label}: {len(dataset.queries)} queries in {elapsed:.1f}s ({len(dataset.queries) / elapsed:.0f} q/s)")
    return run


def bench_dataset(name: str, args, out: dict) -> list[dict]:
    import torch

    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.hybrid import reciprocal_rank_fusion

    split = SPLITS[name]
    max_q = args.max_queries if name == "squad-open" else args.max_queries_scifact
    dataset = load_dataset(name, split, max_queries=max_q, seed=args.seed)
    log(f"{name}/{split}: {len(dataset.corpus)} passages, {len(dataset.queries)} queries")
    timings: dict = {}
    info: dict = {
        "split": split,
        "passages": len(dataset.corpus),
        "queries": len(dataset.queries),
        "query_sample": None if max_q is None else {"max_queries": max_q, "seed": args.seed,
                                                     "how": "distillir load_dataset(max_queries, seed): random.Random(seed).sample, file order"},
        "timings_s": timings,
        "systems": {},
    }
    out["datasets"][name] = info
    info["command"] = out["command"]
    info["notes"] = list(args.note or [])
    info["dtype"] = args.dtype
    info["date_utc"] = out["environment"]["date_utc"]

    def evaluate(label: str, run) -> None:
        start = time.perf_counter()
        metrics = evaluate_run(run, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)
        timings[f"evaluate {label}"] = round(time.perf_counter() - start, 1)
        info["systems"][label] = metrics
        info.setdefault("provenance", {})[label] = {"command": out["command"], "date_utc": out["environment"]["date_utc"],
                                                   "dtype": args.dtype}
        log(f"{label}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)))

    # BM25
    start = time.perf_counter()
    bm25 = bm25_cached(dataset.corpus, **BM25_PARAMS)
    timings["BM25: index (cached or built)"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    bm25_run = bm25.search(dataset.queries, top_k=TOP_K)
    timings[f"BM25: search {len(dataset.queries)} queries"] = round(time.perf_counter() - start, 1)
    evaluate("BM25", bm25_run)

    # Untrained MiniLM
    if not args.skip_minilm:
        encoder = BiEncoder.from_pretrained(MODEL)
        info["minilm_settings"] = dataclasses.asdict(encoder.settings)
        minilm_run = dense_run(encoder, dataset, args.dtype, "MiniLM (untrained)", timings)
        evaluate("MiniLM (untrained)", minilm_run)
        evaluate("RRF(BM25, MiniLM)", reciprocal_rank_fusion([bm25_run, minilm_run], k=RRF_K, top_k=TOP_K))
        del encoder
        torch.set_grad_enabled(True)

    if not args.skip_dpr:
        overrides = list(args.dpr_set or [])
        suffix = "".join("-" + re.sub(r"[^A-Za-z0-9.]+", "_", o.split(".")[-1]) for o in overrides)
        run_dir = Path(args.dpr_dir) / f"dpr-{name}{suffix}"
        dpr_info = train_or_reuse_dpr(name, run_dir, overrides)
        cfg = DPR_CONFIGS[name]
        import yaml

        raw = yaml.safe_load((run_dir / "config.yaml").read_text())  # the config the run actually used
        info["dpr"] = {
            "config": str(cfg.relative_to(REPO)),
            "overrides": overrides,
            "run_dir": str(run_dir),
            "reused_finished_run": dpr_info.get("reused"),
            "train_dataset": raw["data"]["dataset"],
            "train_split": raw["data"]["split"],
            "train_questions": dpr_info.get("train_examples"),
            "max_train_queries": raw["data"].get("max_train_queries"),
            "steps": (dpr_info.get("train") or {}).get("global_step"),
            "resumed_from": (dpr_info.get("train") or {}).get("resumed_from"),
            "batch_size": raw["trainer"]["per_device_batch_size"],
            "hard_negatives_per_query": raw["negatives"]["per_query"],
            "epochs": raw["trainer"]["num_epochs"],
            "learning_rate": raw["trainer"]["learning_rate"],
            "train_elapsed_s": (dpr_info.get("train") or {}).get("elapsed"),
            "final_loss": (dpr_info.get("train") or {}).get("loss"),
            "recipe_wall_s": dpr_info.get("wall_s"),
        }
        dpr_encoder = BiEncoder.from_pretrained(run_dir / "final")
        info["dpr"]["encoder_settings"] = dataclasses.asdict(dpr_encoder.settings)
        dpr = dense_run(dpr_encoder, dataset, args.dtype, "DPR (supervised)", timings)
        evaluate("DPR (supervised)", dpr)
        evaluate("RRF(BM25, DPR)", reciprocal_rank_fusion([bm25_run, dpr], k=RRF_K, top_k=TOP_K))
        del dpr_encoder

    info["peak_rss_mb_so_far"] = round(peak_rss_mb(), 1)
    return rows_of(name, info)


def merge_earlier(out: dict, path: Path) -> dict:
    """This run's results plus what an earlier run wrote to `path` for datasets/systems this run did not
    compute (same dataset split and query set only), each system keeping its provenance."""
    if not path.is_file():
        return out
    old = json.loads(path.read_text())
    merged = json.loads(json.dumps(out, default=str))
    merged["earlier_runs"] = [*old.get("earlier_runs", []), {"command": old.get("command"), "environment": old.get("environment")}]
    for name, old_info in old.get("datasets", {}).items():
        new_info = merged["datasets"].get(name)
        if new_info is None:
            merged["datasets"][name] = old_info
            continue
        if (old_info.get("queries"), old_info.get("query_sample")) != (new_info.get("queries"), new_info.get("query_sample")):
            continue  # another query set: not comparable, dropped
        for label, metrics in old_info["systems"].items():
            if label not in new_info["systems"]:
                new_info["systems"][label] = metrics
                new_info.setdefault("provenance", {})[label] = old_info.get("provenance", {}).get(label)
        for key in ("dpr", "minilm_settings", "notes"):
            if key not in new_info and key in old_info:
                new_info[key] = old_info[key]
        order = ["BM25", "MiniLM (untrained)", "RRF(BM25, MiniLM)", "DPR (supervised)", "RRF(BM25, DPR)"]
        new_info["systems"] = dict(sorted(new_info["systems"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="scifact,squad-open", help="comma-separated: squad-open, scifact")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="squad-open dev: a seeded sample of this many questions (default: all 10,570)")
    parser.add_argument("--max-queries-scifact", type=int, default=None, help="scifact test sample (default: all 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query sample")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="precision of corpus and query encoding (bf16 autocast is ~1.7x faster on AMX CPUs)")
    parser.add_argument("--skip-dpr", action="store_true", help="leave out the DPR baseline and its hybrid")
    parser.add_argument("--skip-minilm", action="store_true",
                        help="leave out the untrained MiniLM and its hybrid (results of an earlier run are kept)")
    parser.add_argument("--dpr-dir", default=str(WORK_DIR), help="where the DPR run dirs live (reused when finished)")
    parser.add_argument("--dpr-set", action="append", metavar="KEY=VALUE",
                        help="override the DPR config (e.g. data.max_train_queries=1000); names the run dir")
    parser.add_argument("--name", default="retrieval_quality", help="results file stem under bench/results/")
    parser.add_argument("--note", action="append", help="a sentence to print under each dataset's table")
    parser.add_argument("--fresh", action="store_true",
                        help="do not keep other datasets'/systems' results from an earlier run in the results file")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown from the existing results JSON (no computation)")
    args = parser.parse_args()
    if args.render_only:
        data = json.loads((RESULTS / f"{args.name}.json").read_text())
        data["summary"] = summary(data)
        write_results(args.name, data, markdown(data, {n: rows_of(n, i) for n, i in data["datasets"].items()}))
        return

    import torch

    out = {
        "benchmark": "retrieval_quality",
        "command": command_line(),
        "environment": environment(),
        "settings": {
            "model": MODEL,
            "dtype": args.dtype,
            "bm25": BM25_PARAMS,
            "rrf_k": RRF_K,
            "fusion_depth": FUSION_DEPTH,
            "top_k": TOP_K,
            "dense_index": "exact (torch matmul + topk)",
            "seed": args.seed,
        },
        "datasets": {},
    }
    tables = {}
    start = time.perf_counter()
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if name not in SPLITS:
            raise SystemExit(f"unknown dataset {name!r}; choose from {', '.join(SPLITS)}")
        tables[name] = bench_dataset(name, args, out)
        out["wall_s"] = round(time.perf_counter() - start, 1)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        out["environment"]["loadavg_at_end"] = list(__import__("os").getloadavg())
        merged = out if args.fresh else merge_earlier(out, RESULTS / f"{args.name}.json")
        tables = {n: rows_of(n, i) for n, i in merged["datasets"].items()}
        merged["summary"] = summary(merged)
        write_results(args.name, merged, markdown(merged, tables))  # after each dataset: partial results survive
        torch.set_grad_enabled(True)
    log(f"done in {time.perf_counter() - start:.0f}s; results in bench/results/{args.name}.json/.md")


if __name__ == "__main__":
    main()
