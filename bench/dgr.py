"""DGR measured on BEIR SciFact (issue 17): a pretrained causal LM (SmolLM2-135M-Instruct) as the generative
retriever, writing an abstract's title under the corpus's prefix tree, trained at equal steps with

  plain:   the generation loss on the gold abstract's identifier + DSI-style indexing (student.rank_weight 0);
  ranknet: + DGR's distilled RankNet over the teacher-ordered candidates (the paper's method);
  kl:      + KL to the teacher's softmax instead (the paper's ablation);
  listnet: + ListNet on the teacher's order instead (the paper's ablation);

all from configs/dgr-smollm2-scifact-cpu.yaml on the same candidates and teacher scores (the first run's, copied
into the others), the same example order and steps. Beside them, on the 300 test claims: BM25, all-MiniLM-L6-v2
and the untrained LM under the same prompt and prefix tree. What the teacher knows is measured on the training
lists (gold abstract first: teacher vs BM25's order vs the untrained student's scores). Paired 95% intervals
for the paper's claim (distilled beats plain) and for each variant against plain.

    .venv/bin/python bench/dgr.py                 # runs what is missing (finished runs are read; resumable)
    .venv/bin/python bench/dgr.py --partial       # render the finished runs only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, paired_difference, summary_row, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/dgr-smollm2-scifact-cpu.yaml"
VARIANTS = {  # the first one's candidates and teacher stages are shared by the others
    "ranknet": [],
    "plain": ["student.rank_weight=0"],
    "kl": ["student.rank_loss=kl"],
    "listnet": ["student.rank_loss=listnet"],
}
LABELS = {"plain": "plain generative retriever (identifier NLL + indexing)", "ranknet": "DGR: + distilled RankNet",
          "kl": "DGR ablation: + KL to the teacher", "listnet": "DGR ablation: + ListNet on the teacher's order"}
KEYS = ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20")
TEACHER_LISTS_STUDENT = 200  # training lists the untrained student scores (20 identifiers each)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(VARIANTS), help="run one variant and stop (no report)")
    p.add_argument("--name", default="dgr")
    p.add_argument("--partial", action="store_true", help="render from the finished runs only, run nothing")
    p.add_argument("--note", help="a line under the wall times (e.g. what else ran on the cores)")
    return p.parse_args(argv)


def run_dir(name: str) -> Path:
    return WORK_DIR / "runs" / f"dgr-smollm2-{name}"


def load(sets=()):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe = get_recipe("dgr")
    return recipe, load_config(recipe.Config, REPO / CONFIG, list(sets))


def seed_from_first(out: Path) -> None:
    """Copy the first variant's finished candidates and teacher stages into `out`, so every variant trains on the
    same lists and teacher scores (the stage records make the recipe skip them)."""
    first = run_dir(next(iter(VARIANTS)))
    if out.is_dir() or not (first / "stages" / "teacher.json").is_file():
        return
    out.mkdir(parents=True)
    (out / "stages").mkdir()
    (out / "teacher").mkdir()
    for part in ("stages/candidates.json", "stages/teacher.json", "candidates.trec", "teacher/scores.jsonl",
                 "config.yaml"):
        shutil.copy2(first / part, out / part)


def variant_run(name: str) -> dict:
    out = run_dir(name)
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    if name != next(iter(VARIANTS)):
        seed_from_first(out)
    recipe, config = load([f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *VARIANTS[name]])
    started = time.time()
    results = recipe().run(config)
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


def untrained_student(corpus):
    from dataclasses import replace

    from distillir.readers.generative_lm import CausalGenerativeRetriever
    from distillir.recipes.common.reading import build_lm_reader
    from distillir.retrievers.generative import make_docids

    _, config = load()
    s = config.student
    lm = build_lm_reader(replace(s.seq2seq, lm=replace(s.seq2seq.lm, dtype="auto",
                                                       prompts=replace(s.seq2seq.lm.prompts, chat=False))))
    return CausalGenerativeRetriever(lm, corpus.ids, make_docids(corpus, s.docid_scheme), s.query_max_length,
                                     s.docid_max_length, prompt=s.prompt)


def baselines(ds, cache: Path) -> dict:
    """BM25, MiniLM and the untrained LM on the test claims (runs cached as TREC files in `cache`)."""
    from distillir.data.run import Run
    from distillir.models import DEFAULT_ENCODER
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.retriever import DenseRetriever

    _, config = load()
    k = config.eval.top_k
    cache.mkdir(parents=True, exist_ok=True)
    runs, walls = {}, {}
    builders = {
        "bm25": lambda: bm25_cached(ds.corpus).search(ds.queries, top_k=k),
        "minilm": lambda: DenseRetriever.build(ds.corpus, BiEncoder.from_pretrained(DEFAULT_ENCODER), batch_size=64,
                                               cache=True).search(ds.queries, top_k=k),
        "untrained": lambda: untrained_student(ds.corpus).search(ds.queries, top_k=k,
                                                                 batch_size=config.eval.batch_size),
    }
    for key, build in builders.items():
        path = cache / f"{key}.trec"
        if not path.is_file():
            started = time.perf_counter()
            build().write_trec(path, tag=key)
            (cache / f"{key}.wall_s").write_text(f"{time.perf_counter() - started:.1f}")
        runs[key] = Run.read_trec(path)
        wall = cache / f"{key}.wall_s"
        walls[key] = float(wall.read_text()) if wall.is_file() else None
    return {"runs": runs, "wall_s": walls}


def teacher_knowledge(ds_train, first: Path, cache: Path) -> dict:
    """Gold first (top-1) and gold MRR over the training lists: BM25's order, the teacher's, and the untrained
    student's identifier log-probabilities (the first TEACHER_LISTS_STUDENT lists)."""
    import torch

    from distillir.data.negatives import positives_from_dataset
    from distillir.data.run import Run
    from distillir.teachers.scores import read_teacher_scores

    gold = positives_from_dataset(ds_train)
    bm25 = Run.read_trec(first / "candidates.trec")
    teacher = read_teacher_scores(first / "teacher" / "scores.jsonl", corpus=ds_train.corpus)
    orders: dict[str, dict[str, list[str]]] = {"BM25": {}, "teacher": {}}
    for qid, hits in bm25.items():
        orders["BM25"][qid] = [p for p, _ in hits]
    for qid in teacher:
        pids, values = teacher[qid]
        candidates = set(orders["BM25"].get(qid, ()))
        orders["teacher"][qid] = [p for p, _ in sorted(zip(pids, values), key=lambda x: -x[1]) if p in candidates]
    path = cache / "student_train_lists.json"
    if not path.is_file():
        student = untrained_student(ds_train.corpus)
        text = dict(zip(ds_train.queries.ids, ds_train.queries.texts))
        qids = [q for q in orders["BM25"] if q in orders["teacher"]][:TEACHER_LISTS_STUDENT]
        scored = {}
        with torch.no_grad():  # the LM is loaded in bf16 where the CPU has it natively
            for qid in qids:
                pids = orders["BM25"][qid]
                q = student.tokenize_queries([text[qid]])
                values = student.score(q, student.docid_labels(pids), per_query=len(pids))[0].float().tolist()
                scored[qid] = [p for p, _ in sorted(zip(pids, values), key=lambda x: -x[1])]
        path.write_text(json.dumps(scored))
    orders["untrained student"] = json.loads(path.read_text())

    def measure(order: dict[str, list[str]], qids) -> dict:
        rr = [next((1.0 / (i + 1) for i, p in enumerate(order[q]) if p in gold[q]), 0.0) for q in qids]
        return {"lists": len(qids), "Top-1": round(sum(r == 1.0 for r in rr) / len(qids), 3),
                "MRR": round(sum(rr) / len(qids), 3)}

    every = [q for q in orders["teacher"] if q in orders["BM25"]]
    sample = list(orders["untrained student"])
    return {"all": {k: measure(orders[k], every) for k in ("BM25", "teacher")},
            "sample": {k: measure(orders[k], sample) for k in orders}}


