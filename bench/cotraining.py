"""Retriever-ranker co-training, side by side at equal training budget: BM25, the untrained encoder, the
supervised DPR-style retriever, a cross-encoder re-ranking BM25's and the DPR retriever's top-k, RocketQAv2
dynamic vs static, AR2 with lambda = 0.5 vs lambda = 0 vs plain hard-negative training.

Every trained system is the project's recipe run from its shipped CPU config (configs/*-scifact-cpu.yaml)
with the overrides listed in the results, so the table is what `distillir train ...` produces:

* equal budget: every retriever takes the same number of optimizer steps over the same number of passages
  per step (`--retriever-steps` x `--lists-per-step` lists of `--list-size`): DPR (1 positive + list_size-1
  BM25 negatives per query, plus in-batch), RocketQAv2 (joint steps), AR2 and the hard-negative baseline
  (iterations x steps per iteration, negatives re-mined from a refreshed index each iteration);
* one re-ranker for all: the `cross-encoder` recipe trains it once (listwise CE, BM25 negatives); RocketQAv2
  and AR2 start from it (no warm-up of their own), so the ranker's own training is not part of their budget;
* re-ranking runs in bfloat16 autocast on CPUs with native bf16 (the same scores to ~1e-2; see speed.md).

Writes bench/results/cotraining_<dataset>.{json,md} after every system (a run cut short keeps its numbers) and
resumes from its work directory (bench/work/cotraining-<dataset>): run the same command again to continue.

    .venv/bin/python bench/cotraining.py --dataset scifact                # ~1-1.5 h on 2 idle CPU cores
    .venv/bin/python bench/cotraining.py --dataset squad-open --train-questions 1000 --eval-questions 1000 \
        --rerank-depth 50                                                 # ~1.5-2 h; 50 x 1000 re-scored pairs per run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, WORK_DIR, command_line, keep_environment, peak_rss_mb, write_results
from cotraining_report import CLAIMS, COLUMNS, ORDER, REPO, SPLITS, markdown, summary

SEED = 42
TOP_K = 100
TREC_NAMES = {"ar2_lambda_0.5": "ar2-lambda-0.5", "ar2_lambda_0": "ar2-lambda-0", "hard_negatives": "hard-negatives"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(SPLITS), default="scifact")
    p.add_argument("--data-dir", default=None, help="the dataset's directory (default: resolved by name)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="hub id or local path")
    p.add_argument("--train-questions", type=int, default=0, help="seeded sample of training queries (0: all)")
    p.add_argument("--denoise-questions", type=int, default=200,
                   help="RocketQAv2: training queries whose top 20 the re-ranker re-scores (seeded sample)")
    p.add_argument("--eval-questions", type=int, default=0, help="seeded sample of evaluation queries (0: all)")
    p.add_argument("--retriever-steps", type=int, default=60, help="optimizer steps of every trained retriever")
    p.add_argument("--iterations", type=int, default=2, help="AR2 / hard negatives: index refreshes")
    p.add_argument("--lists-per-step", type=int, default=4)
    p.add_argument("--list-size", type=int, default=8)
    p.add_argument("--ranker-steps", type=int, default=100, help="cross-encoder training steps")
    p.add_argument("--ranker", default=None,
                   help="a saved cross-encoder every ranker-taught system starts from, instead of training one "
                        "(e.g. the answer-trained ranker of bench/ranker_answers.py)")
    p.add_argument("--ranker-unlabelled", action="store_true",
                   help="the given ranker was trained without relevance labels (its BM25 re-ranking row says so)")
    p.add_argument("--name", default=None, help="results name (default cotraining_<dataset>[_<ranker dir>])")
    p.add_argument("--ar2-ranker-steps", type=int, default=15, help="AR2 ranker steps per iteration")
    p.add_argument("--rerank-depth", type=int, default=100, help="re-rank each run's top-k")
    p.add_argument("--bf16-rerank", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--only", nargs="*", choices=ORDER, help="run only these systems (the rest are kept if done)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--render-only", action="store_true", help="rewrite the results from their JSON (no computation)")
    p.add_argument("--note", default=None,
                   help="a line shown under the table, kept across resumes (e.g. what else shared the machine)")
    args = p.parse_args(argv)
    tag = f"-{Path(args.ranker).resolve().parent.name}" if args.ranker else ""  # .../ce-answers/final -> ce-answers
    args.work = Path(args.work_dir) if args.work_dir else WORK_DIR / f"cotraining-{args.dataset}{tag}"
    args.name = args.name or f"cotraining_{args.dataset}{tag}".replace("-", "_")
    if args.ranker and not (Path(args.ranker) / "distillir_cross_encoder.json").is_file():
        p.error(f"--ranker {args.ranker}: not a saved cross-encoder (no distillir_cross_encoder.json there)")
    if args.ranker_unlabelled and not args.ranker:
        p.error("--ranker-unlabelled describes a given --ranker; this run trains its own (with the train qrels)")
    if args.retriever_steps % args.iterations:
        p.error("--retriever-steps must split evenly over --iterations")
    return args


def settings_of(args) -> dict:
    keys = ("dataset", "data_dir", "model", "train_questions", "denoise_questions", "eval_questions", "retriever_steps",
            "iterations", "lists_per_step", "list_size", "ranker_steps", "ar2_ranker_steps", "rerank_depth")
    settings = {k: getattr(args, k) for k in keys}
    if args.ranker:  # absent otherwise, so the work directories of earlier runs still resume
        settings["ranker"] = str(Path(args.ranker).resolve())
    return settings


def bf16_ok(args) -> bool:
    if args.bf16_rerank != "auto":
        return args.bf16_rerank == "on"
    sys.path.insert(0, str(REPO / "src"))
    from distillir.retrievers.dense.inference import default_encoding_dtype

    return default_encoding_dtype() == "bfloat16"


def per_query_scores(run, eval_ds, dataset: str) -> dict[str, dict[str, float]]:
    """{metric: {qid: value}}: Top-1 / Top-5 answer hits on squad-open, nDCG@10 on SciFact."""
    if dataset == "scifact":
        from distillir.evaluation.metrics import evaluate_qrels

        rows = evaluate_qrels(run, eval_ds.qrels, ["nDCG@10"], per_query=True)["per_query"]
        return {"nDCG@10": {q: v["nDCG@10"] for q, v in rows.items()}}
    from distillir.data.answers import AnswerMatcher

    matcher = AnswerMatcher(eval_ds.corpus)
    out: dict[str, dict[str, float]] = {"Top-1": {}, "Top-5": {}}
    for q, answers in zip(eval_ds.queries.ids, eval_ds.queries.answers):
        first = matcher.first_hit(answers, [p for p, _ in run.get(q, [])[:5]])
        out["Top-1"][q], out["Top-5"][q] = float(first == 0), float(first is not None)
    return out


def paired_claims(res: dict, work: Path, eval_ds) -> list[dict]:
    """CLAIMS whose two systems are done, as paired per-query differences (second - first) from their runs."""
    from _common import paired_difference

    from distillir.data.run import Run

    dataset, cache, out = res["settings"]["dataset"], {}, []

    def scores(key):
        if key not in cache:
            cache[key] = per_query_scores(Run.read_trec(work / "runs" / f"{TREC_NAMES.get(key, key)}.trec"),
                                          eval_ds, dataset)
        return cache[key]

    for claim, first, second in CLAIMS:
        if res["systems"].get(first) is None or res["systems"].get(second) is None:
            continue
        a, b = scores(first), scores(second)
        out.append({"claim": claim, "first": first, "second": second,
                    **{m: paired_difference(a[m], b[m]) for m in a}})
    return out


# ------------------------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = args.work
        self.state_file = self.work / "bench_state.json"
        self.name = args.name
        self.ranker = Path(args.ranker).resolve() if args.ranker else self.work / "cross-encoder" / "final"
        self.res: dict = {}

    def save(self) -> None:
        self.res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.state_file)
        self.res["claims"] = paired_claims(self.res, self.work, self.eval_ds)
        self.res["summary"] = summary(self.res)
        write_results(self.name, self.res, markdown(self.res))

    # ---- data and common pieces ----------------------------------------------------------------

    def setup(self) -> None:
        from distillir.data.datasets import load_dataset

        a = self.args
        self.work.mkdir(parents=True, exist_ok=True)
        previous = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        s = settings_of(a)
        if previous and previous.get("settings") != s:
            raise SystemExit(f"{self.work} holds a run with other settings ({previous.get('settings')}); "
                             "choose another --work-dir")
        self.res = previous or {"systems": {}}
        keep_environment(self.res)
        self.res.update(settings=s, command=command_line())
        self.res["ranker_unlabelled"] = bool(a.ranker and a.ranker_unlabelled)
        if a.note and a.note not in self.res.setdefault("notes", []):
            self.res["notes"].append(a.note)
        self.eval_ds = load_dataset(a.data_dir or a.dataset, SPLITS[a.dataset], max_queries=a.eval_questions or None, seed=SEED)
        self.res["eval_queries"] = len(self.eval_ds.queries)
        self.res["corpus_passages"] = len(self.eval_ds.corpus)
        self.res["bf16_rerank"] = bf16_ok(a)
        self.save()

    def metrics(self, run) -> dict:
        from distillir.evaluation import evaluate_run

        ds = self.eval_ds
        m = evaluate_run(run, qrels=ds.qrels, queries=ds.queries, corpus=ds.corpus)
        return {k: v for k, v in m.items() if isinstance(v, (int, float))}

    def record(self, key: str, label: str, metrics: dict, start: float, **extra) -> None:
        self.res["systems"][key] = {"system": label, **metrics, "wall_s": round(time.perf_counter() - start, 1),
                                    **extra}
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in COLUMNS[self.args.dataset][1:4] if k in metrics)
        log(f"{label}: {shown} ({self.res['systems'][key]['wall_s']:.0f} s)")
        self.save()

    def run_file(self, key: str) -> Path:
        return self.work / "runs" / f"{key}.trec"

    def dense_run(self, encoder, key: str):
        from distillir.retrievers.dense.retriever import DenseRetriever

        dense = DenseRetriever.build(self.eval_ds.corpus, encoder, batch_size=64, cache=True)
        run = dense.search(self.eval_ds.queries, top_k=TOP_K)
        run.write_trec(self.run_file(key), tag=key)
        return run

    def recipe(self, name: str, config_file: str, out: Path, sets: list[str]) -> dict:
        """The recipe run from its shipped CPU config with `sets`; resumes an interrupted run in `out`."""
        from distillir.recipes import get_recipe
        from distillir.training.config import load_config

        recipe = get_recipe(name)
        resume = (out / "config.yaml").is_file()
        a = self.args
        data = [f"data.dataset={a.data_dir or a.dataset}", f"data.max_train_queries={a.train_questions or 'null'}"]
        config = load_config(recipe.Config, REPO / "configs" / config_file,
                             [f"output_dir={out}", f"resume={str(resume).lower()}", *data, *sets])
        config.eval = None  # evaluated here, on the same queries as every other system
        results = recipe().run(config)
        self.res.setdefault("overrides", {})[name if name != "ar2" else out.name] = sets
        return results

    def retriever_sets(self) -> list[str]:
        a = self.args
        return [f"retriever={a.model}", "query_max_length=32", "passage_max_length=128",
                f"trainer.per_device_batch_size={a.lists_per_step}"]

    # ---- systems -----------------------------------------------------------------------------------

    def bm25(self) -> None:
        from distillir.retrievers.bm25 import bm25_cached

        start = time.perf_counter()
        run = bm25_cached(self.eval_ds.corpus).search(self.eval_ds.queries, top_k=TOP_K)
        run.write_trec(self.run_file("bm25"), tag="bm25")
        self.record("bm25", "BM25", self.metrics(run), start, note="bm25s, k1 0.9, b 0.4")

    def minilm(self) -> None:
        from distillir.retrievers.dense.encoder import BiEncoder

        start = time.perf_counter()
        encoder = BiEncoder.from_pretrained(self.args.model, query_max_length=32, passage_max_length=128)
        self.record("minilm", "MiniLM, untrained", self.metrics(self.dense_run(encoder, "minilm")), start,
                    note="every trained retriever's start")

    def cross_encoder(self) -> None:
        a = self.args
        start = time.perf_counter()
        if a.ranker:
            self.res["systems"]["cross_encoder"] = {"system": "cross-encoder (given)", "final": str(self.ranker),
                                                    "wall_s": 0.0}
            self.save()
            return
        res = self.recipe("cross-encoder", "cross-encoder-scifact-cpu.yaml", self.work / "cross-encoder", [
            f"model={a.model}", f"list_size={a.list_size}", f"trainer.max_steps={a.ranker_steps}",
            f"trainer.per_device_batch_size={a.lists_per_step}"])
        self.res["systems"]["cross_encoder"] = {"system": "cross-encoder training", "final": res["final_model"],
                                                "train": res["train"],
                                                "wall_s": round(time.perf_counter() - start, 1)}
        self.save()

    def rerank(self, key: str, source: str, label: str) -> None:
        import torch

        from distillir.data.run import Run
        from distillir.rankers.cross_encoder import CrossEncoder
        from distillir.recipes.common.ranking import rerank_run

        start = time.perf_counter()
        ranker = CrossEncoder.from_pretrained(self.ranker)
        first = Run.read_trec(self.run_file(source))
        bf16 = self.res["bf16_rerank"]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            run = rerank_run(ranker, first, self.eval_ds, self.args.rerank_depth, batch_size=64)
        run.write_trec(self.run_file(key), tag=key)
        pairs = sum(min(len(h), self.args.rerank_depth) for _, h in first.items())
        self.record(key, label, self.metrics(run), start, pairs=pairs,
                    note=f"top {self.args.rerank_depth} re-scored ({pairs} pairs{', bf16' if bf16 else ''})")

    def dpr(self) -> None:
        from distillir.retrievers.dense.encoder import BiEncoder

        a = self.args
        start = time.perf_counter()
        # Same steps, same passages per step as the co-trained retrievers: lists_per_step queries, each with
        # its positive and list_size-1 BM25 negatives (plus the batch's other passages as negatives).
        res = self.recipe("dpr", "dpr-scifact-cpu.yaml", self.work / "dpr", [
            f"model={a.model}", "query_max_length=32", "passage_max_length=128",
            f"negatives.mined={max(8, a.list_size)}", f"negatives.per_query={a.list_size - 1}",
            f"trainer.max_steps={a.retriever_steps}",
            f"trainer.per_device_batch_size={a.lists_per_step}", f"trainer.save_steps={a.retriever_steps // 2}"])
        encoder = BiEncoder.from_pretrained(res["final_model"])
        self.record("dpr", "DPR supervised", self.metrics(self.dense_run(encoder, "dpr")), start,
                    note=f"labels + BM25 negatives, {a.retriever_steps} steps")

    def rocketqa(self, mode: str) -> None:
        from distillir.retrievers.dense.encoder import BiEncoder

        a = self.args
        start = time.perf_counter()
        res = self.recipe("rocketqa-v2", "rocketqa-v2-scifact-cpu.yaml", self.work / f"rocketqa-{mode}", [
            *self.retriever_sets(), f"mode={mode}", f"ranker={self.ranker}",
            "ranker_warmup.steps=0", f"data.max_train_queries={a.denoise_questions}",
            f"lists.list_size={a.list_size}", f"trainer.max_steps={a.retriever_steps}",
            f"trainer.save_steps={a.retriever_steps // 2}"])
        encoder = BiEncoder.from_pretrained(res["final_retriever"])
        key = f"rocketqa_{mode}"
        self.record(key, f"RocketQAv2 {mode}", self.metrics(self.dense_run(encoder, key)), start,
                    denoise=res.get("denoise"), train_examples=res.get("train_examples"),
                    note=f"{a.retriever_steps} joint steps, {a.denoise_questions} queries, hybrid lists"
                         + (", re-ranker frozen" if mode == "static" else ""))

    def ar2(self, key: str, lambda_: float | None) -> None:
        from distillir.retrievers.dense.encoder import BiEncoder

        a = self.args
        start = time.perf_counter()
        steps = a.retriever_steps // a.iterations
        sets = [*self.retriever_sets(), f"iterations={a.iterations}", f"retriever_steps={steps}",
                f"group_size={a.list_size}", f"trainer.save_steps={steps}",
                # Every iteration used and all lists trained on, as the committed results were (they predate
                # AR2's round guard): the comparison is between objectives, not the guard.
                "on_worse=continue", "agreement_holdout=0"]
        if lambda_ is None:
            sets += ["retriever_loss=contrastive"]
            label, note = "Hard negatives (contrastive)", "AR2's refreshed negatives, no ranker"
        else:
            sets += ["retriever_loss=adversarial", f"lambda_={lambda_}",
                     f"ranker={self.ranker}", "ranker_warmup.steps=0",
                     f"ranker_steps={a.ar2_ranker_steps}"]
            label = f"AR2 lambda={lambda_:g}"
            note = "pure distillation" if lambda_ == 0 else "adversarial + distillation"
        res = self.recipe("ar2", "ar2-scifact-cpu.yaml", self.work / key, sets)
        encoder = BiEncoder.from_pretrained(res["final_retriever"])
        wall = time.perf_counter() - start
        self.record(key.replace("-", "_"), label, self.metrics(self.dense_run(encoder, key)), start,
                    per_iteration_s=round(wall / a.iterations, 1),
                    note=f"{a.iterations} x {steps} retriever steps, index refreshed; {note}")

    def run(self) -> None:
        self.setup()
        t0 = time.perf_counter()
        systems = {
            "bm25": self.bm25,
            "minilm": self.minilm,
            "cross_encoder": self.cross_encoder,
            "rerank_bm25": lambda: self.rerank("rerank_bm25", "bm25", "Cross-encoder re-ranking BM25"),
            "rocketqa_dynamic": lambda: self.rocketqa("dynamic"),
            "ar2_lambda_0.5": lambda: self.ar2("ar2-lambda-0.5", 0.5),
            "dpr": self.dpr,
            "rerank_dpr": lambda: self.rerank("rerank_dpr", "dpr", "Cross-encoder re-ranking DPR"),
            "hard_negatives": lambda: self.ar2("hard-negatives", None),
            "ar2_lambda_0": lambda: self.ar2("ar2-lambda-0", 0.0),
            "rocketqa_static": lambda: self.rocketqa("static"),
        }
        for key in ORDER:
            if self.args.only and key not in self.args.only:
                continue
            if self.res["systems"].get(key) is not None:
                continue
            log(f"--- {key}")
            systems[key]()
        complete = all(self.res["systems"].get(k) is not None for k in ORDER)
        if not (self.res.get("complete") and complete):  # a re-render of a finished run adds no time
            self.res["elapsed_s"] = round(self.res.get("elapsed_s", 0) + time.perf_counter() - t0, 1)
        self.res["complete"] = complete
        self.save()
        log(f"done; wrote bench/results/{self.name}.json and .md")


# ------------------------------------------------------------------------------------------- report


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only:
        name = args.name
        res = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        res["ranker_unlabelled"] = res.get("ranker_unlabelled") or bool(args.ranker and args.ranker_unlabelled)
        res["summary"] = summary(res)
        write_results(name, res, markdown(res))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    log(f"cotraining bench {json.dumps(settings_of(args))}; work dir {args.work}")
    Bench(args).run()


if __name__ == "__main__":
    main()
