"""Re2G measured on squad-open (issue 17): retrieve (BM25 + MiniLM) -> re-rank (the answer-trained cross-encoder)
-> generate (SmolLM2-135M-Instruct reading each passage alone, marginalised with the re-ranker's softmax).

Two recipe runs of configs/re2g-smollm2-squad-cpu.yaml on the same 1,000 seeded dev questions:
  kd:     end to end with online distillation into the query encoder; its evaluation also has the generator
          read BM25's top 5, MiniLM's top 5, and the start candidates re-ranked by the start ranker (the pipeline);
  frozen: end to end with the query encoder frozen (no KD).
then both query encoders (start and after KD) on all 10,570 dev questions. Rows: EM / F1 of the generator and
the answer recall (Top-k) of what it reads; paired 95% intervals for the paper's claims.

    .venv/bin/python bench/re2g.py                 # runs what is missing (finished stages are read; resumable)
    .venv/bin/python bench/re2g.py --render-only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, paired_difference, summary_row, verdict, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/re2g-smollm2-squad-cpu.yaml"
RANKER = WORK_DIR / "runs" / "ce-answers" / "final"  # bench/ranker_answers.py trains it (the config's ranker)
RUNS = {"kd": [], "frozen": ["e2e.query_encoder=frozen", "eval.generator_baselines=false"],
        # KD with each parameter group clipped alone: the re-ranker's step no longer shrinks with the KD gradient
        "kd-clip": ["e2e.trainer.clip_per_group=true", "eval.generator_baselines=false"],
        # the frozen run again with other training draws (dropout, example order) on the same data: run-to-run spread
        "frozen-seed2": ["e2e.query_encoder=frozen", "eval.generator_baselines=false", "e2e.trainer.training_seed=2"]}
# (system in the tables, run, system in its generations log, retrieval metrics key in the run's metrics)
SYSTEMS = [
    ("SmolLM2 over BM25's top 5", "kd", "bm25", "bm25"),
    ("SmolLM2 over MiniLM's top 5", "kd", "dense_start", "dense_start"),
    ("pipeline: BM25 + MiniLM merged, re-ranked, top 5", "kd", "reranked_start", "reranked_start"),
    ("Re2G end to end, query encoder frozen (no KD)", "frozen", "reranked", "reranked"),
    ("Re2G end to end with online KD", "kd", "reranked", "reranked"),
    ("Re2G end to end with online KD, each part clipped alone", "kd-clip", "reranked", "reranked"),
    ("Re2G end to end, query encoder frozen (no KD), training seed 2", "frozen-seed2", "reranked", "reranked"),
]
KEYS = ("EM", "F1", "Top-1", "Top-5")
CLAIMS = [  # (claim, first system, second system): second - first, paired per question
    ("merged + re-ranked beats BM25 alone", 0, 2),
    ("merged + re-ranked beats MiniLM alone", 1, 2),
    ("end to end with KD beats the pipeline", 2, 4),
    ("end to end with KD beats end to end without", 3, 4),
    ("end to end without KD beats the pipeline", 2, 3),  # not the paper's: what end-to-end training alone adds
    ("KD clipped per part beats end to end without", 3, 5),  # not the paper's: does the shared clip explain KD's loss
    ("KD clipped per part beats KD under one clip", 4, 5),
    ("the frozen run repeated with training seed 2 (run-to-run spread, not a claim)", 3, 6),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranker", default=str(RANKER), help="the start re-ranker (a saved cross-encoder)")
    p.add_argument("--only", choices=sorted(RUNS), help="run one recipe run and stop (no report)")
    p.add_argument("--name", default="re2g")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--partial", action="store_true",
                   help="render from the finished runs only (rows and claims of unfinished runs left out), run nothing")
    return p.parse_args(argv)


def run_dir(name: str) -> Path:
    return WORK_DIR / "runs" / f"re2g-smollm2-{name}"


def recipe_run(name: str, ranker: str) -> dict:
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    out = run_dir(name)
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    recipe = get_recipe("re2g")
    config = load_config(recipe.Config, REPO / CONFIG, [f"output_dir={out}", f"resume={str(out.is_dir()).lower()}",
                                                        f"ranker.model={ranker}", *RUNS[name]])
    started = time.time()
    results = recipe().run(config)
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


def all_dev_retrieval() -> dict:
    """Top-k of the start and the KD-trained query encoders on every dev question (the corpus embedded once)."""
    from distillir.data.datasets import load_dataset
    from distillir.recipes.common.reading import evaluate_retrieval
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.retriever import DenseRetriever

    cached = run_dir("kd") / "all_dev_retrieval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    ds = load_dataset("squad-open", "dev")
    out = {}
    for name, path in (("start", "sentence-transformers/all-MiniLM-L6-v2"),
                       ("kd", run_dir("kd") / "final" / "query_encoder")):
        encoder = BiEncoder.from_pretrained(path)
        run = DenseRetriever.build(ds.corpus, encoder, batch_size=64, dtype="bfloat16", cache=True).search(
            ds.queries, top_k=100)
        out[name] = evaluate_retrieval(run, ds)
    cached.write_text(json.dumps(out, indent=1))
    return out


def gold_reference() -> dict:
    """The generator reading each sample question's gold paragraph alone (qrels read to evaluate only): what it
    answers when retrieval is perfect, the ceiling of every row. Cached beside the kd run."""
    from distillir.data.datasets import load_dataset
    from distillir.evaluation.qa import evaluate_answers
    from distillir.recipes import get_recipe
    from distillir.recipes.common.generators import generate_logged, load_generator
    from distillir.training.config import load_config

    out = run_dir("kd") / "gold_reference.json"
    if out.is_file():
        return json.loads(out.read_text())
    config = load_config(get_recipe("re2g").Config, run_dir("kd") / "config.yaml", [])
    dev = load_dataset("squad-open", "dev")
    sample = load_dataset("squad-open", "dev", max_queries=config.eval.max_queries, seed=config.seed)  # the runs'
    qids = [q for q in sample.queries.ids if dev.qrels.get(q)]
    examples = [{"id": q, "question": dev.queries.texts[dev.queries.index_of[q]],
                 "ctxs": [dev.corpus.passage(min(dev.qrels[q]))]} for q in qids]
    generator = load_generator(run_dir("kd") / "final" / "generator", config.generator, 1, config.seed)
    answers = generate_logged(generator, {"gold": examples}, run_dir("kd") / "eval" / "gold_generations.jsonl",
                              config.eval.batch_size)["gold"]
    result = {"metrics": evaluate_answers(answers, dev.queries.subset(list(answers)))}
    out.write_text(json.dumps(result, indent=1))
    return result


def ranker_movement(runs: list[str], ranker: str) -> dict:
    """L2 distance of each run's trained re-ranker from the start ranker, and between the runs' re-rankers: did a
    run's re-ranker move less (as one shared clip would suggest), and do two runs end at the same weights?"""
    import torch
    from safetensors.torch import load_file

    def weights(path: Path) -> dict:
        return load_file(path / "model.safetensors")

    def dist(a: dict, b: dict) -> float:
        return round(math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a if k in b)), 4)

    with torch.no_grad():
        start = weights(Path(ranker))
        trained = {n: weights(run_dir(n) / "final" / "ranker") for n in runs}
        return {"from_start": {n: dist(w, start) for n, w in trained.items()},
                "between": {f"{a} vs {b}": dist(trained[a], trained[b])
                            for i, a in enumerate(runs) for b in runs[i + 1:]}}


