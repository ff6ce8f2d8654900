"""DGR measured on BEIR SciFact (issue 17): a pretrained causal LM (SmolLM2-135M-Instruct) as the generative
retriever, writing an abstract's title under the corpus's prefix tree, trained at equal steps with

  plain:   the generation loss on the gold abstract's identifier + DSI-style indexing (student.rank_weight 0);
  ranknet: + DGR's distilled RankNet over the teacher-ordered candidates (the paper's method);
  kl:      + KL to the teacher's softmax instead (the paper's ablation);
  listnet: + ListNet on the teacher's order instead (the paper's ablation);

all from configs/dgr-smollm2-scifact-cpu.yaml, under two teachers:

  cross-encoder: the config's own (MiniLM with a fresh head, 60 steps on BM25's top 20 of the train claims);
  lm:            SmolLM2's claim likelihood log p(claim | abstract), no labels, over the union of BM25's and
                 MiniLM's top 10 (fid-kd's teacher stage: configs/fid-kd-smollm2-scifact-cpu.yaml), given to DGR
                 as `teacher.scores` (runs dgr-smollm2-lm-*).

Within a teacher every variant trains on the same candidates and teacher scores (the first run's, copied into the
others), the same example order and steps. Beside them, on the 300 test claims: BM25, all-MiniLM-L6-v2 and the
untrained LM under the same prompt and prefix tree. What each teacher knows is measured on its training lists
(gold = the train qrels: the teacher's order vs BM25's vs the untrained student's). Paired 95% intervals for the
paper's claim (distilled beats plain), for each variant against plain and for each loss across the two teachers.

    .venv/bin/python bench/dgr.py                 # runs what is missing (finished runs are read; resumable)
    .venv/bin/python bench/dgr.py --partial       # render the finished runs only
    .venv/bin/python bench/dgr.py --teacher lm    # only the LM teacher's runs (then render what is finished)
    .venv/bin/python bench/dgr.py --render-only   # re-render bench/results/dgr.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS_DIR,
    WORK_DIR,
    command_line,
    environment,
    paired_difference,
    summary_row,
    verdict,
    write_results,
)
from dgr_teachers import LM_TEACHER_RUN, lm_teacher_file, lm_teacher_knowledge, teacher_knowledge, untrained_student

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/dgr-smollm2-scifact-cpu.yaml"
VARIANTS = {  # the first one's candidates and teacher stages are shared by the others
    "ranknet": [],
    "plain": ["student.rank_weight=0"],
    "kl": ["student.rank_loss=kl"],
    "listnet": ["student.rank_loss=listnet"],
}
TEACHERS = {"cross-encoder": "", "lm": "lm-"}  # run-name prefix
TEACHER_LABELS = {"cross-encoder": "cross-encoder teacher", "lm": "SmolLM2 claim-likelihood teacher"}
LABELS = {"plain": "plain generative retriever (identifier NLL + indexing)", "ranknet": "DGR: + distilled RankNet",
          "kl": "DGR ablation: + KL to the teacher", "listnet": "DGR ablation: + ListNet on the teacher's order"}
KEYS = ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(VARIANTS), help="run one variant and stop (no report)")
    p.add_argument("--teacher", choices=sorted(TEACHERS), help="run only this teacher's variants (default: both)")
    p.add_argument("--name", default="dgr")
    p.add_argument("--partial", action="store_true", help="render from the finished runs only, run nothing")
    p.add_argument("--render-only", action="store_true", help="re-render results/NAME.json (no run directory read)")
    p.add_argument("--note", help="a line under the wall times (e.g. what else ran on the cores)")
    return p.parse_args(argv)


def run_dir(name: str) -> Path:
    return WORK_DIR / "runs" / f"dgr-smollm2-{name}"


def key(teacher: str, variant: str) -> str:
    return TEACHERS[teacher] + variant


def label(name: str) -> str:
    teacher = "lm" if name.startswith(TEACHERS["lm"]) else "cross-encoder"
    variant = name[len(TEACHERS[teacher]):]
    if variant == "plain":
        return LABELS[variant] + ("" if teacher == "cross-encoder" else ", on the LM teacher's lists")
    return f"{LABELS[variant]} ({TEACHER_LABELS[teacher]})"


def load(sets=()):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe = get_recipe("dgr")
    return recipe, load_config(recipe.Config, REPO / CONFIG, list(sets))


def teacher_sets(teacher: str) -> list[str]:
    return [f"teacher.scores={lm_teacher_file()}"] if teacher == "lm" else []


def seed_from_first(out: Path, teacher: str) -> None:
    """Copy the teacher's first variant's finished candidates and teacher stages into `out`, so its variants train
    on the same lists and teacher scores (the stage records make the recipe skip them)."""
    first = run_dir(key(teacher, next(iter(VARIANTS))))
    if out.is_dir() or not (first / "stages" / "teacher.json").is_file():
        return
    out.mkdir(parents=True)
    (out / "stages").mkdir()
    (out / "teacher").mkdir()
    for part in ("stages/candidates.json", "stages/teacher.json", "candidates.trec", "teacher/scores.jsonl",
                 "config.yaml"):
        shutil.copy2(first / part, out / part)


def variant_run(teacher: str, variant: str) -> dict:
    out = run_dir(key(teacher, variant))
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    if variant != next(iter(VARIANTS)):
        seed_from_first(out, teacher)
    recipe, config = load([f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *teacher_sets(teacher),
                           *VARIANTS[variant]])
    started = time.time()
    results = recipe().run(config)
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


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
        "untrained": lambda: untrained_student(config, ds.corpus).search(ds.queries, top_k=k,
                                                                         batch_size=config.eval.batch_size),
    }
    for name, build in builders.items():
        path = cache / f"{name}.trec"
        if not path.is_file():
            started = time.perf_counter()
            build().write_trec(path, tag=name)
            (cache / f"{name}.wall_s").write_text(f"{time.perf_counter() - started:.1f}")
        runs[name] = Run.read_trec(path)
        wall = cache / f"{name}.wall_s"
        walls[name] = float(wall.read_text()) if wall.is_file() else None
    return {"runs": runs, "wall_s": walls}


def per_query(run, ds) -> dict:
    from distillir.evaluation.metrics import evaluate_qrels

    return {q: v["nDCG@10"] for q, v in evaluate_qrels(run, ds.qrels, ["nDCG@10"], per_query=True)["per_query"].items()}


def claim(nd: dict, first: str, second: str, text: str) -> dict:
    d = paired_difference(nd[first], nd[second])
    return {"claim": text, "first": first, "second": second, "nDCG@10": d,
            "held": verdict(d)}


def claims_of(nd: dict) -> list[dict]:
    out = []
    for prefix in TEACHERS.values():
        plain = prefix + "plain"
        for variant in ("ranknet", "kl", "listnet"):
            if prefix + variant in nd and plain in nd:
                out.append(claim(nd, plain, prefix + variant, f"{label(prefix + variant)} beats plain"
                                 + (" (the paper's claim)" if variant == "ranknet" else "")))
    for variant in VARIANTS:  # a teacher that knows against one that does not, loss by loss
        if variant != "plain" and variant in nd and key("lm", variant) in nd:
            out.append(claim(nd, variant, key("lm", variant),
                             f"{LABELS[variant]}: the LM teacher beats the cross-encoder teacher"))
    for name in ("plain", "ranknet", key("lm", "plain"), key("lm", "ranknet")):
        if name in nd:
            out.append(claim(nd, "untrained", name, f"{label(name)} beats the untrained LM"))
    return out


def stage_walls(out: Path) -> dict:
    return {s: json.loads((out / "stages" / f"{s}.json").read_text()).get("wall_s")
            for s in ("teacher", "student", "eval") if (out / "stages" / f"{s}.json").is_file()}


def measure(args) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.data.run import Run
    from distillir.evaluation import evaluate_run

    names = [key(t, v) for t in TEACHERS for v in VARIANTS]
    done = {n: json.loads((run_dir(n) / "results.json").read_text()) for n in names
            if (run_dir(n) / "results.json").is_file()}
    if not args.partial:
        for teacher in [args.teacher] if args.teacher else TEACHERS:
            for variant in VARIANTS:
                if key(teacher, variant) not in done:
                    done[key(teacher, variant)] = variant_run(teacher, variant)
                if args.only == variant:
                    return {}
    if not done:
        raise SystemExit("no finished DGR run to render")
    ds, train = load_dataset("scifact", "test"), load_dataset("scifact", "train")
    cache = WORK_DIR / "runs" / "dgr-smollm2-baselines"
    base = baselines(ds, cache)
    _, config = load()
    knows = {"cross-encoder": teacher_knowledge(config, train, run_dir("ranknet"), cache)}
    if key("lm", "ranknet") in done:
        knows["lm"] = lm_teacher_knowledge(config, train, lm_teacher_file(run=False), cache)
    rows, nd = [], {}
    systems = [("BM25", "bm25"), ("all-MiniLM-L6-v2 (dense, untrained here)", "minilm"),
               ("SmolLM2 untrained, same prompt and prefix tree", "untrained")]
    for system, name in systems:
        run = base["runs"][name]
        nd[name] = per_query(run, ds)
        rows.append({"system": system, "key": name, "labels_used": False, **evaluate_run(run, qrels=ds.qrels),
                     "wall_s": base["wall_s"][name]})
    distilled = LM_TEACHER_RUN / "round-1" / "eval" / "retriever.trec"
    if distilled.is_file():  # the same LM teacher distilled into MiniLM's query tower (fid-kd, no labels)
        run = Run.read_trec(distilled)
        nd["lm-minilm"] = per_query(run, ds)
        rows.append({"system": "all-MiniLM-L6-v2 distilled from the SmolLM2 teacher (fid-kd)", "key": "lm-minilm",
                     "labels_used": False, **evaluate_run(run, qrels=ds.qrels)})
    for name in [n for n in names if n in done]:
        run = Run.read_trec(run_dir(name) / "eval" / "dgr.trec")
        nd[name] = per_query(run, ds)
        rows.append({"system": label(name), "key": name, "labels_used": True, **evaluate_run(run, qrels=ds.qrels),
                     "stages_wall_s": stage_walls(run_dir(name))})
    train_logs = {n: (done[n]["stages"]["student"].get("train") or {}) for n in done}
    lm_stage = LM_TEACHER_RUN / "round-1" / "stages" / "teacher.json"
    lm_wall = json.loads(lm_stage.read_text()).get("wall_s") if lm_stage.is_file() else None
    return {"rows": rows, "claims": claims_of(nd), "teacher_knowledge": knows, "train": train_logs,
            "lm_teacher": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "scoring_wall_s": lm_wall},
            "runs_missing": [n for n in names if n not in done], "queries": len(ds.queries)}


def main(argv=None) -> None:
    import dgr_report

    args = parse_args(argv)
    if args.render_only:
        data = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())
        write_results(args.name, data, dgr_report.render(data))
        return
    res = measure(args)
    if not res:
        return
    _, config = load()
    s = config.student
    data = {"benchmark": "dgr", "environment": environment(), "command": command_line(("--note", "--only", "--teacher", "--partial")),
            "config": CONFIG, "student": {"model": s.seq2seq.model, "train_layers": s.seq2seq.lm.train_layers,
                                          "steps": s.trainer.max_steps, "batch": s.trainer.per_device_batch_size,
                                          "docid_max_length": s.docid_max_length, "prompt": s.prompt,
                                          "beams": config.eval.top_k},
            "note": args.note, **res}
    data["summary"] = [summary_row(r["system"], "scifact", "test", r["labels_used"], r, KEYS) for r in res["rows"]]
    write_results(args.name, data, dgr_report.render(data))


if __name__ == "__main__":
    main()
