"""A cross-encoder that learns a causal LM's scores, re-ranking BM25 on squad-open (issue 14: LM -> cross-encoder,
a fast teacher from a slow one). No relevance label and no answer is read for training.

1. teacher: SmolLM2-135M-Instruct's question likelihood log p(question | passage) over the lists of 1,000 seeded
   training questions (fid-kd's teacher stage: configs/fid-kd-smollm2-squad-cpu.yaml with lm_distill.py's
   squad_ql settings; MiniLM's top 10 merged with BM25's, the first 10 in RRF order);
2. students: configs/cross-encoder-answers-squad-cpu.yaml's schedule with `teacher.scores` = that file (KL to the
   z-scored teacher over each list, nothing mined), STEPS steps, from two starts: MiniLM with a fresh head, and the
   answer-trained ranker of bench/ranker_answers.py (distant supervision first, the LM's soft targets on top);
3. the recipe's evaluation: BM25's top 20 re-ranked for 1,000 seeded dev questions beside BM25, with paired
   per-question intervals; and the LM itself re-ranking BM25's top 20 of the first LM_QUESTIONS of them, beside
   the student on the same questions (what the teacher could teach).
What the teacher knows on its training lists comes from lm_distill.py's measure (answer strings, read to measure).

    .venv/bin/python bench/ranker_lm.py            # resumable: finished runs are read
    .venv/bin/python bench/ranker_lm.py --render-only
    .venv/bin/python bench/ranker_lm.py --lm gemma --eval-questions 2000   # Gemma-3-270M teaching (ranker_lm_gemma)
    .venv/bin/python bench/ranker_lm.py --lm gemma --eval-questions 2000 --steps 500   # two passes (ranker_lm_gemma_500)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GEMMA,
    GEMMA_SETS,
    WORK_DIR,
    command_line,
    environment,
    lm_rerank,
    paired_difference,
    summary_row,
    write_results,
)

REPO = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = "configs/fid-kd-smollm2-squad-cpu.yaml"
TEACHER_SETS = ["max_train_queries=1000", "rounds=1", "retriever.trainer.max_steps=63", "eval.reader=false",
                "teacher.aggregation=question_likelihood"]  # lm_distill.py's squad_ql run
RANKER_CONFIG = "configs/cross-encoder-answers-squad-cpu.yaml"
STEPS = 250  # 4 lists of 10 a step: one pass over the 1,000 lists
LM_QUESTIONS = 200
ANSWER_RANKER = WORK_DIR / "runs" / "ce-answers"  # bench/ranker_answers.py's run (its final/ is the second start)
# metrics key -> (run directory, start model or None for the config's MiniLM)
# The teacher LM -> its fid-kd run (lm_distill.py's squad_ql / squad_ql_gemma), its label, and the students: metrics
# key -> (run directory, start model or None for the config's MiniLM). Gemma teaches only the answer-trained
# start: from MiniLM's fresh head SmolLM2's scores gave a ranker below BM25 (ranker_lm.md).
LMS = {
    "smollm2": {"dir": "fid-kd-smollm2-ql-1k", "sets": [], "label": "SmolLM2",
                "model": "SmolLM2-135M-Instruct (packaged GGUF, bf16 where native)",
                "students": {"ranker": ("ce-lm-ql-1k", None),
                             "ranker_from_answers": ("ce-answers-lm-ql-1k", ANSWER_RANKER / "final")}},
    "gemma": {"dir": "fid-kd-gemma-ql-1k", "sets": [*GEMMA_SETS],
              "label": "Gemma-3-270M", "model": "Gemma-3-270M (base, Q4_K_M GGUF, plain prompts, bf16 where native)",
              "students": {"ranker_from_answers": ("ce-answers-gemma-ql-1k", ANSWER_RANKER / "final")}},
}
KEYS = ("Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", choices=sorted(LMS), default="smollm2", help="the teacher LM (gemma: its GGUF at "
                   f"{GEMMA.relative_to(REPO)}, see bench/lm_teacher.py)")
    p.add_argument("--name", default=None, help="results name (default ranker_lm, or ranker_lm_LM for another LM)")
    p.add_argument("--eval-questions", type=int, default=None,
                   help="seeded dev questions to re-rank (default: the ranker config's 1,000)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"the students' steps (default {STEPS}: one pass; "
                   "another number trains in run directories of their own, results NAME_STEPS)")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--note", help="a line under the wall times")
    args = p.parse_args(argv)
    for flag, value in (("--eval-questions", args.eval_questions), ("--steps", args.steps)):
        if value is not None and value < 1:
            p.error(f"{flag} must be a positive number, got {value}")
    return args


def teacher_config(out: Path, lm: dict):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe = get_recipe("fid-kd")
    return recipe, load_config(recipe.Config, REPO / TEACHER_CONFIG,
                               [f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *TEACHER_SETS, *lm["sets"]])


def teacher_run(out: Path, lm: dict) -> dict:
    if (out / "results.json").is_file() and json.loads((out / "results.json").read_text()).get("complete"):
        return json.loads((out / "results.json").read_text())
    recipe, config = teacher_config(out, lm)
    return recipe().run(config)


def ranker_run(out: Path, scores: Path, start: Path | None = None, steps: int = STEPS) -> dict:
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    recipe = get_recipe("cross-encoder")
    config = load_config(recipe.Config, REPO / RANKER_CONFIG, [
        f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", f"teacher.scores={scores}",
        "data.max_train_queries=null", "list_size=10", f"trainer.max_steps={steps}", "trainer.save_steps=25",
        "eval=null", *([f"model={start}"] if start else [])])  # evaluated below, once, keeping the per-question runs
    started = time.time()
    results = recipe().run(config)
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


def eval_setup(questions: int | None = None):
    """The eval questions (the ranker config's eval split; `questions` of them, seeded, instead of the config's
    number) and BM25's top 20 of them."""
    from distillir.data.datasets import load_dataset
    from distillir.recipes import get_recipe
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.training.config import load_config

    cfg = load_config(get_recipe("cross-encoder").Config, REPO / RANKER_CONFIG)
    ev = cfg.eval
    ds = load_dataset(ev.dataset, ev.split, max_queries=questions or ev.max_queries, seed=cfg.seed)
    return ev, ds, bm25_cached(ds.corpus).search(ds.queries, top_k=ev.top_k)


