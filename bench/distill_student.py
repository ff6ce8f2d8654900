"""The student side of distillation, measured with a teacher that knows: the answer-string teacher (1 if a
candidate holds an answer, else 0; no model) distilled into MiniLM on squad-open, one ablation at a time.

Every run but the `both_*` rows trains the query tower only (query-side fine-tuning: the passage tower stays
MiniLM, so the corpus is embedded once, cached, and every run is evaluated on all 10,570 dev questions in about a
minute; the `both_*` rows train the passage tower too and re-embed the corpus with it) through the
shared student-training path (`distillir.recipes.common.distill.train_student`) that the distilling recipes
use. Each ablation changes one setting of "today's defaults" (fid-kd's CPU config distilling the same
teacher): the candidate lists (BM25's top-n, the student's own, their union; n), the negatives (own list,
in-batch, random corpus passages at teacher probability 0), lists without any positive, the teacher's scale,
the learning rate, the steps, and the number of training questions. Baselines in the same run: BM25, MiniLM
untrained, the same path trained on gold passages (DPR-style supervision: labels), RRF(BM25, best).

    nohup .venv/bin/python bench/distill_student.py > bench/work/distill_student.log 2>&1 &
    #   --only NAME,NAME (re-run some rows, keep the rest; paired: the paired intervals)   --train-questions 1000   --render-only

Resumable: finished rows are kept in bench/results/distill_student.json and skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    RESULTS_DIR,
    WORK_DIR,
    command_line,
    keep_environment,
    paired_difference,
    peak_rss_mb,
    per_query,
    write_results,
)
from distill_student_report import ABLATIONS, BASE, PAIRS, markdown

SEED = 42
EXTRA = {"scifact": "transfer", "teacher_knows": "teacher_knows", "paired": "paired"}  # steps that are not table rows: where they record
KS = (1, 5, 20, 100)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="squad-open")
    p.add_argument("--train-questions", type=int, default=20000,
                   help="seeded sample of the train split; each row takes the first `questions` of it")
    p.add_argument("--eval-questions", type=int, default=0, help="seeded dev sample; 0: every dev question")
    p.add_argument("--only", default="", help="comma-separated row names to (re)compute")
    p.add_argument("--name", default="distill_student")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


def interval(p: float, n: int) -> float:
    """Half-width of the 95% normal interval of a proportion p over n questions."""
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


class Bench:
    def __init__(self, args):
        self.args = args
        self.path = RESULTS_DIR / f"{args.name}.json"
        self.res = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.res.setdefault("rows", {})
        self.t0 = time.perf_counter()

    def save(self) -> None:
        self.res["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.res["summary"] = [
            {"system": r["system"], "dataset": self.args.dataset, "split": "dev", "labels_used": r["labels_used"],
             "metrics": {k: r["metrics"][k] for k in ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10")
                         if k in r["metrics"]}}
            for r in self.res["rows"].values()]
        for label, m in (self.res.get("transfer") or {}).get("metrics", {}).items():
            self.res["summary"].append({"system": label, "dataset": "scifact", "split": "test", "labels_used": False,
                                        "metrics": {k: m[k] for k in ("nDCG@10", "R@100", "MRR@10") if k in m}})
        write_results(self.args.name, self.res, markdown(self.res))

    def setup(self) -> None:
        from distillir.data.datasets import load_dataset
        from distillir.recipes.common.config import EncodeConfig, StudentConfig
        from distillir.recipes.common.distill import build_student
        from distillir.recipes.common.reading import qa_queries

        a = self.args
        self.train = load_dataset(a.dataset, "train", max_queries=a.train_questions, seed=SEED)
        self.dev = load_dataset(a.dataset, "dev", max_queries=a.eval_questions or None, seed=SEED)
        if self.dev.corpus.fingerprint() == self.train.corpus.fingerprint():
            self.dev.corpus = self.train.corpus
        self.questions = qa_queries(self.train.queries)
        self.encode = EncodeConfig(dtype="bfloat16" if _bf16_native() else "float32", batch_size=64)
        self.base_student = StudentConfig(**{k: v for k, v in BASE["student"].items() if k not in ("batch", "lr")})
        self.start = build_student(self.base_student)
        keep_environment(self.res)
        self.res.update(settings={"dataset": a.dataset, "train_questions": len(self.questions),
                                  "eval_questions": len(self.dev.queries), "encode_dtype": self.encode.dtype,
                                  "base": BASE, "seed": SEED}, command=command_line())

    def evaluate(self, encoder, top_k: int = 100):
        from distillir.evaluation import evaluate_run
        from distillir.retrievers.dense.retriever import DenseRetriever

        dense = DenseRetriever.build(self.dev.corpus, encoder, batch_size=self.encode.batch_size,
                                     dtype=self.encode.dtype, cache=True)
        run = dense.search(self.dev.queries, top_k=top_k)
        return run, evaluate_run(run, queries=self.dev.queries, corpus=self.dev.corpus, ks=KS)

    def record(self, name: str, system: str, metrics: dict, labels: bool, start: float, **extra) -> None:
        n = metrics.get("queries", len(self.dev.queries))
        ci = {f"Top-{k}": round(interval(metrics[f"Top-{k}"], n), 4) for k in KS if f"Top-{k}" in metrics}
        self.res["rows"][name] = {"system": system, "labels_used": labels, "metrics": metrics, "ci95": ci,
                                  "wall_s": round(time.perf_counter() - start, 1), **extra}
        log(f"{name}: Top-1 {metrics['Top-1']:.3f} Top-5 {metrics['Top-5']:.3f} Top-20 {metrics['Top-20']:.3f}")
        self.save()

    def wanted(self, name: str) -> bool:
        only = [n for n in self.args.only.split(",") if n]
        done = name in self.res["rows"] or (name in EXTRA and EXTRA[name] in self.res)
        return (name in only) if only else not done

    # ---- rows ---------------------------------------------------------------------------------

    def baselines(self) -> None:
        from distillir.evaluation import evaluate_run
        from distillir.retrievers.bm25 import bm25_cached

        if self.wanted("bm25"):
            start = time.perf_counter()
            self.bm25_run = bm25_cached(self.dev.corpus).search(self.dev.queries, top_k=100)
            m = evaluate_run(self.bm25_run, queries=self.dev.queries, corpus=self.dev.corpus, ks=KS)
            self.record("bm25", "BM25", m, False, start)
        if self.wanted("minilm"):
            start = time.perf_counter()
            _, m = self.evaluate(self.start)
            self.record("minilm", "MiniLM untrained (the student's start)", m, False, start)

    def distil(self, name: str, spec: dict) -> None:
        from distillir.recipes.common.candidates import answer_teacher, candidate_run
        from distillir.recipes.common.distill import list_examples, train_student
        from distillir.teachers.scores import TeacherScores

        if not self.wanted(name):
            return
        start = time.perf_counter()
        cfg = {**BASE, **spec, "student": {**BASE["student"], **spec.get("student", {})}}
        questions = self.questions
        if cfg.get("questions") and cfg["questions"] < len(questions):
            questions = questions.subset(questions.ids[: cfg["questions"]])
        log(f"{name}: candidates {cfg['sources']} top-{cfg['depth']} for {len(questions)} questions")
        run = candidate_run(cfg["sources"], cfg["depth"], self.train.corpus, questions, student=self.start,
                            encode=self.encode)
        if cfg.get("teacher") == "gold":  # the labelled comparison: the gold passage first, then the candidates
            scores = TeacherScores("gold")
            gold_of = dict(zip(self.train.queries.ids, self.train.queries.gold_ids))  # qa_queries drops them
            for qid in questions.ids:
                gold = gold_of.get(qid)
                if gold and run.get(qid):
                    pids = [gold[0], *[p for p, _ in run[qid] if p != gold[0]]]
                    scores.add(qid, pids, [1.0] + [0.0] * (len(pids) - 1))
        else:
            scores = answer_teacher(run, questions, self.train.corpus)
        lists = len(scores)
        if cfg["skip_without_positive"]:
            scores = scores.subset([q for q in scores if max(scores[q][1]) > 0])
        examples = list_examples(scores, questions, self.train.corpus, normalize=cfg["normalize"],
                                 scale=cfg["teacher_scale"])
        steps = cfg.get("steps") or max(1, round(cfg["epochs"] * len(examples) / cfg["student"]["batch"]))
        student_cfg = dataclasses.replace(self.base_student, **{k: v for k, v in cfg["student"].items()
                                                                if k not in ("batch", "lr")})
        student_cfg.trainer = dataclasses.replace(student_cfg.trainer, max_steps=steps,
                                                  per_device_batch_size=cfg["student"]["batch"],
                                                  learning_rate=cfg["student"]["lr"], save_steps=0,
                                                  **cfg.get("trainer", {}))
        out = WORK_DIR / "distill_student" / name
        shutil.rmtree(out, ignore_errors=True)  # a fresh phase: no earlier log or agreement file
        student, info = train_student(student_cfg, examples, self.train.corpus, out,
                                      encode=self.encode, seed=SEED, resume=False)
        _, m = self.evaluate(student)
        with_positive = sum(1 for q in scores if max(scores[q][1]) > 0)
        self.record(name, spec["system"], m, cfg.get("teacher") == "gold", start, steps=steps, lists=lists,
                    trained_lists=len(examples), lists_with_positive=with_positive,
                    loss_last=info["train"].get("loss"), agreement_after=info["agreement_after"], settings=cfg)

    def hybrid(self) -> None:
        """RRF(BM25, the best distilled row by Top-5)."""
        from distillir.evaluation import evaluate_run
        from distillir.retrievers.hybrid import reciprocal_rank_fusion

        distilled = {k: v for k, v in self.res["rows"].items() if k in ABLATIONS and not v["labels_used"]}
        if not distilled:
            return
        best = max(distilled, key=lambda k: distilled[k]["metrics"]["Top-5"])
        if not self.wanted("rrf_best") and self.res["rows"].get("rrf_best", {}).get("fused") == best:
            return  # asked for other rows, and the best one has not changed
        start = time.perf_counter()
        student_dir = WORK_DIR / "distill_student" / best / "final"
        if not student_dir.is_dir():  # trained in an earlier session whose work dir is gone: train it again
            only, self.args.only = self.args.only, best
            self.distil(best, ABLATIONS[best])
            self.args.only = only
        from distillir.retrievers.bm25 import bm25_cached
        from distillir.retrievers.dense.encoder import BiEncoder

        run, _ = self.evaluate(BiEncoder.from_pretrained(student_dir))
        bm25 = bm25_cached(self.dev.corpus).search(self.dev.queries, top_k=100)
        fused = reciprocal_rank_fusion([bm25, run], top_k=100)
        m = evaluate_run(fused, queries=self.dev.queries, corpus=self.dev.corpus, ks=KS)
        self.record("rrf_best", f"RRF(BM25, {distilled[best]['system']})", m, False, start, fused=best)

    def teacher_knows(self) -> None:
        """Does the teacher know more than the student on the training lists? For the first 1,000 questions'
        BM25 and student top-10 lists: the share whose first candidate holds an answer, by the teacher's order
        (`teacher_hit@1`) and by the list's own (BM25's or the student's), and the MRR of the first answer."""
        from distillir.readers.fid_data import examples_from_run
        from distillir.recipes.common.candidates import answer_teacher, candidate_run
        from distillir.teachers.quality import answer_hits

        if not self.wanted("teacher_knows"):
            return
        questions = self.questions.subset(self.questions.ids[: BASE["questions"]])
        found = {}
        for source in ("bm25", "student"):
            run = candidate_run([source], BASE["depth"], self.train.corpus, questions, student=self.start,
                                encode=self.encode)
            found[source] = answer_hits(answer_teacher(run, questions, self.train.corpus),
                                        examples_from_run(run, questions, self.train.corpus))
        self.res["teacher_knows"] = {"questions": len(questions), "depth": BASE["depth"], "lists": found}
        log("teacher knows: " + "; ".join(f"{k}: teacher hit@1 {v['teacher_hit@1']:.3f} vs its own "
                                          f"{v['retriever_hit@1']:.3f}" for k, v in found.items()))
        self.save()

    def paired(self) -> None:
        """Paired per-question differences (Top-1, Top-5) of `PAIRS` whose systems can be rebuilt here: BM25, MiniLM,
        rows whose student is in bench/work, and RRF(BM25, the fused row)."""
        from distillir.retrievers.bm25 import bm25_cached
        from distillir.retrievers.dense.encoder import BiEncoder
        from distillir.retrievers.hybrid import reciprocal_rank_fusion

        if not self.wanted("paired"):
            return
        runs: dict = {}

        def run_of(name: str):
            if name not in runs:
                if name == "bm25":
                    runs[name] = bm25_cached(self.dev.corpus).search(self.dev.queries, top_k=100)
                elif name == "minilm":
                    runs[name] = self.evaluate(self.start)[0]
                elif name == "rrf_best":
                    fused = run_of(self.res["rows"]["rrf_best"]["fused"])
                    runs[name] = None if fused is None else reciprocal_rank_fusion([run_of("bm25"), fused], top_k=100)
                else:
                    final = WORK_DIR / "distill_student" / name / "final"
                    runs[name] = self.evaluate(BiEncoder.from_pretrained(final))[0] if final.is_dir() else None
            return runs[name]

        found = dict(self.res.get("paired") or {})
        for first, second in PAIRS:
            if first not in self.res["rows"] or second not in self.res["rows"]:
                continue
            a, b = run_of(first), run_of(second)
            if a is None or b is None:
                continue  # a row trained in an earlier session whose student is gone: its record stays
            found[f"{second} - {first}"] = {m: paired_difference(per_query(a, self.dev, m), per_query(b, self.dev, m))
                                            for m in ("Top-1", "Top-5")}
            log(f"paired {second} - {first}: " + ", ".join(
                f"{m} {d['mean_diff']:+.3f} +-{d['half_width']:.3f}" for m, d in found[f"{second} - {first}"].items()))
        self.res["paired"] = found
        self.save()

    def transfer(self) -> None:
        """Another domain: MiniLM and the best distilled row (by squad-open Top-5) on SciFact test, nDCG@10."""
        from distillir.data.datasets import load_dataset
        from distillir.evaluation import evaluate_run
        from distillir.retrievers.dense.encoder import BiEncoder
        from distillir.retrievers.dense.retriever import DenseRetriever

        distilled = {k: v for k, v in self.res["rows"].items() if k in ABLATIONS and not v["labels_used"]}
        if not distilled:
            return
        best = max(distilled, key=lambda k: distilled[k]["metrics"]["Top-5"])
        if not self.wanted("scifact") and (self.res.get("transfer") or {}).get("best_row") == best:
            return
        student_dir = WORK_DIR / "distill_student" / best / "final"
        if not student_dir.is_dir():
            return
        start = time.perf_counter()
        test = load_dataset("scifact", "test")
        found = {}
        for label, encoder in (("minilm", self.start), (best, BiEncoder.from_pretrained(student_dir))):
            dense = DenseRetriever.build(test.corpus, encoder, batch_size=self.encode.batch_size,
                                         dtype=self.encode.dtype, cache=True)
            run = dense.search(test.queries, top_k=100)
            found[label] = evaluate_run(run, qrels=test.qrels, queries=test.queries, corpus=test.corpus)
        self.res["transfer"] = {"dataset": "scifact", "split": "test", "best_row": best, "metrics": found,
                                "wall_s": round(time.perf_counter() - start, 1)}
        log(f"scifact nDCG@10: MiniLM {found['minilm']['nDCG@10']:.3f}, {best} {found[best]['nDCG@10']:.3f}")
        self.save()

    def run(self) -> None:
        if self.args.render_only:
            write_results(self.args.name, self.res, markdown(self.res))
            return
        self.setup()
        known = {*ABLATIONS, *EXTRA, "bm25", "minilm", "rrf_best"}
        unknown = [n for n in self.args.only.split(",") if n and n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown rows {unknown}; known: {', '.join(sorted(known))}")
        self.baselines()
        self.teacher_knows()
        for name, spec in ABLATIONS.items():
            self.distil(name, spec)
        self.hybrid()  # each reruns when asked for, or when the best row changed
        self.paired()
        self.transfer()
        self.res["complete"] = all(name in self.res["rows"] for name in ABLATIONS)
        self.save()
        log(f"done in {time.perf_counter() - self.t0:.0f} s")


def _bf16_native() -> bool:
    from distillir.retrievers.dense.inference import default_encoding_dtype

    return default_encoding_dtype() == "bfloat16"


def main(argv=None) -> None:
    Bench(parse_args(argv)).run()


if __name__ == "__main__":
    main()
