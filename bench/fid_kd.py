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

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, keep_environment, peak_rss_mb, write_results

SEED = 42
TOP_K = 100
RRF_K = 60
KS = (1, 5, 20, 100)
LOSSES = ("kl", "mse", "margin")
AGGREGATIONS = ("fid", "post_softmax", "all_tokens", "adist", "pdist")
CONTROL, CONTROL_FILE = "answer match (control)", "answer_match"  # the model-free teacher, same lists
IN_BATCH = "kl + in-batch negatives"
# Each question's teacher scores are standardised before KL: a MiniLM reader's attention logits are nearly flat
# across passages at temperature 1 (see FiDKDTeacher.normalize); the ablations use the same target transform.
TEACHER_NORMALIZE = "zscore"

# Sizes and schedules. `None` in train/eval questions: every question of the split; corpus_size None: the whole
# corpus (smoke: a seeded subset holding the sampled questions' source paragraphs plus random others).
# retriever_passage_length: the student's passage truncation (MiniLM's own 256 on CPU, so the untrained model's
# corpus embeddings come from the cache); train_passages False: query-side fine-tuning (the passage tower frozen,
# the corpus embedded once), which is what makes a full-corpus benchmark fit 2 CPU cores.
PRESETS: dict[str, dict] = {
    "cpu": {"train_questions": 1000, "eval_questions": None, "corpus_size": None, "rounds": 2, "n_passages": 10,
            "reader_layers": 3, "passage_length": 128, "answer_length": 16, "reader_batch": 4, "reader_steps": 250,
            "reader_lr": 1e-4, "retriever_batch": 16, "retriever_steps": 125, "retriever_lr": 3e-5,
            "retriever_passage_length": 256, "train_passages": False, "reader_eval_questions": 300,
            "inference_batch": 16, "encode_batch": 64, "dtype": "bfloat16", "overhead_batches": 4, "threads": None,
            "name": "fid_kd"},
    "smoke": {"retriever_passage_length": 64, "train_passages": True, "reader_eval_questions": None,
              "train_questions": 24, "eval_questions": 24, "corpus_size": 200, "rounds": 2, "n_passages": 4,
              "reader_layers": 2, "passage_length": 64, "answer_length": 12, "reader_batch": 4, "reader_steps": 6,
              "reader_lr": 3e-4, "retriever_batch": 4, "retriever_steps": 4, "retriever_lr": 2e-5,
              "inference_batch": 12, "encode_batch": 64, "dtype": "bfloat16", "overhead_batches": 2, "threads": 1,
              "name": "fid_kd_smoke"},
    "gpu": {"retriever_passage_length": 192, "train_passages": True, "reader_eval_questions": 1000,
            "train_questions": 4000, "eval_questions": 2000, "corpus_size": None, "rounds": 2, "n_passages": 20,
            "reader_layers": None, "passage_length": 192, "answer_length": 16, "reader_batch": 8, "reader_steps": 500,
            "reader_lr": 1e-4, "retriever_batch": 16, "retriever_steps": 250, "retriever_lr": 2e-5,
            "inference_batch": 64, "encode_batch": 512, "dtype": "bfloat16", "overhead_batches": 8, "threads": None,
            "name": "fid_kd_gpu"},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--data-dir", default="squad-open", help="squad-open directory (or the dataset name)")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                   help="MiniLM: hub id or a plain local model directory (reader warm start and student)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--work-dir", default=None, help="default: bench/work/fid_kd-<preset>")
    p.add_argument("--name", default=None, help="results file stem (default: the preset's)")
    for key, kind in (("train_questions", int), ("eval_questions", int), ("corpus_size", int), ("rounds", int),
                      ("n_passages", int), ("reader_layers", int), ("passage_length", int), ("reader_batch", int),
                      ("reader_steps", int), ("reader_lr", float), ("retriever_batch", int),
                      ("retriever_steps", int), ("retriever_lr", float), ("inference_batch", int),
                      ("encode_batch", int), ("overhead_batches", int), ("threads", int)):
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"override the preset's {key} (0 for questions/corpus: all)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="corpus encoding precision")
    p.add_argument("--skip-dpr", action="store_true")
    p.add_argument("--skip-ablations", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args(argv)
    settings = dict(PRESETS[args.preset])
    for key in list(settings):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = None if value == 0 and key in ("train_questions", "eval_questions", "corpus_size") \
                else value
    if args.name:
        settings["name"] = args.name
    args.settings = settings
    args.work = Path(args.work_dir) if args.work_dir else WORK_DIR / f"fid_kd-{args.preset}"
    return args


# ------------------------------------------------------------------------------------------- data


def smoke_dataset(source: Path, target: Path, s: dict) -> Path:
    """A small squad-open-layout copy: the sampled train/dev questions and a corpus of their source
    paragraphs plus seeded random others (the gold ids only pick which paragraphs the small corpus keeps;
    FiD-KD never reads them, the DPR baseline trains on them, evaluation scores with them)."""
    from distillir.data.datasets import load_dataset

    if (target / "corpus.tsv").is_file():
        return target
    train = load_dataset(source, "train", max_queries=s["train_questions"], seed=SEED)
    dev = load_dataset(source, "dev", max_queries=s["eval_questions"], seed=SEED)
    corpus = train.corpus
    keep = dict.fromkeys(pid for q in (train.queries, dev.queries) for gold in q.gold_ids for pid in gold or [])
    rest = [pid for pid in corpus.ids if pid not in keep]
    fill = max(0, (s["corpus_size"] or len(corpus)) - len(keep))
    keep.update(dict.fromkeys(random.Random(SEED).sample(rest, min(fill, len(rest)))))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "corpus.tsv", "w", encoding="utf-8") as f:
        f.write("id\ttext\ttitle\n")
        for pid in corpus.ids:
            if pid in keep:
                i = corpus.index_of[pid]
                f.write(f"{pid}\t{corpus.texts[i]}\t{corpus.titles[i]}\n")
    for split, ds in (("train", train), ("dev", dev)):
        rows = zip(ds.queries.ids, ds.queries.texts, ds.queries.answers, ds.queries.gold_ids)
        with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": qid, "question": text, "answers": answers, "gold_pid": (gold or [None])[0]})
                         + "\n" for qid, text, answers, gold in rows)
    tmp.rename(target)
    return target


