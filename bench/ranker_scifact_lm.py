"""A cross-encoder that learns Gemma-3-270M's claim likelihood on SciFact train, re-ranking BM25 on SciFact test
(issue 14's SciFact row, LM -> cross-encoder; issue 13's "the LM as a re-ranker of BM25's top 20"). No relevance
label is read for training: the train qrels only measure what each model knows.

1. teacher: lm_distill.py's scifact_ql_gemma run (fid-kd's teacher stage: Gemma's log p(claim | abstract) over
   each train claim's list of 10, BM25's and MiniLM's candidates merged); its round-1/teacher/scores.jsonl;
2. student: the squad-open ranker trained from QA pairs (bench/ranker_answers.py; no SciFact data) learning those
   lists (`teacher.scores`: KL to the z-scored teacher over each list), PASSES passes, on
   configs/cross-encoder-scifact-cpu.yaml's schedule at ranker_scifact.py's fine-tuning rate and length;
3. what each orders first on the training lists: the teacher, BM25, MiniLM, the student's start and the student;
4. test: BM25's top 100 of the 300 claims scored once by each ranker; the rows re-rank the top 20 and the top 100
   (the top 20 re-ordered by the same scores), beside BM25; Gemma itself re-ranking BM25's top 20 of the first
   LM_CLAIMS claims; paired per-claim intervals on nDCG@10.

    .venv/bin/python bench/ranker_scifact_lm.py              # resumable: finished runs and scorings are read
    .venv/bin/python bench/ranker_scifact_lm.py --render-only
    .venv/bin/python bench/ranker_scifact_lm.py --teacher-run scifact_ql_gemma_512 --name ranker_scifact_lm_512
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GEMMA,
    WORK_DIR,
    command_line,
    environment,
    lm_rerank,
    paired_difference,
    summary_row,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
RANKER_CONFIG = "configs/cross-encoder-scifact-cpu.yaml"
TEACHER_RUN = "scifact_ql_gemma"  # lm_distill.py's run
START = WORK_DIR / "runs" / "ce-answers" / "final"  # bench/ranker_answers.py's ranker (squad-open QA pairs)
# ranker_scifact.py's fine-tuning of that ranker (its head is trained: the encoder rate), lists of 10 as scored.
STUDENT_SETS = ["trainer.learning_rate=3.0e-5", "max_length=192", "list_size=10", "data.max_train_queries=null",
                "trainer.save_steps=25", "eval=null"]
DEPTH = 100
KEYS = ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20", "R@100")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", type=int, default=1, help="passes over the teacher's lists (4 lists a step)")
    p.add_argument("--lm-claims", type=int, default=300, help="test claims the LM itself re-ranks (the first N)")
    p.add_argument("--teacher-run", default=TEACHER_RUN, help="lm_distill.py's run whose scores teach the ranker "
                   "(scifact_ql_gemma: 192 abstract tokens; scifact_ql_gemma_512: 512)")
    p.add_argument("--name", default="ranker_scifact_lm")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    for flag, value in (("--passes", args.passes), ("--lm-claims", args.lm_claims)):
        if value < 1:
            p.error(f"{flag} must be a positive number, got {value}")
    return args


def teacher(key: str):
    """lm_distill's Gemma run on SciFact's train claims (trained, resumed or read), its config and directory."""
    from lm_distill import RUNS, load, run_or_read

    if key not in RUNS:
        raise SystemExit(f"--teacher-run {key}: not one of lm_distill.py's runs ({', '.join(sorted(RUNS))})")
    spec = RUNS[key]
    _, config, out = load(spec)
    return run_or_read(spec), config, out


def student(scores: Path, passes: int, key: str) -> tuple[dict, Path]:
    """The student's run (trained, resumed or read) and its directory (its model is DIR/final: the results'
    own path may name a checkout that has moved)."""
    from distillir.recipes import get_recipe
    from distillir.teachers.scores import read_teacher_scores
    from distillir.training.config import load_config

    lists = len(read_teacher_scores(scores))
    steps = passes * math.ceil(lists / 4)
    suffix = "" if key == TEACHER_RUN else f"-{key}"
    out = WORK_DIR / "runs" / f"ce-answers-gemma-scifact-{steps}{suffix}"
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text()), out
    recipe = get_recipe("cross-encoder")
    config = load_config(recipe.Config, REPO / RANKER_CONFIG, [
        f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", f"model={START}", f"teacher.scores={scores}",
        f"trainer.max_steps={steps}", *STUDENT_SETS])
    return recipe().run(config), out


def scored(path: Path, model: Path, run, ds) -> tuple:
    """`model`'s scores of every (claim, passage) of `run` (cached as TREC at `path`) and pairs/s when scored."""
    from distillir.data.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder

    meta = path.with_suffix(".json")
    if not path.is_file():
        ranker = CrossEncoder.from_pretrained(model).with_inference_dtype("auto")
        pairs = sum(len(h) for h in run.values())
        start = time.perf_counter()
        result = ranker.rerank(run, ds.queries, ds.corpus, top_k=DEPTH, batch_size=64, show_progress=True)
        wall = time.perf_counter() - start
        result.write_trec(path, tag="ranker")
        meta.write_text(json.dumps({"pairs": pairs, "pairs_per_s": round(pairs / wall, 1),
                                    "dtype": ranker.inference_dtype}))
    return Run.read_trec(path), json.loads(meta.read_text())


