"""A cross-encoder trained from question-answer pairs alone (no gold passages) re-ranking BM25 on squad-open:
the shipped `configs/cross-encoder-answers-squad-cpu.yaml` run through the recipe, its re-ranking of BM25's
top 20 for 1,000 seeded dev questions beside BM25 in the same run, with a paired 95% interval per metric.

    .venv/bin/python bench/ranker_answers.py      # ~35 min on 2 cores with native bf16 (resumes; a finished
                                                  # run directory is read, not trained again)
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, write_results

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cross-encoder-answers-squad-cpu.yaml"
KEYS = ("Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10", "R@1", "R@5")


DISTILL_SETS = ["max_train_queries=1000", "rounds=1", "teacher_scores=ranker", "teacher.ranker_max_length=192",
                "retriever.trainer.max_steps=63"]  # over configs/fid-kd-answers-squad-cpu.yaml


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=str(WORK_DIR / "runs" / "ce-answers"))
    p.add_argument("--distill-dir", default=str(WORK_DIR / "runs" / "fid-kd-ranker-1k"),
                   help="the fid-kd run distilling this ranker into MiniLM (read when finished, else run)")
    p.add_argument("--name", default="ranker_answers")
    p.add_argument("--versus", default=None, help="another finished ranker run directory: per-question differences "
                   "of this ranker's re-ranking minus that one's, on the same questions (e.g. one training setting "
                   "against another); the distillation step is then skipped")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


def run_or_read(run_dir: Path) -> dict:
    import json

    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    results = run_dir / "results.json"
    if results.is_file():
        return json.loads(results.read_text())
    recipe = get_recipe("cross-encoder")
    config = load_config(recipe.Config, CONFIG, [f"output_dir={run_dir}", f"resume={str(run_dir.is_dir()).lower()}"])
    return recipe().run(config)


def distill_or_read(distill_dir: Path, ranker_dir: Path) -> dict:
    """The ranker as fid-kd's teacher (`teacher_scores: ranker`) of MiniLM: 1,000 questions, one round."""
    import json

    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    if (distill_dir / "results.json").is_file():
        return json.loads((distill_dir / "results.json").read_text())
    recipe = get_recipe("fid-kd")
    config = load_config(recipe.Config, REPO / "configs" / "fid-kd-answers-squad-cpu.yaml",
                         [f"output_dir={distill_dir}", *DISTILL_SETS, f"teacher.ranker={ranker_dir / 'final'}",
                          f"resume={str(distill_dir.is_dir()).lower()}"])
    return recipe().run(config)


@functools.cache
def _lists(ranker_dir: Path | None):
    """The eval questions and BM25's lists, or (given a ranker run) its re-ranking of those lists: each computed
    once per process (the dataset and BM25 once in all), since one float32 re-ranking of 1,000 lists takes about
    9 minutes here."""
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    config = load_config(get_recipe("cross-encoder").Config, CONFIG)
    cfg = config.eval
    if ranker_dir is None:
        from distillir.data.datasets import load_dataset
        from distillir.retrievers.bm25 import bm25_cached

        ds = load_dataset(cfg.dataset, cfg.split, max_queries=cfg.max_queries, seed=config.seed)
        return ds, bm25_cached(ds.corpus).search(ds.queries, top_k=cfg.depth)
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import rerank_run

    ds, first = _lists(None)
    return ds, rerank_run(CrossEncoder.from_pretrained(ranker_dir / "final"), first, ds, cfg.top_k, cfg.batch_size)


