"""Speed (and what it costs in quality), with the baselines measured in the same run.

a. Corpus encoding, passages/s, on the same N real squad-open passages (title+text) with the same model:
   sentence-transformers `SentenceTransformer(path).encode(batch_size=64)` vs distillir `encode_corpus`
   float32 / bfloat16 autocast / int8 dynamic quantization, each with its quality beside it: cosine to the
   float32 reference embeddings, and gold-passage R@1/R@5 of the dev questions whose gold passage is in the
   subset (ranked within the subset).
b. BM25: index build time and query throughput, bm25s (distillir BM25Retriever) vs rank_bm25 BM25Okapi
   (same tokens, same k1/b) on the squad-open corpus.
c. Vector search: exact (distillir ExactIndex: torch matmul + topk) vs FAISS flat / HNSW / IVF-PQ (+exact
   re-scoring), via distillir FaissIndex: build time, queries/s, recall@10 against exact, peak memory; on
   the real squad-open MiniLM corpus embeddings and on synthetic clustered 384-d unit vectors (1M).

Every measured variant runs in a fresh subprocess (`--variant`), so its peak RSS (getrusage maxrss) is its
own. Writes bench/results/speed.{json,md}; scratch files go to bench/work/speed/.

    .venv/bin/python bench/speed.py                     # all parts (about 15-25 min on 2 cores)
    .venv/bin/python bench/speed.py --parts encode --n-passages 256 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS_DIR,
    command_line,
    environment,
    write_results,
)
from speed_report import markdown, summary
from speed_workers import (
    ENCODE_LABELS,
    ENCODE_VARIANTS,
    MODEL,
    SCRATCH,
    _encode_subset,
    worker_bm25,
    worker_encode,
    worker_vector,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# =============================================================================================== workers
# Each runs in its own process and prints one JSON line starting with RESULT.


# ============================================================================================ orchestrator


def spawn(variant: str, args, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--seed", str(args.seed), "--scratch", str(SCRATCH),
           "--n-passages", str(args.n_passages), "--warmup", str(args.warmup), "--bm25-sample", str(args.bm25_sample),
           *extra]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.variant_timeout, check=False)
    except subprocess.TimeoutExpired:
        log(f"variant {variant} {' '.join(extra)} timed out after {args.variant_timeout} s")
        return {"variant": variant, "extra": list(extra), "error": f"timed out after {args.variant_timeout} s"}
    wall = time.perf_counter() - start
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        log(f"variant {variant} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        return {"variant": variant, "error": proc.stderr[-2000:], "returncode": proc.returncode}
    result = json.loads(line[len("RESULT "):])
    result["process_wall_s"] = round(wall, 1)
    log(f"{variant} {' '.join(extra)}: " + json.dumps({k: v for k, v in result.items() if k not in ('params',)}))
    return result


def part_encode(args, out: dict) -> None:
    import importlib.util

    import numpy as np

    from distillir.retrievers.dense.index import ExactIndex

    if importlib.util.find_spec("sentence_transformers") is None:  # the peer every figure is relative to
        sys.exit("bench/speed.py --parts encode compares with sentence-transformers, which is not installed: "
                 ".venv/bin/pip install torch==2.13.0 sentence-transformers==6.2.0 (see bench/README.md)")
    rounds = []
    for r in range(args.rounds):  # interleaved rounds: drift in machine load hits every variant alike
        for v in ENCODE_VARIANTS:
            rounds.append(spawn(f"encode:{v}", args, ["--round", str(r)]))
    pids, _titles, texts, q_texts, q_gold = _encode_subset(args)
    ref = np.load(SCRATCH / "enc-fp32-p.npy")
    col = {pid: i for i, pid in enumerate(pids)}
    gold_rows = np.array([col[g] for g in q_gold])
    variants = {}
    for v in ENCODE_VARIANTS:
        runs = [r for r in rounds if r.get("variant") == v and "seconds" in r]
        if not runs:
            variants[v] = {"error": "failed"}
            continue
        emb = np.load(SCRATCH / f"enc-{v}-p.npy")
        q = np.load(SCRATCH / f"enc-{v}-q.npy")
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        _, top = ExactIndex(emb).search(q, 5)
        top = top.numpy()
        best = min(r["seconds"] for r in runs)
        best_cpu = min(r["cpu_seconds"] for r in runs)
        variants[v] = {
            "cpu_seconds_per_round": [r["cpu_seconds"] for r in runs],
            "best_cpu_seconds": best_cpu,
            "passages_per_cpu_s_best": round(len(texts) / best_cpu, 3),
            "label": ENCODE_LABELS[v],
            "seconds_per_round": [r["seconds"] for r in runs],
            "best_seconds": best,
            "passages_per_s_best": round(len(texts) / best, 2),
            "passages_per_s_median": round(len(texts) / float(np.median([r["seconds"] for r in runs])), 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "cosine_to_fp32_mean": round(float(cos.mean()), 6),
            "cosine_to_fp32_min": round(float(cos.min()), 6),
            "gold_R@1": round(float(np.mean(top[:, 0] == gold_rows)), 4),
            "gold_R@5": round(float(np.mean((top == gold_rows[:, None]).any(1))), 4),
            "rounds": runs,
        }
    st = variants.get("st", {}).get("best_seconds")
    st_cpu = variants.get("st", {}).get("best_cpu_seconds")
    for v in variants.values():
        if st and "best_seconds" in v:
            v["speedup_vs_sentence_transformers"] = round(st / v["best_seconds"], 3)  # wall clock
            v["cpu_speedup_vs_sentence_transformers"] = round(st_cpu / v["best_cpu_seconds"], 3)
    out["encode"] = {"passages": len(texts), "questions_with_gold_in_subset": len(q_texts),
                     "subset": f"random.Random({args.seed}).sample of {args.n_passages} squad-open passages, corpus order",
                     "warmup_passages": args.warmup, "rounds": args.rounds, "variants": variants}


def part_bm25(args, out: dict) -> None:
    res = {v: spawn(f"bm25:{v}", args) for v in ("bm25s", "rank_bm25")}
    a, b = res["bm25s"], res["rank_bm25"]
    if "build_s" in a and "build_s" in b:
        t1 = json.loads((SCRATCH / "bm25-bm25s-top10.json").read_text())
        t2 = json.loads((SCRATCH / "bm25-rank_bm25-top10.json").read_text())
        overlap = sum(len(set(t1[q]) & set(t2[q])) / max(1, len(t2[q])) for q in t2) / len(t2)
        res["top10_overlap_on_sample"] = round(overlap, 4)
        res["build_speedup"] = round(b["build_s"] / a["build_s"], 2)  # wall
        res["query_speedup_on_sample"] = round(b["sample_s"] / a["sample_s"], 1)  # wall
        if "build_cpu_s" in a and "build_cpu_s" in b:
            res["build_cpu_speedup"] = round(b["build_cpu_s"] / a["build_cpu_s"], 2)
            res["index_only_cpu_speedup"] = round(b["index_cpu_s"] / max(1e-9, a["build_cpu_s"] - a["tokenize_cpu_s"]), 2)
            res["query_cpu_speedup_on_sample"] = round(b["sample_cpu_s"] / a["sample_cpu_s"], 1)
    out["bm25"] = res


def prepare_vectors(args, out: dict) -> None:
    """Real squad-open MiniLM embeddings (from the distillir cache) + dev question embeddings, and the
    synthetic clustered set, written once to bench/work/speed/vec-*.npy."""
    import numpy as np

    info = {}
    real_p, real_q = SCRATCH / "vec-squad-p.npy", SCRATCH / "vec-squad-q.npy"
    if "squad" in args.vector_sets and not (real_p.is_file() and real_q.is_file()):
        import random

        from distillir.data.datasets import load_dataset
        from distillir.retrievers.dense.encoder import BiEncoder, encode_corpus_cached
        from distillir.utils.io import cache_dir

        ds = load_dataset("squad-open", "dev")
        enc = BiEncoder.from_pretrained(MODEL)
        chosen = None
        for dtype in ("float32", "bfloat16"):
            path = cache_dir() / "embeddings" / f"{ds.corpus.fingerprint()}-{enc.passage_embedding_key(dtype)}.npy"
            if path.is_file():
                chosen = dtype
                break
        chosen = chosen or "bfloat16"
        log(f"squad-open corpus embeddings: {chosen} ({'cached' if path.is_file() else 'encoding, ~6 min'})")
        emb = encode_corpus_cached(enc, ds.corpus, dtype=chosen)
        rows = sorted(random.Random(args.seed).sample(range(len(ds.queries)), args.vector_queries))
        q = enc.encode_queries([ds.queries.texts[r] for r in rows], dtype=chosen)
        np.save(real_p, emb.numpy())
        np.save(real_q, q.numpy())
        (SCRATCH / "vec-squad-info.json").write_text(json.dumps({"corpus_dtype": chosen, "queries": len(rows)}))
    if (SCRATCH / "vec-squad-info.json").is_file():
        info["squad"] = json.loads((SCRATCH / "vec-squad-info.json").read_text())
    synth_p, synth_q = SCRATCH / "vec-synth-p.npy", SCRATCH / "vec-synth-q.npy"
    spec = {"n": args.synth_n, "dim": 384, "clusters": args.synth_clusters, "noise_sigma": args.synth_sigma,
            "queries": args.vector_queries, "seed": args.seed,
            "how": "centre ~ uniform on the unit sphere; point = normalize(centre + N(0, sigma^2 I)); "
                   "queries drawn the same way (new points)"}
    spec_file = SCRATCH / "vec-synth-info.json"
    if not (synth_p.is_file() and spec_file.is_file() and json.loads(spec_file.read_text()) == spec):
        log(f"generating synthetic vectors: {spec}")
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((args.synth_clusters, 384), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)

        def draw(n):
            out_ = np.empty((n, 384), dtype=np.float32)
            for s in range(0, n, 100_000):
                m = min(100_000, n - s)
                x = centres[rng.integers(0, args.synth_clusters, m)]
                x = x + args.synth_sigma * rng.standard_normal((m, 384), dtype=np.float32)
                out_[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
            return out_

        np.save(synth_p, draw(args.synth_n))
        np.save(synth_q, draw(args.vector_queries))
        spec_file.write_text(json.dumps(spec))
        for stale in SCRATCH.glob("vec-synth-gt*.npy"):
            stale.unlink()
    info["synth"] = spec
    out["vector_data"] = info


def part_vector(args, out: dict) -> None:
    prepare_vectors(args, out)
    hnsw = {"M": 32, "efConstruction": 200, "efSearch": 128}
    plan = [
        ("squad", "exact", {}, 0),
        ("squad", "flat", {}, 0),
        ("squad", "hnsw", hnsw, 0),
        *([("squad", "ivfpq", {"nprobe": 16, "rescore": 256}, 0)] if args.squad_ivfpq else []),
        ("synth", "exact", {}, 0),
        ("synth", "flat", {}, 0),
        ("synth", "ivfpq", {"nlist": args.synth_nlist, "m": args.synth_pq_m, "nprobe": 16, "rescore": 256}, 0),
        ("synth", "exact", {}, args.hnsw_size),
        ("synth", "hnsw", hnsw, args.hnsw_size),
    ]
    kinds = [k for k in args.vector_kinds.split(",") if k] if args.vector_kinds else None
    results = []
    if kinds:  # a partial re-run: keep the other rows of the previous results file
        previous = RESULTS_DIR / f"{args.name}.json"
        old_rows = json.loads(previous.read_text()).get("vector", []) if previous.is_file() else []
        sets = args.vector_sets.split(",")
        results = [r for r in old_rows if "error" not in r and not (r.get("kind") in kinds and r.get("data") in sets)]
    for data, kind, params, size in plan:
        if data not in args.vector_sets or (kinds and kind not in kinds):
            continue
        extra = ["--params", json.dumps(params), "--size", str(size)]
        results.append(spawn(f"vector:{data}:{kind}", args, extra))
    out["vector"] = results


# ================================================================================================ report


def merge_earlier(out: dict, path: Path) -> dict:
    """Keep the parts an earlier run wrote that this run did not measure (each with its own command)."""
    if not path.is_file():
        return out
    old = json.loads(path.read_text())
    merged = dict(out)
    merged["part_runs"] = dict(out.get("part_runs", {}))
    for part, keys in (("encode", ["encode"]), ("bm25", ["bm25"]), ("vector", ["vector", "vector_data"])):
        if part not in out.get("part_runs", {}) and part in old.get("part_runs", {}):
            for key in keys:
                if key in old:
                    merged[key] = old[key]
            merged["part_runs"][part] = old["part_runs"][part]
            merged.setdefault("earlier_environments", {})[part] = old.get("environment")
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="encode,bm25,vector", help="comma-separated: encode, bm25, vector")
    parser.add_argument("--n-passages", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=64, help="passages encoded before timing, per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the encoding variants")
    parser.add_argument("--bm25-sample", type=int, default=200, help="queries timed on both BM25 engines")
    parser.add_argument("--vector-queries", type=int, default=1000)
    parser.add_argument("--synth-n", type=int, default=1_000_000)
    parser.add_argument("--synth-clusters", type=int, default=4096)
    parser.add_argument("--synth-sigma", type=float, default=0.05)
    parser.add_argument("--synth-nlist", type=int, default=1024)
    parser.add_argument("--synth-pq-m", type=int, default=48, help="PQ sub-vectors on the synthetic set")
    parser.add_argument("--squad-ivfpq", action=argparse.BooleanOptionalAction, default=True,
                        help="IVF-PQ (library defaults) on the 21k squad-open vectors too")
    parser.add_argument("--hnsw-size", type=int, default=200_000)
    parser.add_argument("--variant-timeout", type=int, default=900, help="seconds before a variant is abandoned")
    parser.add_argument("--vector-sets", default="squad,synth", help="comma-separated: squad, synth")
    parser.add_argument("--vector-kinds", default="",
                        help="re-run only these index kinds (e.g. exact,hnsw), keeping the other rows of the results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="speed")
    parser.add_argument("--fresh", action="store_true", help="drop parts an earlier run wrote to the results file")
    parser.add_argument("--scratch", default="", help="scratch dir (default bench/work/speed)")
    # worker-only
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--round", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the results JSON")
    args = parser.parse_args()
    if args.render_only:
        data = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
        data["summary"] = summary(data)
        write_results(args.name, data, markdown(data))
        return
    global SCRATCH
    if args.scratch:
        SCRATCH = Path(args.scratch)
    SCRATCH.mkdir(parents=True, exist_ok=True)

    if args.variant:
        {"encode": worker_encode, "bm25": worker_bm25, "vector": worker_vector}[args.variant.split(":")[0]](args)
        return

    out = {"benchmark": "speed", "command": command_line(), "environment": environment(),
           "settings": {k: v for k, v in vars(args).items() if k not in ("variant", "round", "params", "size")}}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    start = time.perf_counter()
    for part in parts:
        log(f"part {part}")
        {"encode": part_encode, "bm25": part_bm25, "vector": part_vector}[part](args, out)
        out["environment"]["loadavg_at_end"] = list(os.getloadavg())
        out["wall_s"] = round(time.perf_counter() - start, 1)
        out.setdefault("part_runs", {})[part] = {"command": out["command"], "date_utc": out["environment"]["date_utc"],
                                                 "loadavg_at_end": out["environment"]["loadavg_at_end"]}
        merged = out if args.fresh else merge_earlier(out, RESULTS_DIR / f"{args.name}.json")
        merged["summary"] = summary(merged)
        write_results(args.name, merged, markdown(merged))
    log(f"done in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
