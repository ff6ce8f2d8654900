"""FiD-KD on squad-open: the distilled retriever after each round beside its baselines, the loss and teacher
ablations, reader EM/F1 per round, and what each stage costs.

One script, run by the `fid-kd` recipe's own functions:

* main run: `FiDKDRecipe` from BM25, KL loss, the official "fid" aggregation, `--rounds` rounds over a seeded
  sample of `--train-questions` SQuAD train questions (question + answers only: no gold passage is read),
  evaluated on a seeded sample of `--eval-questions` dev questions (all dev questions with `--eval-questions 0`):
  retriever answer recall Top-1/5/20/100 and gold MRR@10 after each round, reader EM/F1 after each round;
* baselines on the same dev questions: BM25 (the round-1 retriever), the untrained MiniLM encoder, the RRF
  hybrid of BM25 and the final distilled retriever, and the supervised DPR-style baseline (the `dpr` recipe on
  the same training questions *with* their gold passages and BM25 hard negatives, as many steps as one
  FiD-KD retriever round at the same batch size);
* loss ablation: KL vs MSE vs max-margin, one round from the same student, on the same round-1 teacher scores,
  equal steps (KL is the main run's round 1);
* aggregation ablation: teacher scores from the same trained round-1 reader with fid / post_softmax /
  all_tokens / adist / pdist, each distilled with KL for the same steps (fid is the main run's round 1);
* cost: wall time of every stage of every round, and the teacher-extraction overhead: a reader forward pass
  that also returns teacher scores vs a plain forward pass, timed on the same batches (goal <= 1.1).

Writes bench/results/<name>.json and <name>.md after every stage (a timeout still leaves numbers), and
resumes from its work directory: run the same command again to continue. Progress lines carry timestamps.

    .venv/bin/python bench/fid_kd.py --preset smoke                                   # ~minutes on 2 CPU cores
    python bench/fid_kd.py --preset gpu --data-dir /data/squad-open --model /models/all-MiniLM-L6-v2
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, command_line, keep_environment, peak_rss_mb, write_results
from fid_kd_ablations import Ablations
from fid_kd_report import markdown, slug, summary
from fid_kd_settings import (
    AGGREGATIONS,
    CONTROL,
    CONTROL_FILE,
    RRF_K,
    SEED,
    TOP_K,
    log,
    parse_args,
    recipe_config,
    smoke_dataset,
)

# ------------------------------------------------------------------------------------------- data


# ------------------------------------------------------------------------------------------- configs


# ------------------------------------------------------------------------------------------- report


def teacher_quality(scores_file: Path, lists_file: Path) -> dict:
    """`distillir.teachers.quality.answer_hits` of a score file over the retriever's lists it scored."""
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers.quality import answer_hits
    from distillir.teachers.scores import read_teacher_scores

    return answer_hits(read_teacher_scores(scores_file), load_fid_examples(lists_file))


# ------------------------------------------------------------------------------------------- pieces