def paired_differences(run_dir: Path, ks=(1, 5), versus: Path | None = None) -> dict:
    """Per question, answer hit@k of the re-ranked run minus BM25's (or, given `versus`, minus that ranker's
    re-ranking of the same list): mean and 95% normal interval (paired, so tighter than the two metrics' own
    intervals). Re-ranks again with the saved ranker(s) (same config)."""
    from distillir.data.answers import has_answer

    ds, second = _lists(run_dir)
    first = _lists(versus)[1]
    text = dict(zip(ds.corpus.ids, ds.corpus.texts))
    answers = dict(zip(ds.queries.ids, ds.queries.answers))

    def hit(run, qid, k):
        return float(any(has_answer(answers[qid], text[p]) for p, _ in run.get(qid, [])[:k]))

    out = {}
    for k in ks:
        d = [hit(second, q, k) - hit(first, q, k) for q in ds.queries.ids]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((v - mean) ** 2 for v in d) / max(len(d) - 1, 1))
        out[f"Top-{k}"] = {"mean_diff": round(mean, 4), "half_width": round(1.96 * sd / math.sqrt(len(d)), 4),
                           "questions": len(d), "better": sum(v > 0 for v in d), "worse": sum(v < 0 for v in d)}
    return out


def markdown(res: dict) -> str:
    from distillir.evaluation.report import format_table

    env, r = res["environment"], res["results"]
    m = r["metrics"]
    rows = [{"system": "BM25 (k1 0.9, b 0.4)", **{k: m["first_stage"].get(k) for k in KEYS}},
            {"system": f"cross-encoder (answer positives) re-ranking BM25's top {m['rerank_top_k']}",
             **{k: m["reranked"].get(k) for k in KEYS}}]
    diff = res["paired"]
    t = r["train"]
    lines = [
        "# A cross-encoder from question-answer pairs alone, re-ranking BM25 (squad-open)" + _setting(res), "",
        (f"Recipe run finished {res['trained_utc']}, this report rendered {env['date_utc']} on {env['cpu_model']} "
         f"({env['logical_cpus']} logical CPUs; flags {', '.join(env['cpu_flags'])}), torch {env.get('torch')}, "
         "bf16 autocast in training, float32 re-ranking; one other job shared the cores at times."), "",
        (f"Training: `configs/cross-encoder-answers-squad-cpu.yaml`: all-MiniLM-L6-v2 with a fresh one-logit head, "
         f"{r['train_examples']:,} squad-open training questions of a 20,000 seeded sample (the rest had no "
         "answer-bearing passage in BM25's top 30), positive = BM25's best-ranked passage holding an answer string "
         "(no gold passage read), 7 BM25 negatives without the answer per list, listwise cross-entropy, "
         f"{t['global_step']} steps x 4 lists of 8 ({t['elapsed'] / 60:.0f} min). Evaluation: "
         f"{m['first_stage']['queries']:,} seeded dev questions over the 20,963-paragraph corpus; Top-k = answer "
         "recall, MRR@10 / nDCG@10 / R@k = the gold paragraph."), "",
        format_table(rows, ["system", *KEYS]), "",
        "Paired per-question differences (re-ranked minus BM25), 95% normal interval:", "",
        format_table([{"metric": k, "difference": v["mean_diff"], "± (95%)": v["half_width"],
                       "questions better": v["better"], "questions worse": v["worse"]} for k, v in diff.items()]), "",
        "## Reading", "",
        reading(res), "",
        *distill_section(res),
        *versus_section(res),
        "## Command", "", "```", res["command"], "```"]
    return "\n".join(lines)


