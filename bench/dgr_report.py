"""Markdown for bench/dgr.py's results (bench/results/dgr.md)."""

from __future__ import annotations

from dgr import KEYS


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"


def reading(data: dict) -> str:
    rows = {r["key"]: r for r in data["rows"]}
    bm25, minilm = rows["bm25"]["nDCG@10"], rows["minilm"]["nDCG@10"]
    trained = [r for r in data["rows"] if r["labels_used"]]
    text = []
    know = data["teacher_knowledge"]["all"]
    text.append(f"The teacher orders the training lists better than BM25 does (gold first {know['teacher']['Top-1']:.3f} "
                f"vs {know['BM25']['Top-1']:.3f}, MRR {know['teacher']['MRR']:.3f} vs {know['BM25']['MRR']:.3f})"
                if know["teacher"]["MRR"] > know["BM25"]["MRR"] else
                f"The teacher does not order the training lists better than BM25 (gold first {know['teacher']['Top-1']:.3f} "
                f"vs {know['BM25']['Top-1']:.3f}, MRR {know['teacher']['MRR']:.3f} vs {know['BM25']['MRR']:.3f})")
    sample = data["teacher_knowledge"]["sample"]
    student, teacher = sample["untrained student"]["MRR"], sample["teacher"]["MRR"]
    text[-1] += (f"; on {sample['teacher']['lists']} of them the untrained student's identifier likelihoods reach MRR "
                 f"{student:.3f} against the teacher's {teacher:.3f}.")
    if teacher <= student:
        text.append("So this teacher knows no more than the student it teaches: whatever a list term adds over plain "
                    "cannot be the teacher's knowledge of the order, only the contrast of the gold identifier against "
                    "the list's negatives that every list term carries. A teacher that knows (a trained re-ranker, "
                    "or a causal LM's claim likelihood through `teacher.scores`) is what this benchmark needs next.")
    if trained:
        best = max(trained, key=lambda r: r["nDCG@10"])
        text.append(f"The best generative row, {best['system']}, reaches nDCG@10 {best['nDCG@10']:.3f} from the "
                    f"untrained LM's {rows['untrained']['nDCG@10']:.3f}: far below BM25 ({bm25:.3f}) and MiniLM "
                    f"({minilm:.3f}) at {data['student']['steps']} steps of batch {data['student']['batch']} (under one "
                    "pass over the corpus's indexing examples), the generative retriever has not yet learnt the corpus."
                    if best["nDCG@10"] < bm25 else
                    f"The best generative row, {best['system']}, reaches nDCG@10 {best['nDCG@10']:.3f}, BM25 {bm25:.3f}.")
    held = [c for c in data["claims"] if c["held"] == "held"]
    other = [c for c in data["claims"] if c["held"] != "held"]
    if held:
        text.append("Held beyond the interval: " + "; ".join(
            f"{c['claim']} ({c['nDCG@10']['mean_diff']:+.3f} ± {c['nDCG@10']['half_width']:.3f})" for c in held) + ".")
    if other:
        text.append("Not shown at this scale: " + "; ".join(
            f"{c['claim']} ({c['nDCG@10']['mean_diff']:+.3f} ± {c['nDCG@10']['half_width']:.3f})" for c in other) + ".")
    if data["runs_missing"]:
        text.append("Not run yet: " + ", ".join(data["runs_missing"]) + " (partial render).")
    return " ".join(text)


def render(data: dict) -> str:
    from distillir.evaluation.report import format_table

    env, s = data["environment"], data["student"]
    table = [{"system": r["system"], **{k: r.get(k) for k in KEYS}, "relevance labels": "train qrels" if r["labels_used"]
              else "none"} for r in data["rows"]]
    know = [{"order of the training lists": k, "lists": v["lists"], "gold first": v["Top-1"], "gold MRR": v["MRR"]}
            for part in ("all", "sample") for k, v in data["teacher_knowledge"][part].items()
            if part == "all" or k == "untrained student"]
    claims = [{"claim (second - first, per claim)": c["claim"], "nDCG@10 diff": c["nDCG@10"]["mean_diff"],
               "±": c["nDCG@10"]["half_width"], "better / worse": f"{c['nDCG@10']['better']} / {c['nDCG@10']['worse']}",
               "at this scale": c["held"]} for c in data["claims"]]
    first = next(r for r in data["rows"] if r.get("stages_wall_s"))
    walls = f"teacher {_minutes(first['stages_wall_s'].get('teacher'))} (once, shared by every variant); " + "; ".join(
        f"{r['key']}: student {_minutes((data['train'].get(r['key']) or {}).get('elapsed'))}, search "
        f"{_minutes(r['stages_wall_s'].get('eval'))}" for r in data["rows"] if r.get("stages_wall_s"))
    base_walls = ", ".join(f"{r['key']} {_minutes(r['wall_s'])}" for r in data["rows"] if r.get("wall_s"))
    return "\n".join([
        "# DGR on SciFact: a causal LM writing abstract titles, distilled from a cross-encoder's ranking", "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. `{data['config']}`: the student is "
         f"SmolLM2-135M-Instruct (packaged GGUF; its last {s['train_layers']} layers train, bf16 autocast where "
         f"native) writing an abstract's title (first {s['docid_max_length'] - 1} tokens, unique under a prefix tree "
         f"of the 5,183 abstracts) after the prompt {s['prompt']!r}; {s['steps']} steps of batch {s['batch']} for every "
         "variant, the same example order (train claims' teacher-ordered lists mixed with one indexing example per "
         "abstract: its first 48 words -> its identifier). The teacher is MiniLM with a fresh head trained 60 steps "
         "with listwise CE on BM25's top 20 of the 809 train claims (gold from the train qrels), then scoring those "
         f"lists. Evaluation: constrained beam search ({s['beams']} beams) on the {data['queries']} test claims."),
        "", format_table(table), "",
        "What the teacher knows, on the training lists (BM25's top 20; gold = the train qrels):", "",
        format_table(know), "", format_table(claims) if claims else "", "",
        reading(data), "",
        f"Wall time: {walls}; baselines: {base_walls}." + (f" {data['note']}" if data.get("note") else ""), "",
        f"Reproduce: `{data['command']}`", ""])
