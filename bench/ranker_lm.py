"""A cross-encoder that learns a causal LM's scores, re-ranking BM25 on squad-open (issue 14: LM -> cross-encoder,
a fast teacher from a slow one). No relevance label and no answer is read for training.

1. teacher: SmolLM2-135M-Instruct's question likelihood log p(question | passage) over the lists of 1,000 seeded
   training questions (fid-kd's teacher stage: configs/fid-kd-smollm2-squad-cpu.yaml with lm_distill.py's
   squad_ql settings; MiniLM's top 10 merged with BM25's, the first 10 in RRF order);
2. student: configs/cross-encoder-answers-squad-cpu.yaml's model and schedule with `teacher.scores` = that file
   (KL to the z-scored teacher over each list, nothing mined), STEPS steps;
3. the recipe's evaluation: BM25's top 20 re-ranked for 1,000 seeded dev questions beside BM25, with paired
   per-question intervals; and the LM itself re-ranking BM25's top 20 of the first LM_QUESTIONS of them, beside
   the student on the same questions (what the teacher could teach).
What the teacher knows on its training lists comes from lm_distill.py's measure (answer strings, read to measure).

    .venv/bin/python bench/ranker_lm.py            # resumable: finished runs are read
    .venv/bin/python bench/ranker_lm.py --render-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, paired_difference, summary_row, write_results

REPO = Path(__file__).resolve().parents[1]
TEACHER_CONFIG = "configs/fid-kd-smollm2-squad-cpu.yaml"
TEACHER_SETS = ["max_train_queries=1000", "rounds=1", "retriever.trainer.max_steps=63", "eval.reader=false",
                "teacher.aggregation=question_likelihood"]  # lm_distill.py's squad_ql run
RANKER_CONFIG = "configs/cross-encoder-answers-squad-cpu.yaml"
STEPS = 250  # 4 lists of 10 a step: one pass over the 1,000 lists
LM_QUESTIONS = 200
KEYS = ("Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="ranker_lm")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--note", help="a line under the wall times")
    return p.parse_args(argv)


def teacher_config(out: Path):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe = get_recipe("fid-kd")
    return recipe, load_config(recipe.Config, REPO / TEACHER_CONFIG,
                               [f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *TEACHER_SETS])


def teacher_run(out: Path) -> dict:
    if (out / "results.json").is_file() and json.loads((out / "results.json").read_text()).get("complete"):
        return json.loads((out / "results.json").read_text())
    recipe, config = teacher_config(out)
    return recipe().run(config)


def ranker_run(out: Path, scores: Path) -> dict:
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    recipe = get_recipe("cross-encoder")
    config = load_config(recipe.Config, REPO / RANKER_CONFIG, [
        f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", f"teacher.scores={scores}",
        "data.max_train_queries=null", "list_size=10", f"trainer.max_steps={STEPS}", "trainer.save_steps=25",
        "eval=null"])  # evaluated below, once, keeping the per-question runs
    started = time.time()
    results = recipe().run(config)
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


def reranked_runs(ranker_dir: Path, lm_out: Path):
    """BM25's top 20 of the eval questions, the ranker's re-ranking of it, and the LM's of the first LM_QUESTIONS
    (cached as TREC files beside the ranker run)."""
    from distillir.data.datasets import load_dataset
    from distillir.data.run import Run
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes import get_recipe
    from distillir.recipes.common.ranking import rerank_run
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.training.config import load_config

    cfg = load_config(get_recipe("cross-encoder").Config, REPO / RANKER_CONFIG)
    ev = cfg.eval
    ds = load_dataset(ev.dataset, ev.split, max_queries=ev.max_queries, seed=cfg.seed)
    bm25 = bm25_cached(ds.corpus).search(ds.queries, top_k=ev.top_k)
    path = ranker_dir / "eval_reranked.trec"
    if not path.is_file():
        ranker = CrossEncoder.from_pretrained(ranker_dir / "final")
        ranker.with_inference_dtype(ev.dtype)
        rerank_run(ranker, bm25, ds, ev.top_k, ev.batch_size).write_trec(path, tag="ranker")
    ranker_run_ = Run.read_trec(path)
    lm_path, first = ranker_dir / "eval_lm_reranked.trec", ds.queries.ids[:LM_QUESTIONS]
    if not lm_path.is_file():
        lm_rerank(bm25, ds, first, lm_out).write_trec(lm_path, tag="lm")
    return ds, bm25, ranker_run_, Run.read_trec(lm_path), first


def lm_rerank(bm25, ds, qids, lm_out: Path):
    """The teacher LM (question likelihood, the teacher run's reader settings) re-ranking BM25's lists of `qids`."""
    from distillir.data.run import Run
    from distillir.readers.fid_data import examples_from_run
    from distillir.recipes.common.reading import build_lm_reader
    from distillir.teachers.lm_likelihood import default_cache, lm_teacher_scores

    _, config = teacher_config(lm_out)
    reader = build_lm_reader(config.reader, config.teacher.aggregation)
    sub = Run({q: bm25[q] for q in qids}, name="bm25")
    examples = [ex for ex in examples_from_run(sub, ds.queries, ds.corpus) if ex["ctxs"]]
    scores = lm_teacher_scores(reader, examples, "question_likelihood", batch_size=config.reader.batch_size,
                               cache=default_cache(reader), progress="LM re-ranking")
    return Run({q: list(zip(pids, vals)) for q, (pids, vals) in scores.items()}, name="lm")


def hits(run, ds, qids, k: int) -> dict:
    from distillir.data.answers import AnswerMatcher

    matcher = AnswerMatcher(ds.corpus)
    answers = dict(zip(ds.queries.ids, ds.queries.answers))
    return {q: float(any(matcher.hits(answers[q], [p for p, _ in run.get(q, [])[:k]]))) for q in qids}


def measure() -> dict:
    from lm_distill import teacher_knowledge

    from distillir.evaluation import evaluate_run

    lm_out = WORK_DIR / "runs" / "fid-kd-smollm2-ql-1k"
    teacher = teacher_run(lm_out)
    scores = lm_out / "round-1" / "teacher" / "scores.jsonl"
    ranker_dir = WORK_DIR / "runs" / "ce-lm-ql-1k"
    ranker = ranker_run(ranker_dir, scores)
    ds, bm25, reranked, lm, first = reranked_runs(ranker_dir, lm_out)
    everyone = list(ds.queries.ids)
    sub = ds.queries.subset(first)
    metrics = {"BM25": evaluate_run(bm25, qrels=ds.qrels, queries=ds.queries, corpus=ds.corpus),
               "ranker": evaluate_run(reranked, qrels=ds.qrels, queries=ds.queries, corpus=ds.corpus)}
    first_qrels = {q: ds.qrels[q] for q in first if q in ds.qrels}  # MRR / nDCG over these questions only
    on_first = {name: evaluate_run(type(run)({q: run[q] for q in first if q in run}), qrels=first_qrels, queries=sub,
                                   corpus=ds.corpus)
                for name, run in (("BM25", bm25), ("ranker", reranked), ("LM", lm))}
    paired = {f"Top-{k}": paired_difference(hits(bm25, ds, everyone, k), hits(reranked, ds, everyone, k)) for k in (1, 5)}
    paired_lm = {f"Top-{k}": paired_difference(hits(reranked, ds, first, k), hits(lm, ds, first, k)) for k in (1, 5)}
    _, config = teacher_config(lm_out)
    r1 = teacher["rounds"][0]
    return {"metrics": metrics, "on_first": on_first, "paired_vs_bm25": paired, "paired_lm_vs_ranker": paired_lm,
            "questions": len(everyone), "lm_questions": len(first), "teacher_knowledge": teacher_knowledge(config, lm_out),
            "teacher": {"config": TEACHER_CONFIG, "sets": TEACHER_SETS, "questions": teacher["train_questions"],
                        "scoring_wall_s": (r1.get("teacher") or {}).get("wall_s")},
            "ranker": {"config": RANKER_CONFIG, "steps": ranker["train"]["global_step"], "lists": ranker["teacher"]["lists"],
                       "train_wall_s": ranker["train"].get("elapsed"), "loss": ranker["train"].get("loss")}}


def main(argv=None) -> None:
    from ranker_lm_report import markdown

    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        data = json.loads(path.read_text())
    else:
        measured = measure()
        data = {"benchmark": args.name, "environment": environment(), "command": command_line(), "note": args.note,
                **measured}
        label = "cross-encoder learning SmolLM2's question likelihood, re-ranking BM25's top 20"
        data["summary"] = [summary_row("BM25", "squad-open", f"dev ({data['questions']:,} seeded)", False,
                                       data["metrics"]["BM25"], KEYS),
                           summary_row(label, "squad-open", f"dev ({data['questions']:,} seeded)", False,
                                       data["metrics"]["ranker"], KEYS),
                           summary_row("SmolLM2 question likelihood re-ranking BM25's top 20 (the teacher)", "squad-open",
                                       f"dev (first {data['lm_questions']} of them)", False, data["on_first"]["LM"], KEYS)]
    write_results(args.name, data, markdown(data))


if __name__ == "__main__":
    main()