def _cached(ranker_dir: Path, stem: str, ds, ev) -> Path:
    """A re-ranking's TREC file beside the run, named by its question count unless it is the config's number."""
    n = len(ds.queries)
    return ranker_dir / (f"{stem}.trec" if n == ev.max_queries else f"{stem}_{n}.trec")


def reranked(ranker_dir: Path, ev, ds, bm25):
    """`ranker_dir/final`'s re-ranking of BM25's lists (cached as a TREC file beside the run)."""
    from distillir.data.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import rerank_run

    path = _cached(ranker_dir, "eval_reranked", ds, ev)
    if not path.is_file():
        ranker = CrossEncoder.from_pretrained(ranker_dir / "final")
        ranker.with_inference_dtype(ev.dtype)
        rerank_run(ranker, bm25, ds, ev.top_k, ev.batch_size).write_trec(path, tag="ranker")
    return Run.read_trec(path)


def lm_reranked(ranker_dir: Path, lm_out: Path, lm: dict, ev, ds, bm25, first):
    from distillir.data.run import Run

    path = _cached(ranker_dir, "eval_lm_reranked", ds, ev)
    if not path.is_file():  # the teacher LM, its run's reader settings, over BM25's lists of `first`
        _, config = teacher_config(lm_out, lm)
        lm_rerank(config, Run({q: bm25[q] for q in first}, name="bm25"), ds).write_trec(path, tag="lm")
    return Run.read_trec(path)


def hits(run, ds, qids, k: int) -> dict:
    from distillir.data.answers import AnswerMatcher

    matcher = AnswerMatcher(ds.corpus)
    answers = dict(zip(ds.queries.ids, ds.queries.answers))
    return {q: float(any(matcher.hits(answers[q], [p for p, _ in run.get(q, [])[:k]]))) for q in qids}


