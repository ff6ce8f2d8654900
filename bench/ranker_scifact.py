"""Cross-encoders re-ranking BM25 on SciFact test (issue 14's SciFact rows), in one run: the squad-open ranker
trained from question-answer pairs alone (configs/cross-encoder-answers-squad-cpu.yaml, no SciFact data: zero
shot), that ranker fine-tuned on SciFact train's qrels, and the shipped SciFact ranker trained on the same
qrels from MiniLM (configs/cross-encoder-scifact-cpu.yaml), each re-ranking BM25's top-k of the 300 test
claims, with a paired 95% interval against BM25 per claim (nDCG@10).

    .venv/bin/python bench/ranker_scifact.py              # trains what is missing (finished runs are read)
    .venv/bin/python bench/ranker_scifact.py --render-only
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
SCIFACT = "configs/cross-encoder-scifact-cpu.yaml"
KEYS = ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20", "R@100")
SQUAD_RANKER = WORK_DIR / "runs" / "ce-answers" / "final"  # bench/ranker_answers.py trains it
# The squad ranker's head is trained already: fine-tuning starts at the encoder rate the SciFact config's
# comment names for a trained head (3e-5), not the 3e-4 a fresh head needs.
FINE_TUNE_SETS = [f"model={SQUAD_RANKER}", "trainer.learning_rate=3.0e-5", "max_length=192"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top-k", type=int, default=100, help="BM25 passages re-ranked per claim")
    p.add_argument("--name", default="ranker_scifact")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


def train_or_read(out: Path, sets: list[str]) -> dict:
    """The cross-encoder recipe on SciFact train (its own evaluation off: this bench re-ranks every ranker the
    same way)."""
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    recipe = get_recipe("cross-encoder")
    config = load_config(recipe.Config, REPO / SCIFACT,
                         [f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", "eval=null", *sets])
    return recipe().run(config)



def measure(top_k: int) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.evaluation.metrics import evaluate_qrels
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.recipes.common.ranking import rerank_run
    from distillir.retrievers.bm25 import bm25_cached

    if not SQUAD_RANKER.is_dir():
        raise SystemExit(f"{SQUAD_RANKER} is missing: run bench/ranker_answers.py first (it trains the squad ranker)")
    trained = {"fine-tuned": train_or_read(WORK_DIR / "runs" / "ce-answers-scifact", FINE_TUNE_SETS),
               "scifact": train_or_read(WORK_DIR / "runs" / "ce-scifact", [])}
    ds = load_dataset("scifact", "test")
    bm25 = bm25_cached(ds.corpus).search(ds.queries, top_k=100)
    rankers = {
        "cross-encoder from squad-open QA pairs (no SciFact data)": (SQUAD_RANKER, False),
        "cross-encoder from squad-open QA pairs, fine-tuned on SciFact train qrels": (Path(trained["fine-tuned"]["final_model"]), True),
        "cross-encoder from MiniLM on SciFact train qrels (shipped config)": (Path(trained["scifact"]["final_model"]),
                                                                              True)}

    def per_query(run):
        return {q: v["nDCG@10"] for q, v in evaluate_qrels(run, ds.qrels, ["nDCG@10"], per_query=True)["per_query"].items()}

    base = per_query(bm25)
    rows = {"BM25": {"metrics": evaluate_run(bm25, qrels=ds.qrels), "labels_used": False}}
    for name, (path, labels) in rankers.items():
        ranker = CrossEncoder.from_pretrained(path).with_inference_dtype("auto")
        start = time.perf_counter()
        run = rerank_run(ranker, bm25, ds, top_k)
        wall = time.perf_counter() - start
        pairs = sum(min(len(h), top_k) for h in bm25.values())
        rows[f"{name.strip()} re-ranking BM25 top-{top_k}"] = {
            "metrics": evaluate_run(run, qrels=ds.qrels), "labels_used": labels, "model": str(path),
            "paired_vs_bm25": paired_difference(base, per_query(run)), "pairs": pairs,
            "pairs_per_s": round(pairs / wall, 1), "dtype": ranker.inference_dtype}
    return {"rows": rows, "training": {k: {"train": v["train"], "train_examples": v["train_examples"]}
                                       for k, v in trained.items()}, "top_k": top_k}


def markdown(res: dict) -> str:
    from distillir.evaluation.report import format_table

    env, rows = res["environment"], res["rows"]
    table = [{"system": s, "labels": "yes" if r["labels_used"] else "no", **{k: r["metrics"].get(k) for k in KEYS}}
             for s, r in rows.items()]
    diffs = [{"system": s, "nDCG@10 - BM25": r["paired_vs_bm25"]["mean_diff"],
              "± (95%)": r["paired_vs_bm25"]["half_width"], "claims better": r["paired_vs_bm25"]["better"],
              "claims worse": r["paired_vs_bm25"]["worse"], "pairs/s": r["pairs_per_s"]}
             for s, r in rows.items() if "paired_vs_bm25" in r]
    t = res["training"]
    return "\n".join([
        "# Cross-encoders re-ranking BM25 on SciFact test", "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}; re-ranking in "
         f"{', '.join(sorted({r['dtype'] for r in rows.values() if 'dtype' in r}))}. "
         f"300 test claims, BM25 (k1 0.9, b 0.4) top-100 as the first stage, its top-{res['top_k']} re-scored. "
         "The squad-open ranker is bench/ranker_answers.py's (QA pairs only); the fine-tuned one continues it on "
         f"SciFact train ({t['fine-tuned']['train']['global_step']} steps, lr 3e-5, `{' '.join(FINE_TUNE_SETS[1:])}`), "
         f"the shipped one starts from MiniLM ({t['scifact']['train']['global_step']} steps, `{SCIFACT}`)."), "",
        format_table(table, ["system", "labels", *KEYS]), "",
        "Paired per-claim differences against BM25, 95% normal interval:", "",
        format_table(diffs), "",
        "## Reading", "", reading(res), "",
        "## Command", "", "```", res["command"], "```"])


def reading(res: dict) -> str:
    rows = res["rows"]
    bm25 = rows["BM25"]["metrics"]["nDCG@10"]
    zero, tuned, scratch = (next(r for s, r in rows.items() if s.startswith(prefix)) for prefix in (
        "cross-encoder from squad-open QA pairs (no", "cross-encoder from squad-open QA pairs, fine-tuned",
        "cross-encoder from MiniLM"))
    n = {k: v["metrics"]["nDCG@10"] for k, v in (("zero", zero), ("tuned", tuned), ("scratch", scratch))}
    best = max(n.values())
    return (f"No ranker here re-ranks SciFact above BM25 ({bm25:.3f}); the goal (> 0.676) and the target (>= 0.72) are "
            f"not met: the best is {bm25 - best:.3f} short of BM25. The squad-open ranker that beats BM25 on squad-open does not "
            f"transfer to scientific claims zero-shot ({n['zero']:.3f}, {zero['paired_vs_bm25']['mean_diff']:+.3f} ± "
            f"{zero['paired_vs_bm25']['half_width']:.3f} against BM25), but it is a far better start for SciFact's labels "
            f"than MiniLM: {n['tuned']:.3f} against {n['scratch']:.3f} after the same 100 steps, within noise of BM25 "
            f"({tuned['paired_vs_bm25']['mean_diff']:+.3f} ± {tuned['paired_vs_bm25']['half_width']:.3f}). Re-ranking "
            f"100 passages instead of 20 costs the MiniLM-started ranker (0.610 on the top 20 in the co-training "
            f"benchmark): a weak ranker meets more passages it can wrongly lift. Scoring ran at "
            f"{min(r['pairs_per_s'] for r in (zero, tuned, scratch)):.0f}-{max(r['pairs_per_s'] for r in (zero, tuned, scratch)):.0f} "
            "pairs/s in bf16.")


def main(argv=None) -> None:
    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        res = json.loads(path.read_text())
    else:
        res = {"benchmark": args.name, "command": command_line(), "environment": environment(), **measure(args.top_k)}
    res["summary"] = [summary_row(s, "scifact", "test", r["labels_used"], r["metrics"], KEYS)
                      for s, r in res["rows"].items()]
    write_results(args.name, res, markdown(res))


if __name__ == "__main__":
    main()