def head_reranked(scores, first, k: int):
    """`first`'s top k of each claim ordered by `scores` (a run holding them), the rest after them in `first`'s order."""
    from distillir.data.run import Run
    from distillir.recipes.common.ranking import with_tail

    head = Run(name="head")
    for qid, hits in first.items():
        by = dict(scores.get(qid, []))
        head.add(qid, [(p, by[p]) for p, _ in hits[:k]])  # Run orders them: score, then id
    return with_tail(head, first, k)


def lm_reranked(path: Path, config, bm25, ds, claims, k: int = 20):
    """The teacher LM (its run's reader and prompt) scoring BM25's top k of `claims` (cached as TREC at `path`;
    pairs are cached as scored, so a killed run resumes)."""
    from distillir.data.run import Run

    if not path.is_file():
        start = time.perf_counter()
        lm_rerank(config, Run({q: bm25[q][:k] for q in claims}, name="bm25"), ds).write_trec(path, tag="lm")
        path.with_suffix(".json").write_text(json.dumps({"pairs": len(claims) * k,
                                                         "wall_s": round(time.perf_counter() - start, 1)}))
    return Run.read_trec(path), json.loads(path.with_suffix(".json").read_text())


def list_orders(rankers: dict, lists, ds) -> dict:
    """Each ranker's order of each training list (its 10 passages by score), cached beside the ranker."""
    from distillir.data.run import Run

    sub = Run({str(ex["id"]): [(str(c["id"]), 0.0) for c in ex["ctxs"]] for ex in lists}, name="lists")
    orders = {}
    for name, (model, cache) in rankers.items():
        run, _ = scored(cache, model, sub, ds)
        orders[name] = {q: [p for p, _ in hits] for q, hits in run.items()}
    return orders


