"""Markdown (and the curve plot) for bench/dgr_long.py's results (bench/results/dgr_long.md)."""

from __future__ import annotations

from _common import RESULTS_DIR
from dgr_long import KEYS, LABELS


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"


def _diff(c: dict) -> str:
    return f"{c['nDCG@10']['mean_diff']:+.3f} ± {c['nDCG@10']['half_width']:.3f}"


def curve_plot(data: dict, name: str):
    """nDCG@10 against the training step for each variant, from the untrained LM (step 0)."""
    from distillir.evaluation.plots import plot_rounds, plotting_available

    if not plotting_available():
        return None
    start = next(r["nDCG@10"] for r in data["rows"] if r["key"] == "untrained")
    series = {LABELS[v]: [(0, start), *[tuple(p) for p in points]] for v, points in data["curves"].items()}
    return plot_rounds(series, "nDCG@10 (300 test claims)", RESULTS_DIR / "plots" / f"{name}-curve.png",
                       xlabel="training step (batch 8)")


def training_plot(data: dict, name: str):
    """Each variant's training loss and learning rate (RankNet's loss holds its list term: larger by design)."""
    from distillir.evaluation.plots import plot_training, plotting_available

    if not plotting_available() or not data.get("train_logs"):
        return None
    return plot_training({LABELS[v]: rows for v, rows in data["train_logs"].items()},
                         RESULTS_DIR / "plots" / f"{name}-training.png")


def reading(data: dict) -> str:
    rows = {r["key"]: r for r in data["rows"]}
    steps = data["student"]["steps"]
    know = data["teacher_knowledge"]
    text = [(f"The teacher orders its {know['all']['teacher']['lists']} training lists with gold MRR "
            f"{know['all']['teacher']['MRR']:.3f} against BM25's {know['all']['BM25']['MRR']:.3f}; on "
            f"{know['sample']['teacher']['lists']} of them the untrained student reaches "
            f"{know['sample']['untrained student']['MRR']:.3f} against the teacher's {know['sample']['teacher']['MRR']:.3f}.")]
    if know["sample"]["teacher"]["MRR"] > know["sample"]["untrained student"]["MRR"]:
        text.append("The teacher knows more than its student (rule a).")
    start = [c for c in data["claims"] if c["claim"].endswith("beats the untrained LM") and c["claim"].startswith("DGR")]
    if start:
        text.append(f"Against its own start (the untrained LM), DGR's student ends {_diff(start[0])}: rule (b) "
                    + ("met." if start[0]["held"] == "held" else "not shown."))
    curves = data["curves"]
    for variant, points in curves.items():
        text.append(f"{LABELS[variant]}: nDCG@10 " + " -> ".join(f"{v:.3f} (step {s})" for s, v in points)
                    + f", from the untrained LM's {rows['untrained']['nDCG@10']:.3f}.")
    last = [rows[f"{v}@{steps}"]["nDCG@10"] for v in curves if f"{v}@{steps}" in rows]
    if last and max(last) < rows["bm25"]["nDCG@10"]:
        text.append(f"After {steps} steps every generative row is still far below BM25 ({rows['bm25']['nDCG@10']:.3f}) "
                    f"and MiniLM ({rows['minilm']['nDCG@10']:.3f}).")
    for word, chosen in (("Held beyond the interval", "held"), ("Not shown", "not shown"), ("Reversed", "reversed")):
        picked = [c for c in data["claims"] if c["held"] == chosen]
        if picked:
            text.append(f"{word}: " + "; ".join(f"{c['claim']} ({_diff(c)})" for c in picked) + ".")
    if data["runs_missing"]:
        text.append("Not run yet: " + ", ".join(data["runs_missing"]) + " (partial render).")
    return " ".join(text)


def render(data: dict, name: str = "dgr_long") -> str:
    from distillir.evaluation.report import format_table

    env, s = data["environment"], data["student"]
    table = [{"system": r["system"], **{k: r.get(k) for k in KEYS},
              "relevance labels": "train qrels" if r["labels_used"] else "none"} for r in data["rows"]]
    claims = [{"claim (second - first, per claim)": c["claim"], "nDCG@10 diff": c["nDCG@10"]["mean_diff"],
               "±": c["nDCG@10"]["half_width"], "better / worse": f"{c['nDCG@10']['better']} / {c['nDCG@10']['worse']}",
               "at this scale": c["held"]} for c in data["claims"]]
    walls = "; ".join(f"{v}: student {_minutes((data['train'].get(v) or {}).get('elapsed'))}, final search "
                      f"{_minutes(w.get('eval'))}" for v, w in data["stages_wall_s"].items())
    searches = [r["wall_s"] for r in data["rows"] if r["labels_used"] and r.get("wall_s")]
    plot, training = curve_plot(data, name), training_plot(data, name)
    return "\n".join([
        "# DGR trained longer on SciFact: plain against RankNet under the LM teacher, along the way", "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. `{data['config']}` with `teacher.scores` = "
         "SmolLM2's claim likelihood log p(claim | abstract), no labels (fid-kd's teacher stage, the DGR benchmark's LM "
         f"teacher) and `student.trainer.max_steps={s['steps']}` (batch {s['batch']}, learning rate {s['learning_rate']}, "
         f"last {s['train_layers']} layers): about one pass over the train claims' lists and the 5,183 indexing "
         f"examples, against 240 steps above. Both variants train on the same lists in the same order; the trainable "
         f"layers saved at steps {', '.join(map(str, s['snapshots']))} search the {data['queries']} test claims like "
         f"the final student (constrained beam search, {s['beams']} beams)."),
        "", format_table(table), "", format_table(claims) if claims else "", "",
        reading(data), "",
        *([f"![{plot.stem}](plots/{plot.name})", ""] if plot else []),
        *(["Training loss and learning rate (the RankNet variant's loss includes its list term):", "",
           f"![{training.stem}](plots/{training.name})", ""] if training else []),
        (f"Wall time: {walls}; each snapshot's search "
         + ((_minutes(min(searches)) if _minutes(min(searches)) == _minutes(max(searches))
             else f"{_minutes(min(searches))}-{_minutes(max(searches))}") if searches else "?")
         + "." + (f" {data['note']}" if data.get("note") else "")), "",
        f"Reproduce: `{data['command']}`", ""])
