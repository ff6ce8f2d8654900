"""The student-side benchmark's rows (what each ablation changes) and its report: the table with 95% intervals
and a reading generated from the numbers."""

from __future__ import annotations

from _common import verdict

# Today's defaults: fid-kd's CPU config (configs/fid-kd-squad-cpu.yaml) distilling the same teacher: BM25's
# top 10, the own list only, per-list z-scored targets, KL at temperature 1 on MiniLM's cosine x 20,
# query tower at 3e-5, 2 epochs at 16 questions a step.
BASE = {
    "sources": ["bm25"], "depth": 10, "teacher": "answers", "skip_without_positive": False,
    "normalize": "zscore", "teacher_scale": 1.0, "epochs": 2, "steps": None, "questions": 1000,
    "student": {"train_passages": False, "passage_max_length": 256, "query_max_length": 40, "loss": "kl",
                "temperature": 1.0, "in_batch_negatives": False, "random_negatives": 0, "agreement_sample": 256,
                "batch": 16, "lr": 3e-5},
}

ABLATIONS: dict[str, dict] = {
    "dpr_gold": {"system": "gold passage + BM25 top-10 negatives (labels: DPR-style supervision)",
                 "teacher": "gold"},
    "today": {"system": "answer teacher, today's defaults (BM25 top-10, own list)"},
    "skip_empty": {"system": "lists without an answer-bearing candidate left out", "skip_without_positive": True},
    "in_batch": {"system": "+ in-batch negatives", "student": {"in_batch_negatives": True}},
    "random_16": {"system": "+ 16 random corpus passages per list (teacher probability 0)",
                  "student": {"random_negatives": 16}},
    "student_10": {"system": "candidates: the student's own top-10", "sources": ["student"]},
    "union_10": {"system": "candidates: BM25 top-10 + student top-10 (union)", "sources": ["bm25", "student"]},
    "bm25_30": {"system": "candidates: BM25 top-30", "depth": 30},
    "raw_targets": {"system": "raw 0/1 targets (no z-score)", "normalize": "none"},
    "sharp_targets": {"system": "z-scored targets x 5 (sharper teacher)", "teacher_scale": 5.0},
    "lr_1e-5": {"system": "learning rate 1e-5", "student": {"lr": 1e-5}},
    "lr_1e-4": {"system": "learning rate 1e-4", "student": {"lr": 1e-4}},
    "steps_x4": {"system": "8 epochs (4x the steps)", "epochs": 8},
    "q5k": {"system": "5,000 training questions (2 epochs: 625 steps)", "questions": 5000},
    "q20k": {"system": "20,000 training questions (625 steps: each seen at most once)", "questions": 20000,
             "steps": 625},
}
# In-batch negatives with other settings (in-batch is the one change that moved the student most).
ABLATIONS["in_batch_lr_1e-5"] = {"system": "in-batch negatives, learning rate 1e-5",
                                 "student": {"in_batch_negatives": True, "lr": 1e-5}}
ABLATIONS["in_batch_student_10"] = {"system": "in-batch negatives, candidates: the student's own top-10",
                                    "sources": ["student"], "student": {"in_batch_negatives": True}}
# The combination of the settings that helped, at 1k and 20k questions (filled in from the rows above).
COMBO = {"skip_without_positive": True, "sources": ["bm25", "student"],
         "student": {"in_batch_negatives": True, "random_negatives": 16}}
ABLATIONS["combo"] = {"system": "combined: union candidates, lists with an answer, in-batch + 16 random negatives",
                      **COMBO}
ABLATIONS["combo_q20k"] = {**ABLATIONS["combo"], "system": ABLATIONS["combo"]["system"] + ", 20k questions, 625 steps",
                           "questions": 20000, "steps": 625}