def measure(passes: int, lm_claims: int, teacher_run: str = TEACHER_RUN) -> dict:
    from lm_distill import teacher_knowledge

    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.evaluation.metrics import evaluate_qrels
    from distillir.readers.fid_data import load_fid_examples
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.hybrid import reciprocal_rank_fusion

    if not START.is_dir():
        raise SystemExit(f"{START} is missing: run bench/ranker_answers.py first (it trains the squad-open ranker)")
    taught, config, out = teacher(teacher_run)
    scores = out / "round-1" / "teacher" / "scores.jsonl"
    trained, student_dir = student(scores, passes, teacher_run)
    model = student_dir / "final"
    train = load_dataset("scifact", "train")
    lists = load_fid_examples(out / "round-1" / "retrieve" / "train.jsonl")
    knows = teacher_knowledge(config, out, extra_orders=list_orders(
        {"start": (START, model.parent / "start_train_lists.trec"),
         "student": (model, model.parent / "train_lists.trec")}, lists, train))

    ds = load_dataset("scifact", "test")
    bm25 = bm25_cached(ds.corpus).search(ds.queries, top_k=DEPTH)
    full = {"start": scored(model.parent / "start_test_bm25_100.trec", START, bm25, ds),
            "student": scored(model.parent / "test_bm25_100.trec", model, bm25, ds)}
    claims = list(ds.queries.ids)[:lm_claims]
    lm_run, lm_cost = lm_reranked(out / f"test_bm25_20_lm_{len(claims)}.trec", config, bm25, ds, claims)
    runs = {"BM25": bm25}
    for key, (run, _) in full.items():
        runs[f"{key} top-20"] = head_reranked(run, bm25, 20)
        runs[f"{key} top-100"] = head_reranked(run, bm25, DEPTH)
    for key in ("start", "student"):  # hybrids: RRF of BM25's order and the re-ranked one (no weight to tune)
        for k in (20, DEPTH):
            runs[f"RRF {key} top-{k}"] = reciprocal_rank_fusion([bm25, runs[f"{key} top-{k}"]])
    runs["LM top-20"] = head_reranked(lm_run, type(bm25)({q: bm25[q] for q in claims}), 20)

    def per_claim(run, qids):
        per = evaluate_qrels(run, ds.qrels, ["nDCG@10"], per_query=True)["per_query"]
        return {q: per[q]["nDCG@10"] for q in qids if q in per}

    judged = [q for q in ds.queries.ids if q in ds.qrels]
    first = [q for q in claims if q in ds.qrels]
    on_first = {q: ds.qrels[q] for q in first}
    metrics = {name: evaluate_run(run, qrels=ds.qrels) for name, run in runs.items() if name != "LM top-20"}
    metrics_first = {name: evaluate_run(type(run)({q: run[q] for q in claims}), qrels=on_first)
                     for name, run in runs.items()}
    per = {name: per_claim(run, judged if name != "LM top-20" else first) for name, run in runs.items()}
    comparisons = [(s, "BM25") for s in runs if s != "BM25" and s != "LM top-20"]
    comparisons += [(f"{rrf}student top-{k}", f"{rrf}start top-{k}") for rrf in ("", "RRF ") for k in (20, DEPTH)]
    comparisons += [("LM top-20", "BM25"), ("LM top-20", "student top-20")]
    paired = [{"second": a, "first": b, "claims": "first" if a.startswith("LM") else "all",
               **paired_difference({q: per[b][q] for q in per[a]}, per[a])} for a, b in comparisons]
    r1 = taught["rounds"][0]
    return {"metrics": metrics, "metrics_first": metrics_first, "paired": paired, "knowledge": knows,
            "claims": len(judged), "lm_claims": len(first), "lm_cost": lm_cost,
            "scoring": {k: v[1] for k, v in full.items()},
            "teacher": {"run": teacher_run, "passage_max_length": config.reader.passage_max_length, "dir": str(out.relative_to(REPO)), "lists": len(lists),
                        "scoring_wall_s": (r1.get("teacher") or {}).get("wall_s")},
            "student": {"config": RANKER_CONFIG, "start": str(START.relative_to(REPO)), "sets": STUDENT_SETS,
                        "passes": passes, "steps": trained["train"]["global_step"],
                        "train_wall_s": trained["train"].get("elapsed"), "loss": trained["train"].get("loss"),
                        "lists": (trained.get("teacher") or {}).get("lists")}}


def main(argv=None) -> None:
    from ranker_scifact_lm_report import markdown, systems

    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        data = json.loads(path.read_text())
    else:
        if not GEMMA.is_file():
            raise SystemExit(f"{GEMMA} is missing: write it as bench/lm_teacher.py's docstring says")
        data = {"benchmark": args.name, "environment": environment(), "command": command_line(),
                **measure(args.passes, args.lm_claims, args.teacher_run)}
        named = systems(data)
        data["summary"] = [summary_row(named[k], "scifact", "test", False, m, KEYS)
                           for k, m in data["metrics"].items()] + [
            summary_row(named["LM top-20"], "scifact", "test" if data["lm_claims"] == data["claims"] else
                        f"test (first {data['lm_claims']} judged claims)", False,
                        data["metrics_first"]["LM top-20"], KEYS)]
    write_results(args.name, data, markdown(data))


if __name__ == "__main__":
    main()