def per_question(name: str) -> dict:
    """{system: {qid: (EM, F1)}} from a run's generations log, and its questions' answers."""
    from distillir.data.datasets import load_dataset
    from distillir.evaluation.qa import exact_match, f1_score

    rows = [json.loads(x) for x in (run_dir(name) / "eval" / "generations.jsonl").read_text().splitlines()]
    dev = load_dataset("squad-open", "dev")
    answers = {q: dev.queries.answers[dev.queries.index_of[q]] for q in {r["id"] for r in rows}}
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["system"], {})[r["id"]] = (exact_match(r["answer"], answers[r["id"]]),
                                                    f1_score(r["answer"], answers[r["id"]]))
    return out


def measure(args) -> dict:
    runs = [n for n in RUNS if not args.partial or (run_dir(n) / "results.json").is_file()]
    results = {name: recipe_run(name, args.ranker) for name in runs}
    scores = {name: per_question(name) for name in runs}
    metrics = {name: results[name]["metrics"] for name in runs}
    table = []
    for label, run, system, retrieval in SYSTEMS:
        if run not in runs:
            continue
        gen = metrics[run]["generator" if system == "reranked" else f"generator_{system}"]
        table.append({"system": label, "run": run, "EM": gen["EM"], "F1": gen["F1"], "questions": gen["queries"],
                      **{k: metrics[run][retrieval].get(k) for k in ("Top-1", "Top-5", "Top-20")}})
    claims = []
    for claim, a, b in CLAIMS:
        if SYSTEMS[a][1] not in runs or SYSTEMS[b][1] not in runs:
            continue
        first, second = scores[SYSTEMS[a][1]][SYSTEMS[a][2]], scores[SYSTEMS[b][1]][SYSTEMS[b][2]]
        common = [q for q in first if q in second]
        diff = {m: paired_difference({q: first[q][i] for q in common}, {q: second[q][i] for q in common})
                for i, m in enumerate(("EM", "F1"))}
        claims.append({"claim": claim, "first": SYSTEMS[a][0], "second": SYSTEMS[b][0], **diff,
                       "held": verdict(diff["F1"])})
    walls = {n: json.loads((run_dir(n) / "bench_wall_s.json").read_text())["wall_s"]
             for n in runs if (run_dir(n) / "bench_wall_s.json").is_file()}
    data = {"benchmark": "re2g", "environment": environment(), "command": command_line(drop=("--note", "--only", "--partial")), "config": CONFIG,
            "ranker": args.ranker, "table": table, "gold_reference": gold_reference()["metrics"], "claims": claims, "all_dev": all_dev_retrieval(),
            "stages": {n: {k: v.get("wall_s") for k, v in results[n]["stages"].items()} for n in runs},
            "wall_s": walls, "runs_missing": [n for n in RUNS if n not in runs]}
    import yaml

    cfg = yaml.safe_load((run_dir(runs[0]) / "config.yaml").read_text())
    data["e2e"] = {"steps": cfg["e2e"]["trainer"]["max_steps"], "batch": cfg["e2e"]["trainer"]["per_device_batch_size"],
                   "questions": results[runs[0]]["train_questions"], "eval_questions": cfg["eval"]["max_queries"]}
    data["e2e"]["train_log"] = {n: [{k: r.get(k) for k in ("step", "loss", "grad_norm")} for r in map(
        json.loads, (run_dir(n) / "e2e" / "log.jsonl").read_text().splitlines())]
        for n in runs if (run_dir(n) / "e2e" / "log.jsonl").is_file()}
    data["e2e"]["max_grad_norm"] = cfg["e2e"]["trainer"].get("max_grad_norm")
    data["e2e"]["ranker_movement"] = ranker_movement(runs, args.ranker)
    data["summary"] = [summary_row(r["system"], "squad-open", f"dev ({data['e2e']['eval_questions']:,} seeded)", False, r, KEYS) for r in table]
    data["summary"] += [summary_row(f"MiniLM query encoder, {k}", "squad-open", "dev (all)", False, v,
                                    ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10"))
                        for k, v in data["all_dev"].items()]
    return data


def main(argv=None) -> None:
    args = parse_args(argv)
    path = REPO / "bench" / "results" / f"{args.name}.json"
    if args.only:
        recipe_run(args.only, args.ranker)
        return
    data = json.loads(path.read_text()) if args.render_only else measure(args)
    from re2g_report import render

    write_results(args.name, data, render(data))


if __name__ == "__main__":
    main()
