"""Markdown for bench/dgr.py's results (bench/results/dgr.md)."""

from __future__ import annotations

from dgr import KEYS, TEACHER_LABELS, TEACHERS


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"


def _knows(teacher: str, know: dict) -> str:
    every, sample = know["all"], know["sample"]
    t, b = every["teacher"], every["BM25"]
    student = sample["untrained student"]["MRR"]
    text = (f"The {TEACHER_LABELS[teacher]} orders its training lists ({know['lists']}) "
            + ("about as well as" if abs(t["MRR"] - b["MRR"]) < 0.01 else "better than" if t["MRR"] > b["MRR"]
               else "worse than") + f" BM25 (gold first {t['Top-1']:.3f} vs "
            f"{b['Top-1']:.3f}, MRR {t['MRR']:.3f} vs {b['MRR']:.3f}); on {sample['teacher']['lists']} of them the "
            f"untrained student reaches MRR {student:.3f} against the teacher's {sample['teacher']['MRR']:.3f}.")
    if sample["teacher"]["MRR"] <= student:
        text += (" So this teacher knows no more than the student it teaches: whatever its list terms add over "
                 "plain cannot be its knowledge of the order, only the contrast of the gold identifier against the "
                 "list's negatives that every list term carries.")
    else:
        text += " This teacher knows more than the student it teaches."
    if know.get("score_spread") is not None:
        text += (f" Its scores have a within-list standard deviation of {know['score_spread']:.2f} (what the KL term's "
                 "softmax at temperature 1 sees; RankNet and ListNet use only the order).")
    return text


def reading(data: dict) -> str:
    rows = {r["key"]: r for r in data["rows"]}
    bm25, minilm = rows["bm25"]["nDCG@10"], rows["minilm"]["nDCG@10"]
    trained = [r for r in data["rows"] if r["labels_used"]]
    text = [_knows(t, data["teacher_knowledge"][t]) for t in TEACHERS if t in data["teacher_knowledge"]]
    if trained:
        best = max(trained, key=lambda r: r["nDCG@10"])
        text.append(f"The best generative row, {best['system']}, reaches nDCG@10 {best['nDCG@10']:.3f} from the "
                    f"untrained LM's {rows['untrained']['nDCG@10']:.3f}: far below BM25 ({bm25:.3f}) and MiniLM "
                    f"({minilm:.3f}) at {data['student']['steps']} steps of batch {data['student']['batch']} (under one "
                    "pass over the corpus's indexing examples), the generative retriever has not yet learnt the corpus."
                    if best["nDCG@10"] < bm25 else
                    f"The best generative row, {best['system']}, reaches nDCG@10 {best['nDCG@10']:.3f}, BM25 {bm25:.3f}.")
    if "lm-minilm" in rows:
        text.append(f"The same LM teacher distilled into MiniLM's query tower (fid-kd) reaches "
                    f"{rows['lm-minilm']['nDCG@10']:.3f} from MiniLM's {minilm:.3f}.")
    across = [c for c in data["claims"] if "the LM teacher beats" in c["claim"]]
    if across and all(c["held"] != "held" for c in across):
        text.append("Across teachers, the one that knows adds no measurable nDCG@10 over the one that does not ("
                    + "; ".join(f"{c['second'].removeprefix('lm-')} {c['nDCG@10']['mean_diff']:+.3f} ± "
                                f"{c['nDCG@10']['half_width']:.3f}" for c in across)
                    + "): at this many steps most of what a list term adds over plain is the gold identifier's "
                    "contrast against the list's negatives, which any teacher's list carries.")
    for word, chosen in (("Held beyond the interval", "held"), ("Not shown at this scale", "not shown"),
                          ("Reversed beyond the interval", "reversed")):
        picked = [c for c in data["claims"] if c["held"] == chosen]
        if picked:
            text.append(f"{word}: " + "; ".join(
                f"{c['claim']} ({c['nDCG@10']['mean_diff']:+.3f} ± {c['nDCG@10']['half_width']:.3f})" for c in picked)
                + ".")
    if data["runs_missing"]:
        text.append("Not run yet: " + ", ".join(data["runs_missing"]) + " (partial render).")
    return " ".join(text)