def per_query(run, ds) -> dict:
    from distillir.evaluation.metrics import evaluate_qrels

    return {q: v["nDCG@10"] for q, v in evaluate_qrels(run, ds.qrels, ["nDCG@10"], per_query=True)["per_query"].items()}


def measure(args) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.data.run import Run
    from distillir.evaluation import evaluate_run

    done = {n: json.loads((run_dir(n) / "results.json").read_text()) for n in VARIANTS
            if (run_dir(n) / "results.json").is_file()}
    if not args.partial:
        for name in VARIANTS:
            if name not in done:
                done[name] = variant_run(name)
            if args.only == name:
                return {}
    if not done:
        raise SystemExit("no finished DGR run to render")
    ds = load_dataset("scifact", "test")
    cache = WORK_DIR / "runs" / "dgr-smollm2-baselines"
    base = baselines(ds, cache)
    first = run_dir(next(iter(VARIANTS)))
    knows = teacher_knowledge(load_dataset("scifact", "train"), first, cache)
    rows, nd = [], {}
    systems = [("BM25", "bm25", False), ("all-MiniLM-L6-v2 (dense, untrained here)", "minilm", False),
               ("SmolLM2 untrained, same prompt and prefix tree", "untrained", False)]
    for key, label, labels in systems:
        run = base["runs"][label]
        nd[label] = per_query(run, ds)
        rows.append({"system": key, "key": label, "labels_used": labels, **evaluate_run(run, qrels=ds.qrels),
                     "wall_s": base["wall_s"][label]})
    for name in VARIANTS:
        if name not in done:
            continue
        run = Run.read_trec(run_dir(name) / "eval" / "dgr.trec")
        nd[name] = per_query(run, ds)
        stages = {s: json.loads((run_dir(name) / "stages" / f"{s}.json").read_text()).get("wall_s")
                  for s in ("teacher", "student", "eval") if (run_dir(name) / "stages" / f"{s}.json").is_file()}
        rows.append({"system": LABELS[name], "key": name, "labels_used": True, **evaluate_run(run, qrels=ds.qrels),
                     "stages_wall_s": stages})
    claims = []
    for name in ("ranknet", "kl", "listnet"):
        if name in nd and "plain" in nd:
            d = paired_difference(nd["plain"], nd[name])
            claims.append({"claim": f"{LABELS[name]} beats plain" + (" (the paper's claim)" if name == "ranknet" else ""),
                           "first": "plain", "second": name, "nDCG@10": d,
                           "held": "held" if d["mean_diff"] - d["half_width"] > 0 else "not shown"})
    for name in [n for n in VARIANTS if n in nd]:
        d = paired_difference(nd["untrained"], nd[name])
        claims.append({"claim": f"{LABELS[name]} beats the untrained LM", "first": "untrained", "second": name,
                       "nDCG@10": d, "held": "held" if d["mean_diff"] - d["half_width"] > 0 else "not shown"})
    train = {n: (done[n]["stages"]["student"].get("train") or {}) for n in done}
    return {"rows": rows, "claims": claims, "teacher_knowledge": knows, "train": train,
            "runs_missing": [n for n in VARIANTS if n not in done], "queries": len(ds.queries)}


def main(argv=None) -> None:
    import dgr_report

    args = parse_args(argv)
    res = measure(args)
    if not res:
        return
    _, config = load()
    s = config.student
    data = {"benchmark": "dgr", "environment": environment(), "command": command_line(), "config": CONFIG,
            "student": {"model": s.seq2seq.model, "train_layers": s.seq2seq.lm.train_layers, "steps": s.trainer.max_steps,
                        "batch": s.trainer.per_device_batch_size, "docid_max_length": s.docid_max_length,
                        "prompt": s.prompt, "beams": config.eval.top_k},
            "note": args.note, **res}
    data["summary"] = [summary_row(r["system"], "scifact", "test", r["labels_used"], r, KEYS) for r in res["rows"]]
    write_results(args.name, data, dgr_report.render(data))


if __name__ == "__main__":
    main()