# The combination with sharper targets (x 5): with the union's candidates and with the student's own only (what
# fid-kd's loop distils from its second round on).
ABLATIONS["combo_sharp"] = {**ABLATIONS["combo"], "system": ABLATIONS["combo"]["system"] + ", targets x 5",
                            "teacher_scale": 5.0}
ABLATIONS["combo_sharp_q20k"] = {**ABLATIONS["combo_sharp"], "questions": 20000, "steps": 625,
                                 "system": ABLATIONS["combo_sharp"]["system"] + ", 20k questions, 625 steps"}
ABLATIONS["student_combo_sharp_q20k"] = {
    **ABLATIONS["combo_sharp_q20k"], "sources": ["student"],
    "system": "the student's own top-10, lists with an answer, in-batch + 16 random negatives, targets x 5, "
              "20k questions, 625 steps"}
# The same settings with gold labels (DPR-style supervision through the same path, at the same budget), and with
# twice the steps (every one of the 20k lists once).
ABLATIONS["gold_combo_sharp_q20k"] = {**ABLATIONS["combo_sharp_q20k"], "teacher": "gold",
                                      "system": "gold passage + the same candidates and settings as "
                                                "`combo_sharp_q20k` (labels: DPR-style supervision)"}
ABLATIONS["combo_sharp_q20k_1250"] = {**ABLATIONS["combo_sharp_q20k"], "steps": 1250,
                                      "system": ABLATIONS["combo_sharp"]["system"] + ", 20k questions, 1250 steps"}

# Both towers (the passage tower trained too, the corpus re-embedded by it) against the query tower alone at the
# same settings. A passage-length step is costly on 2 cores, so these lists are leaner (BM25 top-4 + the student's
# top-4, no random negatives; in-batch negatives remain) and the steps fewer (400 x 16 of the 20k questions), with
# bf16 where native and attention dropout off (2-4x faster steps; `lean_q20k_dropout` keeps the model's 0.1 to show
# what that costs the query tower).
LEAN = {**ABLATIONS["combo_sharp_q20k"], "depth": 4, "steps": 400,
        "student": {"in_batch_negatives": True, "random_negatives": 0},
        "trainer": {"mixed_precision": "native", "attention_dropout": 0.0}}
LEAN_SYSTEM = ("union of BM25 and student top-4, lists with an answer, in-batch negatives, targets x 5, "
               "20k questions, 400 steps")
ABLATIONS["lean_q20k"] = {**LEAN, "system": f"query tower: {LEAN_SYSTEM}"}
ABLATIONS["lean_q20k_dropout"] = {**LEAN, "trainer": {"mixed_precision": "native"},
                                  "system": f"query tower, attention dropout 0.1: {LEAN_SYSTEM}"}
ABLATIONS["both_lean_q20k"] = {**LEAN, "student": {**LEAN["student"], "train_passages": True, "shared": False},
                               "system": f"both towers (two copies of MiniLM): {LEAN_SYSTEM}"}
ABLATIONS["gold_both_lean_q20k"] = {**ABLATIONS["both_lean_q20k"], "teacher": "gold",
                                    "system": "gold passage + the same candidates and settings as `both_lean_q20k` "
                                              "(labels: DPR-style supervision)"}

# Paired per-question differences, (first, second): second - first.
PAIRS = [("minilm", "lean_q20k"), ("lean_q20k_dropout", "lean_q20k"), ("lean_q20k", "both_lean_q20k"),
         ("minilm", "both_lean_q20k"), ("bm25", "rrf_best"), ("gold_both_lean_q20k", "both_lean_q20k")]

COLUMNS = ["Top-1", "Top-5", "Top-20", "Top-100", "MRR@10"]