class Bench(Ablations):
    def __init__(self, args):
        self.args = args
        self.s = args.settings
        self.work = args.work
        self.state_file = self.work / "bench_state.json"
        self.res: dict = {}

    def save(self) -> None:
        self.res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.res["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.res, indent=2, default=str), encoding="utf-8")
        tmp.replace(self.state_file)
        self.res["summary"] = summary(self.res)
        write_results(self.s["name"], self.res, markdown(self.res))

    def run(self) -> None:
        self.t0 = time.perf_counter()
        args, s = self.args, self.s
        self.work.mkdir(parents=True, exist_ok=True)
        previous = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        if previous and previous.get("settings") != s:
            raise SystemExit(f"{self.work} holds a run with other settings ({previous.get('settings')}); "
                             "choose another --work-dir")
        self.res = previous or {}
        keep_environment(self.res)
        self.res.update(preset=args.preset, settings=s, command=command_line(), model=args.model,
                        device=self.device_name(), complete=False)
        self.res.setdefault("baselines", {})
        self.res.setdefault("ablations", {})
        self.res.setdefault("main", {"rounds": {}})

        from distillir.data.datasets import load_dataset, resolve_dataset_dir

        source = resolve_dataset_dir(args.data_dir, download_missing=False)
        data_dir = smoke_dataset(source, self.work / "data", s) if s["corpus_size"] else source
        self.data_dir = data_dir
        self.eval_ds = load_dataset(data_dir, "dev", max_queries=s["eval_questions"], seed=SEED)
        self.res["corpus_passages"] = len(self.eval_ds.corpus)
        self.res["eval_questions"] = len(self.eval_ds.queries)
        log(f"data {data_dir}: {len(self.eval_ds.corpus)} passages, {len(self.eval_ds.queries)} dev questions; "
            f"device {self.res['device']}")
        self.save()

        # Most important first: a run cut short by a time limit keeps the main numbers and baselines.
        self.main()
        self.teacher_report()
        self.minilm()
        self.hybrid()
        if not args.skip_dpr:
            self.dpr()
        if not args.skip_overhead:
            self.overhead()
        if not args.skip_ablations:
            self.loss_ablation()
            self.aggregation_ablation()
            self.answer_control()
        self.teacher_report()
        self.collapse_report()
        self.res["complete"] = True
        self.save()
        log(f"done in {time.perf_counter() - self.t0:.0f} s; wrote bench/results/{s['name']}.json and .md")

    def device_name(self) -> str:
        import torch

        if self.args.device != "cpu" and torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        return f"CPU ({torch.get_num_threads()} thread(s))"

    # ---- the main run ------------------------------------------------------------------------

    def main(self) -> None:
        from distillir.recipes.fid_kd import FiDKDRecipe

        out = self.work / "main"
        config = recipe_config(self.args, out, self.data_dir)

        def on_stage(k: int, stage: str, info: dict) -> None:
            rounds = self.res["main"].setdefault("rounds", {})
            rounds.setdefault(str(k), {})[stage] = info
            metrics = info.get("metrics") or {}
            shown = ", ".join(f"{key} {metrics[key]:.3f}" for key in ("Top-1", "Top-5", "Top-20", "EM", "F1")
                              if isinstance(metrics.get(key), float))
            log(f"main round {k} {stage}: {info.get('wall_s', 0):.1f} s{' (done earlier)' if info['skipped'] else ''}"
                f"{'; ' + shown if shown else ''}")
            self.save()

        log(f"main FiD-KD run -> {out}")
        results = FiDKDRecipe(on_stage=on_stage).run(config)
        self.res["train_questions"] = results["train_questions"]
        self.res["main"].update({k: v for k, v in results.items() if k != "rounds"})
        self.save()

    def teacher_report(self) -> None:
        """teacher_quality of every score file written so far (main rounds, aggregation ablation)."""
        main = self.work / "main"
        found = {}
        for rd in sorted(main.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
            scores = rd / "teacher" / "scores.jsonl"
            if scores.is_file():
                found[f"fid, round {rd.name.split('-')[1]}"] = (scores, rd / "retrieve" / "train.jsonl")
        for agg in AGGREGATIONS:
            scores = self.work / "ablations" / f"scores-{agg}.jsonl"
            if scores.is_file():
                found[f"{agg}, round 1 reader"] = (scores, main / "round-1" / "retrieve" / "train.jsonl")
        control = self.work / "ablations" / f"scores-{CONTROL_FILE}.jsonl"
        if control.is_file():
            found[CONTROL] = (control, main / "round-1" / "retrieve" / "train.jsonl")
        for name, (scores, lists) in found.items():
            self.res.setdefault("teacher_quality", {})[name] = teacher_quality(scores, lists)
        if found:
            self.save()

    def collapse_report(self) -> None:
        """top1_concentration of every dev run on disk: does each retriever still depend on the query?"""
        from distillir.data.run import Run
        from distillir.evaluation.diagnostics import top1_concentration

        main = self.work / "main"
        found = {"BM25": main / "round-1" / "retrieve" / "eval.trec",
                 "MiniLM, untrained": self.work / "runs" / f"{slug('MiniLM untrained')}.trec"}
        for rd in sorted(main.glob("round-*"), key=lambda p: int(p.name.split("-")[1])):
            found[f"FiD-KD round {rd.name.split('-')[1]}"] = rd / "eval" / "retriever.trec"
        found["RRF(BM25, FiD-KD final)"] = self.work / "runs" / "hybrid.trec"
        found["DPR supervised"] = self.work / "runs" / f"{slug('DPR supervised')}.trec"
        for ablation in sorted((self.work / "ablations").glob("*/round-1/eval/retriever.trec")):
            found[f"ablation {ablation.parts[-4]}"] = ablation
        section = self.res.setdefault("collapse", {})
        for label, path in found.items():
            if path.is_file():
                section[label] = top1_concentration(Run.read_trec(path))
        self.save()

    # ---- baselines ---------------------------------------------------------------------------

    def _dense_eval(self, encoder, label: str) -> dict:
        from distillir.recipes.common.reading import evaluate_retrieval
        from distillir.retrievers.dense.retriever import DenseRetriever

        start = time.perf_counter()
        dense = DenseRetriever.build(self.eval_ds.corpus, encoder, batch_size=self.s["encode_batch"],
                                     dtype=self.s["dtype"], cache=encoder.pretrained_path() is not None)
        run = dense.search(self.eval_ds.queries, top_k=TOP_K)
        run.write_trec(self.work / "runs" / f"{slug(label)}.trec", tag=slug(label))
        metrics = evaluate_retrieval(run, self.eval_ds)
        log(f"{label}: Top-1 {metrics['Top-1']:.3f}, Top-5 {metrics['Top-5']:.3f}, Top-20 {metrics['Top-20']:.3f} "
            f"({time.perf_counter() - start:.1f} s)")
        return {**metrics, "wall_s": round(time.perf_counter() - start, 1)}

    def minilm(self) -> None:
        from distillir.retrievers.dense.encoder import BiEncoder

        if self.res["baselines"].get("minilm") is not None:
            return
        encoder = BiEncoder.from_pretrained(self.args.model, query_max_length=40,
                                            passage_max_length=self.s["retriever_passage_length"])
        self.res["baselines"]["minilm"] = self._dense_eval(encoder, "MiniLM untrained")
        self.save()

    def hybrid(self) -> None:
        from distillir.data.run import Run
        from distillir.recipes.common.reading import evaluate_retrieval
        from distillir.retrievers.hybrid import reciprocal_rank_fusion

        last = self.work / "main" / f"round-{self.s['rounds']}"
        bm25 = Run.read_trec(self.work / "main" / "round-1" / "retrieve" / "eval.trec")
        distilled = Run.read_trec(last / "eval" / "retriever.trec")
        fused = reciprocal_rank_fusion([bm25, distilled], k=RRF_K, top_k=TOP_K)
        fused.write_trec(self.work / "runs" / "hybrid.trec", tag="hybrid")
        self.res["baselines"]["hybrid"] = evaluate_retrieval(fused, self.eval_ds)
        log(f"RRF(BM25, FiD-KD): Top-5 {self.res['baselines']['hybrid']['Top-5']:.3f}")
        self.save()

    def dpr(self) -> None:
        from distillir.recipes import get_recipe
        from distillir.retrievers.dense.encoder import BiEncoder
        from distillir.training.config import load_config

        if self.res["baselines"].get("dpr") is not None:
            return
        s = self.s
        out = self.work / "dpr"
        recipe = get_recipe("dpr")
        resume = (out / "config.yaml").is_file()
        if not (out / "final").is_dir():
            cpu = "true" if self.args.device == "cpu" else "false"
            config = load_config(recipe.Config, None, [
                f"output_dir={out}", f"seed={SEED}", f"resume={str(resume).lower()}", f"model={self.args.model}",
                "query_max_length=40", f"passage_max_length={s['retriever_passage_length']}", "temperature=0.05",
                f"data.dataset={self.data_dir}", "data.split=train",
                f"data.max_train_queries={'null' if s['train_questions'] is None else s['train_questions']}",
                "negatives.mined=8", "negatives.per_query=1",
                "trainer={" + f"learning_rate: 2.0e-5, warmup_ratio: 0.1, max_steps: {s['retriever_steps']}, "
                f"per_device_batch_size: {s['retriever_batch']}, save_steps: {max(1, s['retriever_steps'] // 2)}, "
                f"save_total_limit: 1, log_steps: 10, cpu: {cpu}" + "}",
            ])
            log(f"DPR supervised baseline: {s['retriever_steps']} steps x {s['retriever_batch']} -> {out}")
            start = time.perf_counter()
            info = recipe().run(config)
            self.res["baselines"]["dpr_train"] = {"wall_s": round(time.perf_counter() - start, 1),
                                                  "train_questions": info["train_examples"], "train": info["train"]}
        encoder = BiEncoder.from_pretrained(out / "final")
        self.res["baselines"]["dpr"] = self._dense_eval(encoder, "DPR supervised")
        self.save()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only:
        res = json.loads((RESULTS_DIR / f"{args.settings['name']}.json").read_text())
        res["summary"] = summary(res)
        write_results(args.settings["name"], res, markdown(res))
        return
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.settings.get("threads"):
        import torch

        torch.set_num_threads(args.settings["threads"])  # on a shared, busy CPU one thread runs faster
    log(f"fid_kd bench, preset {args.preset}: {json.dumps(args.settings)}; work dir {args.work}")
    Bench(args).run()


if __name__ == "__main__":
    main()