def measure(lm: dict, questions: int | None = None, steps: int = STEPS) -> dict:
    from lm_distill import teacher_knowledge

    from distillir.evaluation import evaluate_run

    lm_out = WORK_DIR / "runs" / lm["dir"]
    teacher = teacher_run(lm_out, lm)
    scores = lm_out / "round-1" / "teacher" / "scores.jsonl"
    ev, ds, bm25 = eval_setup(questions)
    everyone, first = list(ds.queries.ids), ds.queries.ids[:LM_QUESTIONS]
    runs, trained = {"BM25": bm25}, {}
    for key, (name, start) in lm["students"].items():
        if start is not None and not start.is_dir():
            print(f"skipped {key}: its start {start} is missing (run bench/ranker_answers.py)")
            continue
        name = name if steps == STEPS else f"{name}-{steps}"  # another schedule: its own run directory
        trained[key] = ranker_run(WORK_DIR / "runs" / name, scores, start, steps)
        runs[key] = reranked(WORK_DIR / "runs" / name, ev, ds, bm25)
    if ANSWER_RANKER.joinpath("final").is_dir():  # the second student's start, as it is
        runs["answer ranker"] = reranked(ANSWER_RANKER, ev, ds, bm25)
    # The LM's re-ranking does not depend on the students' schedule: kept beside the first student's default run.
    runs["LM"] = lm_reranked(WORK_DIR / "runs" / next(iter(lm["students"].values()))[0], lm_out, lm, ev, ds, bm25,
                             first)
    sub = ds.queries.subset(first)
    metrics = {name: evaluate_run(run, qrels=ds.qrels, queries=ds.queries, corpus=ds.corpus)
               for name, run in runs.items() if name != "LM"}
    first_qrels = {q: ds.qrels[q] for q in first if q in ds.qrels}  # MRR / nDCG over these questions only
    on_first = {name: evaluate_run(type(run)({q: run[q] for q in first if q in run}), qrels=first_qrels, queries=sub,
                                   corpus=ds.corpus)
                for name, run in runs.items()}

    def paired(a: str, b: str, qids) -> dict:  # b - a, per question
        return {f"Top-{k}": paired_difference(hits(runs[a], ds, qids, k), hits(runs[b], ds, qids, k)) for k in (1, 5)}

    comparisons = [(key, "BM25", everyone) for key in trained]
    if "ranker_from_answers" in trained and "answer ranker" in runs:
        comparisons += [("ranker_from_answers", "answer ranker", everyone)]
    comparisons += [("LM", key, first) for key in trained]
    _, config = teacher_config(lm_out, lm)
    r1 = teacher["rounds"][0]
    return {"metrics": metrics, "on_first": on_first,
            "paired": [{"first": b, "second": a, **paired(b, a, qids)} for a, b, qids in comparisons],
            "questions": len(everyone), "lm_questions": len(first), "teacher_knowledge": teacher_knowledge(config, lm_out),
            "lm": {"label": lm["label"], "model": lm["model"]},
            "teacher": {"config": TEACHER_CONFIG, "sets": [*TEACHER_SETS, *lm["sets"]],
                        "questions": teacher["train_questions"],
                        "scoring_wall_s": (r1.get("teacher") or {}).get("wall_s")},
            "rankers": {key: {"config": RANKER_CONFIG, "start": str(lm["students"][key][1] or "all-MiniLM-L6-v2, fresh head"),
                              "steps": t["train"]["global_step"], "lists": t["teacher"]["lists"],
                              "train_wall_s": t["train"].get("elapsed"), "loss": t["train"].get("loss")}
                        for key, t in trained.items()}}


def main(argv=None) -> None:
    from ranker_lm_report import markdown, systems

    args = parse_args(argv)
    name = args.name or ("ranker_lm" if args.lm == "smollm2" else f"ranker_lm_{args.lm}")
    name += "" if args.name or args.steps == STEPS else f"_{args.steps}"
    path = Path(__file__).resolve().parent / "results" / f"{name}.json"
    if args.render_only:
        data = json.loads(path.read_text())
    else:
        if args.lm == "gemma" and not GEMMA.is_file():
            raise SystemExit(f"{GEMMA} is missing: write it as bench/lm_teacher.py's docstring says")
        measured = measure(LMS[args.lm], args.eval_questions, args.steps)
        data = {"benchmark": name, "environment": environment(), "command": command_line(), "note": args.note,
                **measured}
        named = systems(data)
        split = f"dev ({data['questions']:,} seeded)"
        data["summary"] = [summary_row(named[key], "squad-open", split, False, data["metrics"][key], KEYS)
                           for key in named if key in data["metrics"]] + [
                           summary_row(f"{data['lm']['label']} question likelihood re-ranking BM25's top 20 (the "
                                       "teacher)", "squad-open", f"dev (first {data['lm_questions']} of them)", False,
                                       data["on_first"]["LM"], KEYS)]
    write_results(name, data, markdown(data))


if __name__ == "__main__":
    main()
