"""Markdown for bench/ranker_lm.py's result (bench/results/ranker_lm.md)."""

from __future__ import annotations

KEYS = ("Top-1", "Top-5", "Top-20", "MRR@10", "nDCG@10")


def _diff(v: dict) -> str:
    return f"{v['mean_diff']:+.3f} ± {v['half_width']:.3f}"


def _held(v: dict) -> str:
    lo, hi = v["mean_diff"] - v["half_width"], v["mean_diff"] + v["half_width"]
    return "above, beyond the interval" if lo > 0 else "below, beyond the interval" if hi < 0 else "within the interval"


def reading(data: dict) -> str:
    m, k = data["metrics"], data["teacher_knowledge"]["all"]
    one, five = data["paired_vs_bm25"]["Top-1"], data["paired_vs_bm25"]["Top-5"]
    lm = data["on_first"]
    text = [
        (f"On its {k['lists']} training lists with an answer, the teacher's first passage holds one in "
         f"{k['teacher hit@1']:.3f} against BM25's {k['BM25 hit@1']:.3f} and MiniLM's {k['MiniLM hit@1']:.3f}: "
         + ("it knows more than BM25 and than the ranker's start." if k["teacher hit@1"] > k["BM25 hit@1"] else
            "it does not know more than BM25.")),
        (f"The ranker that learnt its scores re-ranks BM25's top 20 to Top-1 {m['ranker']['Top-1']:.3f} (BM25 "
         f"{m['BM25']['Top-1']:.3f}; {_diff(one)} paired, {_held(one)}) and Top-5 {m['ranker']['Top-5']:.3f} "
         f"({_diff(five)}, {_held(five)}), on {data['questions']:,} dev questions."),
        (f"On the first {data['lm_questions']} of them the LM itself reaches Top-1 {lm['LM']['Top-1']:.3f} against "
         f"the ranker's {lm['ranker']['Top-1']:.3f} and BM25's {lm['BM25']['Top-1']:.3f} (LM minus ranker "
         f"{_diff(data['paired_lm_vs_ranker']['Top-1'])}): what the teacher knows and the student has not learnt."),
        ("The student learnt less than its teacher knows: one pass over 1,000 lists of 10 (10,000 pairs, a fresh "
         "head), where the answer-trained ranker (bench/ranker_answers.py) saw 16,000 pairs over 19,129 questions."
         if m["ranker"]["Top-1"] < m["BM25"]["Top-1"] else ""),
        ("Targets (issue 14): above BM25 at Top-1, and Top-1 >= 0.85: "
         + ("met." if m["ranker"]["Top-1"] >= 0.85 else f"{0.85 - m['ranker']['Top-1']:.3f} short of 0.85.")),
    ]
    return " ".join(t for t in text if t)


def markdown(data: dict) -> str:
    from distillir.evaluation.report import format_table

    env, t, r = data["environment"], data["teacher"], data["ranker"]
    rows = [{"system": "BM25 (k1 0.9, b 0.4)", **{k: data["metrics"]["BM25"].get(k) for k in KEYS}},
            {"system": "cross-encoder learning SmolLM2's question likelihood, re-ranking BM25's top 20",
             **{k: data["metrics"]["ranker"].get(k) for k in KEYS}}]
    first = [{"system": name, **{k: data["on_first"][key].get(k) for k in KEYS}}
             for key, name in (("BM25", "BM25"), ("ranker", "the cross-encoder (student)"),
                               ("LM", "SmolLM2 question likelihood (teacher)"))]
    k = data["teacher_knowledge"]
    know = [{"lists": f"{label} ({k[part]['lists']})", **{name: f"{k[part][o + ' hit@1']:.3f} / {k[part][o + ' MRR']:.3f}"
                                                         for o, name in (("teacher", "teacher"), ("BM25", "BM25"),
                                                                         ("MiniLM", "MiniLM"))}}
            for part, label in (("all", "all lists with an answer"), ("bm25_first_wrong", "BM25's first holds none"))]
    paired = [{"comparison": f"{a} - {b}", "metric": m, "difference": v["mean_diff"], "± (95%)": v["half_width"],
               "better": v["better"], "worse": v["worse"]}
              for (a, b, diffs) in (("ranker", "BM25", data["paired_vs_bm25"]), ("LM", "ranker", data["paired_lm_vs_ranker"]))
              for m, v in diffs.items()]
    minutes = (lambda s: f"{s / 60:.0f} min" if isinstance(s, (int, float)) else "?")
    return "\n".join([
        "# A cross-encoder that learns a causal LM's scores, re-ranking BM25 (squad-open)", "",
        (f"Run {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. Teacher: SmolLM2-135M-Instruct (packaged GGUF, "
         f"bf16 where native) scoring log p(question | passage) over the lists of {t['questions']:,} seeded training "
         f"questions (MiniLM's top 10 merged with BM25's, the first 10 in RRF order; `{t['config']}` with "
         f"`{' '.join(t['sets'])}`). Student: `{r['config']}`'s all-MiniLM-L6-v2 with a fresh head, learning the "
         f"teacher's z-scored scores (x5) by KL over each list (`teacher.scores`), {r['steps']} steps x 4 lists of "
         f"10. No relevance label and no answer string is read for training; answers and gold paragraphs are read "
         "to evaluate. Top-k: answer recall; MRR@10 / nDCG@10: the gold paragraph."), "",
        format_table(rows, ["system", *KEYS]), "",
        f"The same systems on the first {data['lm_questions']} of these questions, beside the teacher itself:", "",
        format_table(first, ["system", *KEYS]), "",
        "What the teacher knows on its training lists (hit@1 / MRR of the first passage holding an answer):", "",
        format_table(know), "",
        "Paired per-question differences, 95% normal interval:", "",
        format_table(paired), "",
        reading(data), "",
        (f"Wall time: teacher scoring {minutes(t.get('scoring_wall_s'))} (fid-kd's teacher stage), ranker training "
         f"{minutes(r.get('train_wall_s'))}." + (f" {data['note']}" if data.get("note") else "")), "",
        f"Reproduce: `{data['command']}`", ""])
