"""Markdown for bench/ranker_lm.py's result (bench/results/ranker_lm.md)."""

from __future__ import annotations

KEYS = ("Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10")


def systems(data: dict) -> dict:
    """metrics key -> the system as the tables name it (the teacher LM named as the run records it)."""
    lm = (data.get("lm") or {}).get("label", "SmolLM2")  # results before --lm were SmolLM2's
    return {
        "BM25": "BM25 (k1 0.9, b 0.4)",
        "answer ranker": "answer-trained cross-encoder (bench/ranker_answers.py), re-ranking BM25's top 20",
        "ranker": f"cross-encoder learning {lm}'s question likelihood from MiniLM, re-ranking BM25's top 20",
        "ranker_from_answers": f"the answer-trained cross-encoder then learning {lm}'s question likelihood",
        "LM": f"{lm} question likelihood (teacher)",
    }


def _diff(v: dict) -> str:
    return f"{v['mean_diff']:+.3f} ± {v['half_width']:.3f}"


def _held(v: dict) -> str:
    lo, hi = v["mean_diff"] - v["half_width"], v["mean_diff"] + v["half_width"]
    return "above, beyond the interval" if lo > 0 else "below, beyond the interval" if hi < 0 else "within the interval"


def _paired(data: dict, second: str, first: str) -> dict | None:
    return next((p for p in data["paired"] if p["second"] == second and p["first"] == first), None)


def reading(data: dict) -> str:
    m, k, lm = data["metrics"], data["teacher_knowledge"]["all"], data["on_first"]
    text = [(f"On its {k['lists']} training lists with an answer, the teacher's first passage holds one in "
             f"{k['teacher hit@1']:.3f} against BM25's {k['BM25 hit@1']:.3f} and MiniLM's {k['MiniLM hit@1']:.3f}: "
             + ("it knows more than BM25 and than MiniLM." if k["teacher hit@1"] > k["BM25 hit@1"] else
                "it does not know more than BM25."))]
    for key in ("ranker", "ranker_from_answers"):
        if key not in m:
            continue
        one, five = _paired(data, key, "BM25")["Top-1"], _paired(data, key, "BM25")["Top-5"]
        start = "from MiniLM with a fresh head" if key == "ranker" else "from the answer-trained ranker"
        text.append(f"The ranker that learnt its scores {start} re-ranks BM25's top 20 to Top-1 {m[key]['Top-1']:.3f} "
                    f"(BM25 {m['BM25']['Top-1']:.3f}; {_diff(one)} paired, {_held(one)}) and Top-5 "
                    f"{m[key]['Top-5']:.3f} ({_diff(five)}, {_held(five)}) on {data['questions']:,} dev questions.")
        if key == "ranker_from_answers" and (p := _paired(data, key, "answer ranker")):
            text.append(f"Against its start (Top-1 {m['answer ranker']['Top-1']:.3f}): {_diff(p['Top-1'])}, "
                        f"{_held(p['Top-1'])}.")
        if (p := _paired(data, "LM", key)):
            text.append(f"On the first {data['lm_questions']} questions the LM itself reaches Top-1 "
                        f"{lm['LM']['Top-1']:.3f} against this ranker's {lm[key]['Top-1']:.3f} (LM minus ranker "
                        f"{_diff(p['Top-1'])}).")
    best = max((key for key in ("ranker", "ranker_from_answers", "answer ranker") if key in m),
               key=lambda key: m[key]["Top-1"])
    text.append(f"Targets (issue 14): Top-1 >= 0.85 for a ranker: the best here, {systems(data)[best].split(',')[0]}, "
                + ("meets it." if m[best]["Top-1"] >= 0.85 else f"is {0.85 - m[best]['Top-1']:.3f} short."))
    return " ".join(text)


def markdown(data: dict) -> str:
    from distillir.evaluation.report import format_table

    env, t, named = data["environment"], data["teacher"], systems(data)
    lm = (data.get("lm") or {}).get("model", "SmolLM2-135M-Instruct (packaged GGUF, bf16 where native)")
    rows = [{"system": named[key], **{k: data["metrics"][key].get(k) for k in KEYS}}
            for key in named if key in data["metrics"]]
    first = [{"system": named[key].split(", re-ranking")[0], **{k: data["on_first"][key].get(k) for k in KEYS}}
             for key in named if key in data["on_first"]]
    k = data["teacher_knowledge"]
    know = [{"lists": f"{label} ({k[part]['lists']})", **{name: f"{k[part][o + ' hit@1']:.3f} / {k[part][o + ' MRR']:.3f}"
                                                         for o, name in (("teacher", "teacher"), ("BM25", "BM25"),
                                                                         ("MiniLM", "MiniLM"))}}
            for part, label in (("all", "all lists with an answer"), ("bm25_first_wrong", "BM25's first holds none"))]
    paired = [{"comparison": f"{p['second']} - {p['first']}", "metric": m, "difference": v["mean_diff"],
               "± (95%)": v["half_width"], "better": v["better"], "worse": v["worse"]}
              for p in data["paired"] for m, v in p.items() if m.startswith("Top-")]
    minutes = (lambda s: f"{s / 60:.0f} min" if isinstance(s, (int, float)) else "?")
    steps = next(iter(data["rankers"].values()))["steps"]  # one schedule per result (bench/ranker_lm.py --steps)
    students = "; ".join(f"`{key}` from {r['start']}, {r['steps']} steps" for key, r in data["rankers"].items())
    walls = ", ".join(f"{key} training {minutes(r.get('train_wall_s'))}" for key, r in data["rankers"].items())
    return "\n".join([
        (f"# A cross-encoder that learns a causal LM's scores ({(data.get('lm') or {}).get('label', 'SmolLM2')}"
         f"{'' if steps == 250 else f', {steps} steps'}), re-ranking BM25 (squad-open)"), "",
        (f"Run {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. Teacher: {lm} scoring log p(question | passage) over the lists of {t['questions']:,} seeded training "
         f"questions (MiniLM's top 10 merged with BM25's, the first 10 in RRF order; `{t['config']}` with "
         f"`{' '.join(t['sets'])}`). Students (`{next(iter(data['rankers'].values()))['config']}`'s schedule), "
         f"learning the teacher's z-scored scores (x5) by KL over each list (`teacher.scores`), 4 lists of 10 a "
         f"step: {students}. No relevance label is read for training; the LM-taught steps read no answer either "
         "(the answer-trained start did: answer strings, distant supervision). Answers and gold paragraphs are read "
         "to evaluate. Top-k: answer recall; MRR@10 / nDCG@10: the gold paragraph."), "",
        format_table(rows, ["system", *KEYS]), "",
        f"The same systems on the first {data['lm_questions']} of these questions, beside the teacher itself:", "",
        format_table(first, ["system", *KEYS]), "",
        "What the teacher knows on its training lists (hit@1 / MRR of the first passage holding an answer):", "",
        format_table(know), "",
        "Paired per-question differences, 95% normal interval:", "",
        format_table(paired), "",
        reading(data), "",
        (f"Wall time: teacher scoring {minutes(t.get('scoring_wall_s'))} (fid-kd's teacher stage), {walls}."
         + (f" {data['note']}" if data.get("note") else "")), "",
        f"Reproduce: `{data['command']}`", ""])