def distill_section(res: dict) -> list[str]:
    from distillir.evaluation.report import format_table

    d = res.get("distill")
    if not d:
        return []
    r = d["rounds"][0]
    hits = r["teacher"]["answer_hits"]
    cols = ["Top-1", "Top-5", "Top-20", "Top-100", "MRR@10"]
    rows = [{"system": "MiniLM (the student's start)", **{k: d["start_metrics"][k] for k in cols}},
            {"system": "MiniLM distilled from the ranker (1 round)", **{k: d["metrics"][k] for k in cols}}]
    gain = d["metrics"]["Top-1"] - d["start_metrics"]["Top-1"]
    half = 1.96 * math.sqrt(d["metrics"]["Top-1"] * (1 - d["metrics"]["Top-1"]) / d["eval_questions"])
    return [
        "## The ranker as the teacher of a retriever (re-ranker -> retriever distillation)", "",
        (f"fid-kd with `teacher_scores: ranker` (this ranker), `configs/fid-kd-answers-squad-cpu.yaml` with "
         f"`{' '.join(DISTILL_SETS)}`: {d['train_questions']:,} training questions, lists = MiniLM's top 10 merged "
         f"with BM25's, the ranker's logits as teacher scores, the query tower trained {r['retriever']['train']['global_step']} "
         f"steps ({r['wall_s']['round'] / 60:.0f} min, {r['wall_s']['teacher'] / 60:.0f} of them scoring); "
         f"all {d['eval_questions']:,} dev questions."), "",
        format_table([{"on the training lists": "top passage holds an answer (hit@1)",
                       "teacher (ranker)": hits["teacher_hit@1"], "the lists' own order": hits["retriever_hit@1"]},
                      {"on the training lists": "MRR of the first answer-bearing passage",
                       "teacher (ranker)": hits["teacher_mrr"], "the lists' own order": hits["retriever_mrr"]}]), "",
        format_table(rows, ["system", *cols]), "",
        (f"The teacher knows more than the lists it scores ({hits['teacher_hit@1']:.3f} vs {hits['retriever_hit@1']:.3f} "
         f"hit@1 over {hits['answer_lists']} lists with an answer), and the student ends above its start: Top-1 "
         f"{gain:+.3f} (± {half:.3f}, 95%), MRR@10 {d['metrics']['MRR@10'] - d['start_metrics']['MRR@10']:+.3f}, from QA "
         "pairs alone end to end (ranker and student). One round, 1,000 questions: a first measurement, not a tuned one; "
         "the student stays below BM25 (Top-1 0.758 on all dev questions, retrieval_quality.md), as every MiniLM "
         "query-tower student here does."),
        ""]


def _setting(res: dict, lead: str = ": ") -> str:
    """The trainer settings that set this run apart from the `--versus` one ("" without one)."""
    v = res.get("versus")
    return f"{lead}{_differs(v, 0)}" if v else ""


def _differs(v: dict, side: int) -> str:
    """'attention_dropout 0.0' for this run (side 0) or the other (1); null is the model's own."""
    own = "null (the model's own)"
    return ", ".join(f"{k} {own if pair[side] is None else pair[side]}" for k, pair in v["trainer_differs"].items())


def versus_summary(run_dir: Path, versus: Path) -> dict:
    """This ranker against another run's on the same questions: each one's trainer settings that differ, metrics,
    training time, and the paired per-question differences (this minus that)."""
    import json

    import yaml

    mine, theirs = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run_dir, versus))
    differ = {k: [mine["trainer"].get(k), theirs["trainer"].get(k)] for k in sorted(set(mine["trainer"]) | set(theirs["trainer"]))
              if mine["trainer"].get(k) != theirs["trainer"].get(k)}
    other = json.loads((versus / "results.json").read_text())
    return {"run_dir": str(versus.relative_to(REPO)) if versus.is_relative_to(REPO) else str(versus),
            "trainer_differs": differ, "metrics": other["metrics"]["reranked"], "train_s": other["train"]["elapsed"],
            "paired": paired_differences(run_dir, versus=versus)}


def versus_section(res: dict) -> list[str]:
    from distillir.evaluation.report import format_table

    v = res.get("versus")
    if not v:
        return []
    this, that = res["results"]["metrics"]["reranked"], v["metrics"]
    rows = [{"ranker": f"this run ({_differs(v, 0)})",
             **{k: this.get(k) for k in KEYS}, "training min": round(res["results"]["train"]["elapsed"] / 60, 1)},
            {"ranker": f"`{v['run_dir']}` ({_differs(v, 1)})",
             **{k: that.get(k) for k in KEYS}, "training min": round(v["train_s"] / 60, 1)}]
    one = v["paired"]["Top-1"]
    return ["## Against another ranker (same config but for the trainer settings named)", "",
            format_table(rows), "",
            format_table([{"metric": k, "difference (this - that)": d["mean_diff"], "± (95%)": d["half_width"],
                           "questions better": d["better"], "questions worse": d["worse"]}
                          for k, d in v["paired"].items()]), "",
            (f"Top-1 {one['mean_diff']:+.3f} ± {one['half_width']:.3f} paired: "
             + ("above, beyond the interval" if one["mean_diff"] - one["half_width"] > 0 else
                "below, beyond the interval" if one["mean_diff"] + one["half_width"] < 0 else "within noise")
             + ". Training minutes are each run's own, with whatever else ran beside it."), ""]


