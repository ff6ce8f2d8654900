"""FiD-KD benchmark report: the Markdown tables and the reading generated from the results' numbers."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fid_kd_settings import CONTROL, IN_BATCH, KS, RRF_K, SEED, TEACHER_NORMALIZE


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


SUMMARY_KEYS = tuple(f"Top-{k}" for k in KS) + ("MRR@10", "R@20")


def summary(res: dict) -> list[dict]:
    """The retrieval table's rows and the ablations' (dev): only the DPR baseline reads relevance labels."""
    from _common import summary_row

    rows = [summary_row(r["system"], "squad-open", "dev", r["system"] == "DPR supervised", r, SUMMARY_KEYS)
            for r in retrieval_rows(res)]
    for part, title in (("loss", "loss ablation"), ("aggregation", "aggregation ablation")):
        for name, m in (res.get("ablations") or {}).get(part, {}).items():
            rows.append(summary_row(f"{title}: {name}", "squad-open", "dev", False, m.get("metrics"), SUMMARY_KEYS))
    return [r for r in rows if r["metrics"]]  # a partial run lists only what it has measured


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