def _walls(data: dict) -> str:
    parts = []
    lm_wall = (data.get("lm_teacher") or {}).get("scoring_wall_s")
    for prefix in TEACHERS.values():
        rows = [r for r in data["rows"] if r.get("stages_wall_s") and r["key"].startswith(prefix)
                and (prefix or not r["key"].startswith(TEACHERS["lm"]))]
        if not rows:
            continue
        head = (f"cross-encoder teacher {_minutes(rows[0]['stages_wall_s'].get('teacher'))}" if not prefix else
                f"LM teacher scoring {_minutes(lm_wall)} (fid-kd's teacher stage)")
        parts.append(head + " (once, shared by its variants); " + "; ".join(
            f"{r['key']}: student {_minutes((data['train'].get(r['key']) or {}).get('elapsed'))}, search "
            f"{_minutes(r['stages_wall_s'].get('eval'))}" for r in rows))
    return ". ".join(parts)


def render(data: dict) -> str:
    from distillir.evaluation.report import format_table

    env, s = data["environment"], data["student"]
    table = [{"system": r["system"], **{k: r.get(k) for k in KEYS}, "relevance labels": "train qrels" if r["labels_used"]
              else "none"} for r in data["rows"]]
    know = [{"teacher": TEACHER_LABELS[t], "order of its training lists": k, "lists": v["lists"],
             "gold first": v["Top-1"], "gold MRR": v["MRR"]}
            for t, parts in data["teacher_knowledge"].items() for part in ("all", "sample")
            for k, v in parts[part].items() if part == "all" or k != "BM25"]
    claims = [{"claim (second - first, per claim)": c["claim"], "nDCG@10 diff": c["nDCG@10"]["mean_diff"],
               "±": c["nDCG@10"]["half_width"], "better / worse": f"{c['nDCG@10']['better']} / {c['nDCG@10']['worse']}",
               "at this scale": c["held"]} for c in data["claims"]]
    base_walls = ", ".join(f"{r['key']} {_minutes(r['wall_s'])}" for r in data["rows"] if r.get("wall_s"))
    return "\n".join([
        "# DGR on SciFact: a causal LM writing abstract titles, distilled from a cross-encoder or a causal LM", "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. `{data['config']}`: the student is "
         f"SmolLM2-135M-Instruct (packaged GGUF; its last {s['train_layers']} layers train, bf16 autocast where "
         f"native) writing an abstract's title (first {s['docid_max_length'] - 1} tokens, unique under a prefix tree "
         f"of the 5,183 abstracts) after the prompt {s['prompt']!r}; {s['steps']} steps of batch {s['batch']} for every "
         "variant, the same example order within a teacher (train claims' teacher-ordered lists, gold abstract from "
         "the train qrels first, mixed with one indexing example per abstract: its first 48 words -> its "
         "identifier). Two teachers order the lists: the config's cross-encoder (MiniLM with a fresh head trained 60 "
         "steps with listwise CE on BM25's top 20 of the 809 train claims, then scoring those lists), and SmolLM2's "
         "claim likelihood log p(claim | abstract) with no labels over the union of BM25's and MiniLM's top 10 "
         f"(fid-kd's teacher stage, `{(data.get('lm_teacher') or {}).get('config')}`, given as `teacher.scores`). "
         f"Evaluation: constrained beam search ({s['beams']} beams) on the {data['queries']} test claims."),
        "", format_table(table), "",
        ("What each teacher knows, on its training lists (gold = the train qrels; the untrained student on the first "
         "lists only):"), "",
        format_table(know), "", format_table(claims) if claims else "", "",
        reading(data), "",
        f"Wall time: {_walls(data)}; baselines: {base_walls}." + (f" {data['note']}" if data.get("note") else ""), "",
        f"Reproduce: `{data['command']}`", ""])