def reading(res: dict) -> str:
    m, d = res["results"]["metrics"], res["paired"]
    b, c = m["first_stage"], m["reranked"]
    one = d["Top-1"]
    held = one["mean_diff"] - one["half_width"] > 0
    return (f"Re-ranking lifts Top-1 from {b['Top-1']:.3f} to {c['Top-1']:.3f} ({one['mean_diff']:+.3f} ± "
            f"{one['half_width']:.3f}, paired) and MRR@10 from {b['MRR@10']:.3f} to {c['MRR@10']:.3f}: "
            + ("above BM25 beyond the interval, from no relevance label" if held else "not beyond the interval")
            + f". The target set "
            f"for it (Top-1 >= 0.85) is {0.85 - c['Top-1']:.3f} away; this is {res['results']['train']['elapsed'] / 60:.0f} minutes of CPU training on "
            f"{res['results']['train']['global_step'] * 4:,} lists, one pass over a tenth of them. Top-20 is "
            "unchanged by construction (the top 20 are re-ordered, not replaced).")


def main(argv=None) -> None:
    import json

    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        res = json.loads(path.read_text())
    else:
        run_dir = Path(args.run_dir)
        if args.versus and not all((Path(args.versus) / f).exists() for f in ("final", "config.yaml", "results.json")):
            raise SystemExit(f"--versus {args.versus}: not a finished ranker run (it needs final/, config.yaml and "
                             "results.json)")
        results = run_or_read(run_dir)
        trained = dt.datetime.fromtimestamp((run_dir / "results.json").stat().st_mtime, dt.timezone.utc)
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        res = {"benchmark": args.name, "command": command_line(), "environment": environment(),
               "trained_utc": trained.isoformat(timespec="seconds"), "config": str(CONFIG.relative_to(REPO)),
               "results": {k: results[k] for k in ("train_examples", "positives", "train", "metrics")},
               # the paired intervals re-rank once more: kept from an earlier render of the same run
               "paired": earlier.get("paired") if earlier.get("trained_utc") == trained.isoformat(timespec="seconds")
               else paired_differences(run_dir)}
        if args.versus:
            res["versus"] = versus_summary(run_dir, Path(args.versus))
        else:
            distilled = distill_or_read(Path(args.distill_dir), run_dir)
            res["distill"] = {k: distilled[k] for k in ("train_questions", "eval_questions", "start_metrics",
                                                        "metrics", "rounds", "kept_round")}
    m = res["results"]["metrics"]
    res["summary"] = [
        {"system": "BM25", "dataset": "squad-open", "split": "dev", "labels_used": False,
         "metrics": {k: m["first_stage"][k] for k in KEYS}},
        {"system": f"cross-encoder (answer positives{_setting(res, ', ')}) re-ranking BM25 top-{m['rerank_top_k']}",
         "dataset": "squad-open",
         "split": "dev", "labels_used": False, "metrics": {k: m["reranked"][k] for k in KEYS}}]
    d = res.get("distill")
    if d:
        cols = ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10")
        res["summary"] += [
            {"system": "MiniLM (untrained)", "dataset": "squad-open", "split": "dev", "labels_used": False,
             "metrics": {k: d["start_metrics"][k] for k in cols}},
            {"system": "MiniLM distilled from the answer-trained ranker", "dataset": "squad-open", "split": "dev",
             "labels_used": False, "metrics": {k: d["metrics"][k] for k in cols}}]
    if res.get("versus"):
        v = res["versus"]
        res["summary"].append({"system": f"cross-encoder (answer positives, {v['run_dir']}) re-ranking BM25 top-"
                                         f"{m['rerank_top_k']}", "dataset": "squad-open", "split": "dev",
                               "labels_used": False, "metrics": {k: v["metrics"][k] for k in KEYS}})
    write_results(args.name, res, markdown(res))


if __name__ == "__main__":
    main()