# ------------------------------------------------------------------------------------------- configs


def recipe_config(args, out: Path, data_dir: Path, *extra: str):
    from distillir.recipes.fid_kd import FiDKDConfig
    from distillir.training.config import load_config

    s = args.settings
    cpu = "true" if args.device == "cpu" else "false"
    gpu = args.device != "cpu" and _cuda()
    inference = "bfloat16" if gpu else "float32"
    layers = "null" if s["reader_layers"] is None else s["reader_layers"]
    save = max(1, min(100, s["retriever_steps"] // 2))
    return load_config(FiDKDConfig, None, [
        f"output_dir={out}", f"seed={SEED}", "resume=true", f"dataset={data_dir}", "train_split=train",
        f"max_train_queries={'null' if s['train_questions'] is None else s['train_questions']}", "start=bm25",
        f"rounds={s['rounds']}", f"n_passages={s['n_passages']}",
        "reader.init=encoder-decoder", f"reader.model={args.model}", f"reader.num_layers={layers}",
        f"reader.passage_max_length={s['passage_length']}", f"reader.answer_max_length={s['answer_length']}",
        f"reader.batch_size={s['inference_batch']}", f"reader.inference_dtype={inference}",
        "reader.trainer={" + f"learning_rate: {s['reader_lr']}, weight_decay: 0.01, warmup_ratio: 0.05, "
        f"max_steps: {s['reader_steps']}, per_device_batch_size: {s['reader_batch']}, "
        f"save_steps: {max(1, min(100, s['reader_steps'] // 2))}, save_total_limit: 1, log_steps: 10, cpu: {cpu}"
        + "}",
        "teacher.aggregation=fid", f"teacher.normalize={TEACHER_NORMALIZE}",
        f"retriever.model={args.model}", "retriever.loss=kl", "retriever.query_max_length=40",
        f"retriever.passage_max_length={s['retriever_passage_length']}", "retriever.agreement_sample=256",
        f"retriever.train_passages={str(s['train_passages']).lower()}", "eval.reader=true",
        f"eval.reader_max_queries={'null' if s['reader_eval_questions'] is None else s['reader_eval_questions']}",
        "retriever.trainer={" + f"learning_rate: {s['retriever_lr']}, warmup_ratio: 0.05, "
        f"max_steps: {s['retriever_steps']}, per_device_batch_size: {s['retriever_batch']}, save_steps: {save}, "
        f"save_total_limit: 1, log_steps: 10, cpu: {cpu}" + "}",
        f"encode.dtype={s['dtype']}", f"encode.batch_size={s['encode_batch']}",
        f"eval.dataset={data_dir}", "eval.split=dev",
        f"eval.max_queries={'null' if s['eval_questions'] is None else s['eval_questions']}", f"eval.top_k={TOP_K}",
        *extra,
    ])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------- report


def metric_row(label: str, metrics: dict | None, note: str = "") -> dict:
    row = {"system": label, "note": note}
    for k in KS:
        row[f"Top-{k}"] = (metrics or {}).get(f"Top-{k}")
    row["MRR@10"] = (metrics or {}).get("MRR@10")
    row["R@20"] = (metrics or {}).get("R@20")
    return row


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" if c in ("system", "note", "stage") else "---:"
                                                              for c in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def retrieval_rows(res: dict) -> list[dict]:
    rows = []
    base = res.get("baselines", {})
    main = res.get("main", {})
    rounds = main.get("rounds", {})
    start = (rounds.get("1", {}).get("retrieve") or {}).get("metrics")
    rows.append(metric_row("BM25", start, "round 1's retriever"))
    rows.append(metric_row("MiniLM, untrained", base.get("minilm"), "the student's starting point"))
    for k in sorted(rounds, key=int):
        m = (rounds[k].get("index") or {}).get("metrics")
        if m is not None:
            rows.append(metric_row(f"FiD-KD round {k}", m, "no relevance labels"))
    if base.get("hybrid") is not None:
        rows.append(metric_row("RRF(BM25, FiD-KD final)", base["hybrid"], f"k={RRF_K}"))
    if base.get("dpr") is not None:
        steps = ((base.get("dpr_train") or {}).get("train") or {}).get("global_step")
        rows.append(metric_row("DPR supervised", base["dpr"],
                               f"gold passages + BM25 negatives{f', {steps} steps' if steps else ''}"))
    return rows


def markdown(res: dict) -> str:
    s = res["settings"]
    cols = ["system", "Top-1", "Top-5", "Top-20", "Top-100", "MRR@10", "R@20", "note"]
    out = [f"# FiD-KD on squad-open ({res['preset']} preset)", ""]
    status = "complete" if res.get("complete") else "PARTIAL (interrupted or still running; rerun to continue)"
    env = res["environment"]
    out += [(f"Run {env.get('date_utc')} on {res.get('device')}; torch {env.get('torch')}, transformers "
             f"{env.get('transformers')}. Status: {status}."), ""]
    out += [(f"Training: {res.get('train_questions', s['train_questions'])} SQuAD v1.1 train questions (seeded "
            f"sample, seed {SEED}; question + answers only, no gold passage). Evaluation: "
            f"{res.get('eval_questions', s['eval_questions'])} dev questions (seeded sample, seed {SEED}) over a "
            f"{res.get('corpus_passages', '?')}-paragraph corpus. n = {s['n_passages']} passages per question, "
            f"{s['rounds']} rounds; reader: all-MiniLM-L6-v2 warm-started as encoder and decoder "
            f"({'all' if s['reader_layers'] is None else s['reader_layers']} layers each), {s['reader_steps']} steps "
            f"x {s['reader_batch']} questions per round; retriever: all-MiniLM-L6-v2, KL over each question's "
            f"n passages (teacher scores standardised per question: {TEACHER_NORMALIZE}), "
            f"{s['retriever_steps']} steps x {s['retriever_batch']} questions per round, "
            + ("both towers trained (the paper), corpus re-embedded every round"
               if s["train_passages"] else "query tower only (passage tower frozen: query-side fine-tuning, "
               "the corpus embedded once)")
            + f"; passages {s['passage_length']} tokens for the reader, {s['retriever_passage_length']} for the "
            f"retriever; corpus embedded in {s['dtype']}. Reader EM/F1 on the first "
            f"{s['reader_eval_questions'] or 'all'} sampled dev questions."), ""]
    out += ["## Retrieval (dev): answer recall Top-k, gold-paragraph MRR@10 and R@20", "",
            table(retrieval_rows(res), cols), ""]
    rounds = res.get("main", {}).get("rounds", {})
    if rounds:
        rows = []
        for k in sorted(rounds, key=int):
            r = rounds[k]
            ev = (r.get("reader_eval") or {}).get("metrics") or {}
            ag = r.get("retriever") or {}
            before, after = ag.get("agreement_before") or {}, ag.get("agreement_after") or {}
            rows.append({"round": k, "EM": ev.get("EM"), "F1": ev.get("F1"),
                         "teacher KL before": before.get("kl"), "after": after.get("kl"),
                         "Spearman before": before.get("spearman"), "after ": after.get("spearman")})
        out += ["## Reader (dev EM / F1 on each round's top-n) and student-teacher agreement (train lists)", "",
                table(rows, ["round", "EM", "F1", "teacher KL before", "after", "Spearman before", "after "]), "",
                (f"Agreement on {agreement_lists(rounds)} training lists: KL(softmax T || softmax S) (lower is "
                 "closer; T = the standardised teacher scores the student is trained on) and Spearman's rank "
                 "correlation, before and after that round's retriever training."), ""]
    tq = res.get("teacher_quality") or {}
    if tq:
        rows = [{"teacher": name, "lists with an answer": v["answer_lists"], "teacher top-1 has answer":
                 v["teacher_hit@1"], "retriever top-1 has answer": v["retriever_hit@1"],
                 "teacher MRR": v["teacher_mrr"], "retriever MRR": v["retriever_mrr"]} for name, v in tq.items()]
        cols_tq = ["teacher", "lists with an answer", "teacher top-1 has answer", "retriever top-1 has answer",
                   "teacher MRR", "retriever MRR"]
        out += ["## What the teacher knows (training lists)", "", table(rows, cols_tq), "",
                ("Over the training lists holding at least one passage that contains an answer string: how often "
                 "the teacher's highest-scored passage contains one, against the retriever that built the list "
                 "(its own first passage), and the reciprocal rank of the first answer-bearing passage under "
                 "each order. A teacher that does not beat its retriever here has nothing to teach it."), ""]
    abl = res.get("ablations", {})
    if abl.get("loss"):
        rows = [metric_row(name, m.get("metrics"), m.get("note", "")) for name, m in abl["loss"].items()]
        out += ["## Loss ablation (round 1, same teacher scores, same student start, equal steps)", "",
                table(rows, cols), ""]
    if abl.get("aggregation"):
        rows = [metric_row(name, m.get("metrics"), m.get("note", "")) for name, m in abl["aggregation"].items()]
        out += [("## Teacher aggregation ablation (scores from the same round-1 reader, KL, equal steps; and the "
                "answer-string control)"), "",
                table(rows, cols), ""]
    collapse = res.get("collapse") or {}
    if collapse:
        rows = [{"system": name, "distinct first passages": v["distinct_top1"],
                 "commonest first passage's share": v["top1_max_share"], "collapsed": "yes" if v["collapsed"] else ""}
                for name, v in collapse.items()]
        out += ["## Does the retriever still depend on the query? (dev, no labels needed)", "",
                table(rows, ["system", "distinct first passages", "commonest first passage's share", "collapsed"]),
                "",
                (f"For each run over the {res.get('eval_questions', '?')} dev questions: how many distinct passages "
                 "are ranked first, and the share of questions whose first passage is the commonest one "
                 "(`distillir.evaluation.top1_concentration`; 'collapsed' above a 0.2 share). The fid-kd recipe "
                 "records this for every round and warns when a round collapses."), ""]
    if rounds:
        stages = ["retrieve", "reader", "reader_eval", "teacher", "retriever", "index"]
        rows = [{"stage": st, **{f"round {k}": (rounds[k].get(st) or {}).get("wall_s") for k in rounds}}
                for st in stages]
        rows.append({"stage": "total", **{f"round {k}": sum((rounds[k].get(st) or {}).get("wall_s") or 0
                                                             for st in stages) for k in rounds}})
        out += ["## Cost: wall seconds per stage", "",
                table(rows, ["stage", *[f"round {k}" for k in sorted(rounds, key=int)]]), "",
                ("retrieve = BM25 or dense search of the train and dev questions (+ evaluation); reader = reader "
                 "training; reader_eval = generation on dev; teacher = scoring every train question's n passages; "
                 "retriever = distillation training (+ agreement); index = corpus re-embedding + dev search."), ""]
    ov = res.get("overhead")
    if ov:
        rows = [{"teacher": name, "ms / question": v["ms_per_question"], "ratio to plain forward": v["ratio"]}
                for name, v in ov["variants"].items()]
        out += ["## Teacher-extraction overhead (goal <= 1.1)", "",
                (f"Plain reader forward with answer labels: {fmt(ov['plain_ms_per_question'])} ms per question "
                 f"(n = {s['n_passages']}, {ov['batches']} batches of {ov['batch_size']}, median of "
                 f"{ov['repeats']} interleaved repeats, eval mode, no gradient)."), "",
                table(rows, ["teacher", "ms / question", "ratio to plain forward"]), "",
                ("Attention teachers come out of the same forward pass that computes the loss; 'first token, no "
                 "labels' is how the teacher stage scores (one decoder position); pdist decodes each passage alone."),
                ""]
    out += ["## Reading", "", reading(res), "", "## Command", "", "```", res["command"], "```", "",
            f"Raw numbers: `bench/results/{s['name']}.json`."]
    return "\n".join(out)


def reading(res: dict) -> str:
    rows = {r["system"]: r for r in retrieval_rows(res)}
    rounds = res.get("main", {}).get("rounds", {})
    if not rounds or not any((r.get("index") or {}).get("metrics") for r in rounds.values()):
        return "No distilled retriever evaluated yet."
    last = max((k for k in rounds if (rounds[k].get("index") or {}).get("metrics")), key=int)
    final = rows.get(f"FiD-KD round {last}", {})
    parts = []

    def cmp(a: str, b: str, key: str = "Top-5") -> str:
        x, y = rows.get(a, {}).get(key), rows.get(b, {}).get(key)
        if x is None or y is None:
            return ""
        return f"{a} {key} {x:.3f} vs {b} {y:.3f} ({'+' if x >= y else ''}{x - y:.3f})"

    parts.append(f"After {last} round(s) without relevance labels, the distilled retriever reaches Top-1/5/20 "
                 f"{fmt(final.get('Top-1'))}/{fmt(final.get('Top-5'))}/{fmt(final.get('Top-20'))}.")
    for other in ("MiniLM, untrained", "BM25", "DPR supervised", "RRF(BM25, FiD-KD final)"):
        c = cmp(f"FiD-KD round {last}", other)
        if c:
            parts.append(c + ".")
    if "1" in rounds and last != "1":
        c = cmp(f"FiD-KD round {last}", "FiD-KD round 1")
        if c:
            parts.append("Iterating: " + c + ".")
    ems = [(k, ((rounds[k].get("reader_eval") or {}).get("metrics") or {}).get("EM")) for k in sorted(rounds, key=int)]
    ems = [(k, v) for k, v in ems if v is not None]
    if ems:
        parts.append("Reader EM by round: " + ", ".join(f"{k}: {v:.3f}" for k, v in ems) + ".")
    abl = res.get("ablations", {})
    for name in ("loss", "aggregation"):
        best = [(n, (m.get("metrics") or {}).get("Top-5")) for n, m in (abl.get(name) or {}).items()]
        best = [(n, v) for n, v in best if v is not None]
        if len(best) > 1:
            best.sort(key=lambda x: -x[1])
            parts.append(f"{name.title()} ablation, Top-5 best first: " + ", ".join(f"{n} {v:.3f}" for n, v in best)
                         + ".")
    tq = res.get("teacher_quality") or {}
    if tq:
        parts.append("What the teachers know (answer-bearing top passage, teacher vs the retriever that built the "
                     "lists): " + "; ".join(f"{name} {v['teacher_hit@1']:.2f} vs {v['retriever_hit@1']:.2f}"
                                            for name, v in tq.items()) + ".")
    collapsed = {name: v for name, v in (res.get("collapse") or {}).items() if v["collapsed"]}
    if collapsed:
        parts.append("Collapsed (one passage first for most dev questions): " + "; ".join(
            f"{name} ({v['top1_max_share']:.0%} of questions get passage {v['top1_max_pid']} first)"
            for name, v in collapsed.items()) + ". A teacher that cannot tell a question's candidates apart (flat "
            "raw scores, or standardised noise) trains the student to be indifferent among the passages most "
            "related to the question, i.e. to stop depending on it"
            + ("; with the batch's other lists as negatives (in_batch_negatives) the same teacher no longer "
               "collapses it (loss ablation)." if IN_BATCH in (abl.get("loss") or {})
               and not any("in-batch" in k for k in collapsed) else "."))
    agg = abl.get("aggregation") or {}
    start = rows.get("MiniLM, untrained", {}).get("Top-5")
    control = {k: (v.get("metrics") or {}).get("Top-5") for k, v in agg.items() if k.startswith(CONTROL)}
    control = {k: v for k, v in control.items() if v is not None}
    if control and start is not None:
        best = max(control.values())
        parts.append("The answer-string control (a teacher that knows which candidates hold an answer) reaches "
                     "Top-5 " + ", ".join(f"{v:.3f} ({k})" for k, v in control.items())
                     + f" against the untrained student's {start:.3f}: "
                     + ("so the student and schedule can learn from a teacher that knows, and the reader's "
                        "scores are what falls short." if best > start else
                        "even a teacher that knows does not lift the student at this budget, so the shortfall is "
                        "not the reader's alone: 125 query-side steps on 1,000 questions, with SQuAD's "
                        "lexical questions already suiting MiniLM."))
    ov = res.get("overhead")
    if ov and "fid (same pass, with labels)" in ov["variants"]:
        r = ov["variants"]["fid (same pass, with labels)"]["ratio"]
        parts.append(f"Extracting fid teacher scores in the reader's forward pass costs {r:.2f}x a plain forward "
                     f"({'within' if r <= 1.1 else 'above'} the 1.1 goal).")
    n_eval = res.get("eval_questions") or 0
    p = final.get("Top-5")
    if n_eval and p is not None:
        half = 1.96 * (p * (1 - p) / n_eval) ** 0.5
        parts.append(f"With {n_eval} dev questions a Top-5 of {p:.3f} carries a 95% binomial interval of about "
                     f"+/-{half:.3f}, so smaller differences are not evidence either way.")
    parts.append(f"Scale: {res.get('train_questions')} training questions, {res['settings']['rounds']} rounds and a "
                 "MiniLM reader; the paper's gains come with t5-base readers, n = 100 and far longer training.")
    return " ".join(parts)


def agreement_lists(rounds: dict) -> str:
    counts = {((r.get("retriever") or {}).get("agreement_before") or {}).get("lists") for r in rounds.values()}
    counts.discard(None)
    return "/".join(str(c) for c in sorted(counts)) or "?"


def teacher_quality(scores_file: Path, lists_file: Path) -> dict:
    """`distillir.teachers.quality.answer_hits` of a score file over the retriever's lists it scored."""
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers.quality import answer_hits
    from distillir.teachers.scores import read_teacher_scores

    return answer_hits(read_teacher_scores(scores_file), load_fid_examples(lists_file))


# ------------------------------------------------------------------------------------------- pieces


class Bench:
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

    # ---- ablations ---------------------------------------------------------------------------

    def _teacher_run(self, name: str, scores_file: Path, loss: str, *extra: str) -> dict:
        """One round from the same student start, distilled from `scores_file` with `loss`."""
        from distillir.recipes.fid_kd import FiDKDRecipe

        out = self.work / "ablations" / name
        config = recipe_config(self.args, out, self.data_dir, "rounds=1", f"teacher_scores={scores_file}",
                               f"retriever.loss={loss}", "eval.start_retriever=false", "eval.reader=false", *extra)
        start = time.perf_counter()
        results = FiDKDRecipe().run(config)
        r = results["rounds"][0]
        log(f"ablation {name}: Top-5 {results['metrics']['Top-5']:.3f} ({time.perf_counter() - start:.1f} s)")
        return {"metrics": results["metrics"], "retriever": r["retriever"].get("train"),
                "agreement_after": r["retriever"].get("agreement_after"),
                "wall_s": {k: v for k, v in r["wall_s"].items()}}

    def _main_round1(self) -> dict:
        r = self.res["main"]["rounds"]["1"]
        return {"metrics": r["index"]["metrics"], "retriever": r["retriever"].get("train"),
                "agreement_after": r["retriever"].get("agreement_after"), "note": "= the main run's round 1"}

    def loss_ablation(self) -> None:
        section = self.res["ablations"].setdefault("loss", {})
        section["kl"] = self._main_round1()
        scores = self.work / "main" / "round-1" / "teacher" / "scores.jsonl"
        for loss in ("mse", "margin"):
            if section.get(loss) is None:
                log(f"loss ablation: {loss}")
                section[loss] = self._teacher_run(f"loss-{loss}", scores, loss)
                self.save()
        raw = "kl, raw scores"
        if section.get(raw) is None:  # the paper's targets: softmax of the unstandardised attention scores
            log("loss ablation: kl on raw teacher scores (normalize: none)")
            section[raw] = {**self._teacher_run("loss-kl-raw", scores, "kl", "teacher.normalize=none"),
                            "note": "teacher scores not standardised (the paper)"}
            self.save()
        if section.get(IN_BATCH) is None:  # not in the paper: other questions' lists as negatives
            log("loss ablation: kl + in-batch negatives")
            section[IN_BATCH] = {**self._teacher_run("loss-kl-in-batch", scores, "kl",
                                                     "retriever.in_batch_negatives=true"),
                                 "note": "retriever.in_batch_negatives: true (not in the paper)"}
            self.save()

    def _round1_reader(self):
        from distillir.recipes.common.reading import build_reader, torch_device

        config = recipe_config(self.args, self.work / "main", self.data_dir)
        reader = build_reader(config.reader, config.n_passages, SEED,
                              warm_start=self.work / "main" / "round-1" / "reader" / "final")
        reader.to(torch_device(self.args.device == "cpu"))
        return config, reader

    def aggregation_ablation(self) -> None:
        from distillir.readers.fid_data import load_fid_examples
        from distillir.recipes.common.reading import score_teacher

        section = self.res["ablations"].setdefault("aggregation", {})
        section["fid"] = self._main_round1()
        todo = [a for a in AGGREGATIONS if a != "fid" and section.get(a) is None]
        if not todo:
            return
        config, reader = None, None
        examples = load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
        for agg in todo:
            path = self.work / "ablations" / f"scores-{agg}.jsonl"
            score_s = None
            if not path.is_file():
                if reader is None:
                    config, reader = self._round1_reader()
                log(f"aggregation ablation: scoring {len(examples)} questions with {agg}")
                start = time.perf_counter()
                scores = score_teacher(reader, examples, agg, n_passages=config.n_passages,
                                       batch_size=config.reader.batch_size, dtype=config.reader.inference_dtype)
                score_s = round(time.perf_counter() - start, 1)
                scores.write(path)
            result = self._teacher_run(f"agg-{agg}", path, "kl")
            result["scoring_s"] = score_s
            section[agg] = result
            self.save()

    def answer_control(self) -> None:
        """The same round-1 distillation from the answer-string teacher (no model): what a teacher that
        knows where the answers are does to this student, at the same steps."""
        from distillir.readers.fid_data import load_fid_examples
        from distillir.teachers.answers import answer_match_scores

        section = self.res["ablations"].setdefault("aggregation", {})
        path = self.work / "ablations" / f"scores-{CONTROL_FILE}.jsonl"
        if not path.is_file():
            answer_match_scores(load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
                                ).write(path)
        if section.get(CONTROL) is None:
            log("control: distilling the answer-string teacher")
            section[CONTROL] = {**self._teacher_run(f"agg-{CONTROL_FILE}", path, "kl"),
                                "note": "no reader: 1 if the passage contains an answer string, else 0"}
            self.save()
        key = f"{CONTROL}, {IN_BATCH}"
        if section.get(key) is None:
            log("control: the answer-string teacher, kl + in-batch negatives")
            section[key] = {**self._teacher_run(f"agg-{CONTROL_FILE}-in-batch", path, "kl",
                                                "retriever.in_batch_negatives=true"),
                            "note": "the control with retriever.in_batch_negatives: true"}
            self.save()

    # ---- overhead ----------------------------------------------------------------------------

    def overhead(self) -> None:
        if self.res.get("overhead") is not None:
            return
        import torch

        from distillir.readers.fid_data import load_fid_examples
        from distillir.recipes.common.reading import inference_autocast
        from distillir.teachers.likelihood import answer_log_likelihood

        config, reader = self._round1_reader()
        reader.eval()
        device = str(reader.device)
        bs = config.reader.batch_size
        examples = load_fid_examples(self.work / "main" / "round-1" / "retrieve" / "train.jsonl")
        chunks = [examples[i:i + bs] for i in range(0, min(len(examples), bs * self.s["overhead_batches"]), bs)]
        with_labels = reader.collator(config.n_passages, labels=True)
        no_labels = reader.collator(config.n_passages, labels=False)
        batches = [with_labels(c).to(device) for c in chunks]
        bare = [no_labels(c).to(device) for c in chunks]
        questions = sum(len(b) for b in batches)

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        variants = {
            "plain": lambda i: reader(**batches[i].model_inputs()),
            "fid (same pass, with labels)": lambda i: reader(**batches[i].model_inputs(), teacher="fid"),
            "post_softmax (same pass)": lambda i: reader(**batches[i].model_inputs(), teacher="post_softmax"),
            "all_tokens (same pass)": lambda i: reader(**batches[i].model_inputs(), teacher="all_tokens"),
            "adist (same pass)": lambda i: reader(**batches[i].model_inputs(), teacher="adist"),
            "fid, first token, no labels": lambda i: reader(**bare[i].model_inputs(), teacher="fid"),
            "pdist (n single-passage decodes)": lambda i: answer_log_likelihood(reader, batches[i]),
        }
        repeats = 5
        times: dict[str, list[float]] = {k: [] for k in variants}
        with torch.no_grad(), inference_autocast(config.reader.inference_dtype, device):
            for fn in variants.values():  # warm-up
                fn(0)
            for _ in range(repeats):
                for name, fn in variants.items():
                    sync()
                    start = time.perf_counter()
                    for i in range(len(batches)):
                        fn(i)
                    sync()
                    times[name].append(time.perf_counter() - start)
        plain = times["plain"]
        result = {"batches": len(batches), "batch_size": bs, "repeats": repeats, "questions": questions,
                  "plain_ms_per_question": 1000 * statistics.median(plain) / questions, "variants": {}}
        for name, ts in times.items():
            if name == "plain":
                continue
            ratio = statistics.median([t / p for t, p in zip(ts, plain)])
            result["variants"][name] = {"ms_per_question": 1000 * statistics.median(ts) / questions,
                                        "ratio": ratio}
        self.res["overhead"] = result
        log("teacher overhead: " + ", ".join(f"{k} {v['ratio']:.3f}x" for k, v in result["variants"].items()))
        self.save()


def main(argv=None) -> None:
    args = parse_args(argv)
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