def _fmt(value, ci=None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ± {ci:.3f}" if ci is not None else "")


def markdown(res: dict) -> str:
    rows, s = res.get("rows", {}), res.get("settings", {})
    env = res.get("environment", {})
    out = ["# The student side of distillation: the answer-string teacher into MiniLM (squad-open)", "",
           (f"Training questions: the first N (the row's `questions`: 1,000 unless it says) of a seeded sample of "
            f"{s.get('train_questions', '?')} SQuAD train questions (question + answers only); all "
           f"{s.get('eval_questions', '?')} dev questions; query tower only (passage tower = MiniLM, corpus "
           f"embedded once, {s.get('encode_dtype', '?')}) unless the row says both towers (then the corpus is "
           f"re-embedded by the trained passage tower). {env.get('cpu_model', '?')} "
           f"({', '.join(env.get('cpu_flags', []))}), {env.get('logical_cpus', '?')} logical CPUs, "
           f"{env.get('date_utc', '?')}. Intervals: 95% normal, per column."), "",
           "| row | system | labels | " + " | ".join(COLUMNS) + " | lists (with an answer) | steps | wall s |",
           "|---|---|---|" + "---:|" * (len(COLUMNS) + 3)]
    order = ["bm25", "minilm", *ABLATIONS, "rrf_best"]
    for name in [n for n in order if n in rows] + [n for n in rows if n not in order]:
        r = rows[name]
        m, ci = r["metrics"], r.get("ci95", {})
        lists = f"{r['trained_lists']} ({r['lists_with_positive']})" if "trained_lists" in r else ""
        out.append(f"| `{name}` | {r['system']} | {'yes' if r['labels_used'] else 'no'} | "
                   + " | ".join(_fmt(m.get(c), ci.get(c)) for c in COLUMNS)
                   + f" | {lists} | {r.get('steps', '')} | {r.get('wall_s', '')} |")
    knows = res.get("teacher_knows")
    if knows:
        out += ["", f"What the teacher knows on the training lists (the first {knows['questions']} questions' top-"
                    f"{knows['depth']}): " + "; ".join(
                        f"{source} lists ({v['answer_lists']} of {v['lists']} hold an answer): on those, the teacher's "
                        f"first candidate holds one in {v['teacher_hit@1']:.3f}, {source}'s own first in "
                        f"{v['retriever_hit@1']:.3f} (MRR {v['teacher_mrr']:.3f} vs {v['retriever_mrr']:.3f})"
                        for source, v in knows["lists"].items())
                + ". The student is MiniLM, so its own lists' first candidate is the student's top-1."]
    transfer = res.get("transfer")
    if transfer:
        m, best = transfer["metrics"], transfer["best_row"]
        out += ["", "SciFact test (another domain), nDCG@10: " + ", ".join(
            f"`{k}` {v['nDCG@10']:.3f}" for k, v in m.items()) + (
            f" (`{best}` - MiniLM: {m[best]['nDCG@10'] - m['minilm']['nDCG@10']:+.3f}; the best row by squad-open "
            "Top-5" + (", whose passage tower was trained on squad-open's passages too" if best.startswith("both")
                       else "") + ")." if best in m and "minilm" in m else ".")]
    paired = res.get("paired")
    if paired:
        out += ["", "Paired per-question differences (second - first, all dev questions; 95% normal interval):", "",
                "| difference | metric | mean | ± (95%) | better | worse |", "|---|---|---:|---:|---:|---:|"]
        for name, metrics in paired.items():
            out += [f"| `{name}` | {m} | {d['mean_diff']:+.3f} | {d['half_width']:.3f} | {d['better']} | "
                    f"{d['worse']} |" for m, d in metrics.items()]
    out += ["", "## Reading", "", *reading(rows, res.get("paired")), "", "## Command", "", f"`{res.get('command', '')}`"]
    return "\n".join(out) + "\n"


def _delta(rows: dict, name: str, ref: str, col: str) -> float:
    return rows[name]["metrics"][col] - rows[ref]["metrics"][col]


def reading(rows: dict, paired: dict | None = None) -> list[str]:
    if "minilm" not in rows or "today" not in rows:
        return ["(incomplete)"]
    start, today = rows["minilm"]["metrics"], rows["today"]["metrics"]
    ci1, ci5 = rows["minilm"]["ci95"]["Top-1"], rows["minilm"]["ci95"]["Top-5"]
    distilled = [n for n in ABLATIONS if n in rows and not rows[n]["labels_used"]]
    lines = [(f"- Today's defaults move MiniLM from Top-1/5 {start['Top-1']:.3f}/{start['Top-5']:.3f} to "
             f"{today['Top-1']:.3f}/{today['Top-5']:.3f}: the student loses what it knew.")]
    if "dpr_gold" in rows:
        g = rows["dpr_gold"]["metrics"]
        lines.append(f"- Gold labels through the same path (own list of gold + BM25 top-10) lose too: "
                     f"{g['Top-1']:.3f}/{g['Top-5']:.3f}. The loss is on the student side, not the teacher's.")
    above = [n for n in distilled if _delta(rows, n, "minilm", "Top-1") > ci1 and _delta(rows, n, "minilm", "Top-5") > ci5]
    if above:
        lines.append("- Above the start at both Top-1 and Top-5 by more than one run's interval (±"
                     f"{ci1:.3f} / ±{ci5:.3f}): " + ", ".join(
                         f"`{n}` ({_delta(rows, n, 'minilm', 'Top-1'):+.3f} / {_delta(rows, n, 'minilm', 'Top-5'):+.3f})"
                         for n in above) + ".")
    else:
        lines.append("- No row is above the start at both Top-1 and Top-5 by more than one run's interval.")
    singles = [n for n in ("skip_empty", "in_batch", "random_16", "student_10", "union_10", "bm25_30", "raw_targets",
                           "sharp_targets", "lr_1e-5", "lr_1e-4", "steps_x4", "q5k", "q20k") if n in rows]
    ranked = sorted(singles, key=lambda n: -_delta(rows, n, "today", "Top-5"))
    lines.append("- One change at a time against today's defaults (Top-5): " + ", ".join(
        f"`{n}` {_delta(rows, n, 'today', 'Top-5'):+.3f}" for n in ranked) + ".")
    if "combo_sharp" in rows:
        d1 = rows["combo_sharp"]["metrics"]
        line = (f"- The new defaults (`combo_sharp`, the recipe's default student side; a test keeps them equal): "
                f"{d1['Top-1']:.3f}/{d1['Top-5']:.3f} at 1k questions")
        if "combo_sharp_q20k" in rows:
            d20 = rows["combo_sharp_q20k"]["metrics"]
            line += f", {d20['Top-1']:.3f}/{d20['Top-5']:.3f} at 20k (`combo_sharp_q20k`)"
        lines.append(line + ".")
    if "gold_combo_sharp_q20k" in rows and "combo_sharp_q20k" in rows:
        d1, d5 = (_delta(rows, "combo_sharp_q20k", "gold_combo_sharp_q20k", c) for c in ("Top-1", "Top-5"))
        g = rows["gold_combo_sharp_q20k"]["metrics"]
        same = abs(d1) <= ci1 and abs(d5) <= ci5
        lines.append(f"- Equal budget, gold labels through the same settings (`gold_combo_sharp_q20k`): "
                     f"{g['Top-1']:.3f}/{g['Top-5']:.3f}; the answer teacher is {d1:+.3f} / {d5:+.3f} against it"
                     + (" (within the interval): it matches supervision, so the shortfall below is the student's "
                        "(query tower only, this budget), not the teacher's." if same else "."))
    if "combo_sharp_q20k_1250" in rows and "combo_sharp_q20k" in rows:
        lines.append(f"- Twice the steps at 20k questions (`combo_sharp_q20k_1250`, every list once): "
                     f"{_delta(rows, 'combo_sharp_q20k_1250', 'combo_sharp_q20k', 'Top-1'):+.3f} / "
                     f"{_delta(rows, 'combo_sharp_q20k_1250', 'combo_sharp_q20k', 'Top-5'):+.3f} against 625.")
    lines += lean_reading(rows, ci1, ci5, paired)
    best = max(distilled, key=lambda n: rows[n]["metrics"]["Top-5"])
    b = rows[best]["metrics"]
    lines.append(f"- Goal Top-1 >= 0.70 and Top-5 >= 0.88: the best row (`{best}`, {b['Top-1']:.3f}/{b['Top-5']:.3f}) "
                 f"is {0.70 - b['Top-1']:.3f} / {0.88 - b['Top-5']:.3f} short.")
    if "rrf_best" in rows and "bm25" in rows:
        lines.append(f"- RRF(BM25, `{rows['rrf_best'].get('fused', best)}`) (nothing tuned): "
                     + _versus(rows, "rrf_best", "bm25", ci1, ci5, paired) + ".")
    return lines


def _versus(rows: dict, name: str, ref: str, ci1: float, ci5: float, paired: dict | None = None) -> str:
    """name - ref at Top-1 / Top-5: with the paired per-question interval where measured, else against one run's."""
    diffs = (paired or {}).get(f"{name} - {ref}")
    if diffs:
        return (f"{diffs['Top-1']['mean_diff']:+.3f} ± {diffs['Top-1']['half_width']:.3f} / "
                f"{diffs['Top-5']['mean_diff']:+.3f} ± {diffs['Top-5']['half_width']:.3f} against `{ref}` (paired: "
                f"{verdict(diffs['Top-1'])} / {verdict(diffs['Top-5'])})")
    d1, d5 = _delta(rows, name, ref, "Top-1"), _delta(rows, name, ref, "Top-5")
    beyond = [c for c, d, ci in (("Top-1", d1, ci1), ("Top-5", d5, ci5)) if abs(d) > ci]
    return (f"{d1:+.3f} / {d5:+.3f} against `{ref}`"
            + (f" (beyond one run's interval at {' and '.join(beyond)})" if beyond else " (within one run's interval)"))


def lean_reading(rows: dict, ci1: float, ci5: float, paired: dict | None = None) -> list[str]:
    """The lean rows: the passage tower trained or not, attention dropout, gold labels; Top-1 / Top-5."""
    lines = []
    if "lean_q20k" in rows:
        m = rows["lean_q20k"]["metrics"]
        lines.append(f"- Lean lists, query tower (`lean_q20k`): {m['Top-1']:.3f}/{m['Top-5']:.3f}, "
                     + _versus(rows, "lean_q20k", "minilm", ci1, ci5, paired) + ".")
    if "lean_q20k_dropout" in rows and "lean_q20k" in rows:
        lines.append("- Attention dropout off (`lean_q20k`) against the model's 0.1 (`lean_q20k_dropout`), "
                     "everything else equal: " + _versus(rows, "lean_q20k", "lean_q20k_dropout", ci1, ci5, paired) + ".")
    if "both_lean_q20k" in rows and "lean_q20k" in rows:
        m = rows["both_lean_q20k"]["metrics"]
        lines.append(f"- Both towers trained (`both_lean_q20k`): {m['Top-1']:.3f}/{m['Top-5']:.3f}, "
                     + _versus(rows, "both_lean_q20k", "lean_q20k", ci1, ci5, paired) + " (the query tower alone at the "
                     "same lists and steps); " + _versus(rows, "both_lean_q20k", "minilm", ci1, ci5, paired)
                     + f"; {rows['both_lean_q20k']['wall_s'] / 60:.0f} min against "
                       f"{rows['lean_q20k']['wall_s'] / 60:.0f}.")
    if "gold_both_lean_q20k" in rows and "both_lean_q20k" in rows:
        lines.append("- The same two towers on gold passages (`gold_both_lean_q20k`, labels): the answer teacher is "
                     + _versus(rows, "both_lean_q20k", "gold_both_lean_q20k", ci1, ci5, paired) + ".")
    return lines
