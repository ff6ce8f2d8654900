"""Markdown for bench/re2g.py's results (bench/results/re2g.md)."""

from __future__ import annotations


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else "?"


def _claims_table(claims: list[dict]) -> list[dict]:
    return [{"claim (second - first, per question)": c["claim"], "EM diff": c["EM"]["mean_diff"],
             "EM ±": c["EM"]["half_width"], "F1 diff": c["F1"]["mean_diff"], "F1 ±": c["F1"]["half_width"],
             "better / worse (F1)": f"{c['F1']['better']} / {c['F1']['worse']}", "at this scale": c["held"]}
            for c in claims]


def reading(data: dict) -> str:
    t = {r["system"]: r for r in data["table"]}
    rows = data["table"]
    best = max(rows, key=lambda r: r["F1"])
    held = [c["claim"] for c in data["claims"] if c["held"] == "held"]
    other = [f"{c['claim']} ({c['held']}: F1 {c['F1']['mean_diff']:+.3f} ± {c['F1']['half_width']:.3f})"
             for c in data["claims"] if c["held"] != "held"]
    start, kd = data["all_dev"]["start"], data["all_dev"]["kd"]
    e_steps = data["e2e"]["steps"]
    gold = data["gold_reference"]
    text = [(f"The generator bounds every row: reading the gold paragraph alone it answers F1 {gold['F1']:.3f} (EM "
             f"{gold['EM']:.3f}), and its best row here is F1 {best['F1']:.3f} (EM {best['EM']:.3f}, {best['system']}), "
             "while the passages it reads hold an answer string far more often (Top-5 in the table): a 135M LM, "
             "untrained, answering from a two-example prompt, loses most of what separates the retrievers.")]
    if held:
        text.append("Held beyond the interval: " + "; ".join(held) + ".")
    if other:
        text.append("Not held at this scale: " + "; ".join(other) + ".")
    text.append(f"The query encoder after online KD, on all {start.get('queries', 10570):,} dev questions: Top-1 "
                f"{start['Top-1']:.3f} -> {kd['Top-1']:.3f}, Top-5 {start['Top-5']:.3f} -> {kd['Top-5']:.3f}, "
                f"Top-20 {start['Top-20']:.3f} -> {kd['Top-20']:.3f}" + (
                    f": {e_steps} steps move it by less than a hundredth either way, no gain over its start."
                    if max(abs(kd[k] - start[k]) for k in ("Top-1", "Top-5", "Top-20")) < 0.01 else "."))
    text += _clipping(data)
    text += _seed_spread(data)
    del t
    return " ".join(text)


def _clipping(data: dict) -> list[str]:
    """Why KD can cost the re-ranker: one global gradient-norm clip over the re-ranker and the query tower."""
    logs, clip = data["e2e"].get("train_log") or {}, data["e2e"].get("max_grad_norm")
    if not clip or not all(logs.get(n) for n in ("kd", "frozen")):
        return []
    mean = {n: sum(r["grad_norm"] for r in logs[n]) / len(logs[n]) for n in ("kd", "frozen")}
    text = (f"Both runs train the same re-ranker from the same start under one gradient-norm clip ({clip}) over "
            f"every trained parameter; the total norm before clipping averages {mean['kd']:.1f} with KD (the query "
            f"tower's alpha T^2 KL term included) against {mean['frozen']:.1f} without, over the logged steps, so "
            f"with KD the re-ranker's gradient is scaled down about {mean['kd'] / mean['frozen']:.1f}x more.")
    move = data["e2e"].get("ranker_movement")
    if move:
        text += (" Under AdamW a uniformly scaled gradient barely changes the step, and the re-rankers moved alike: "
                 "L2 distance from the start ranker " + ", ".join(f"{n} {d:.3f}" for n, d in move["from_start"].items())
                 + "; between the runs' re-rankers " + ", ".join(f"{k} {d:.3f}" for k, d in move["between"].items())
                 + " (a distance near each run's own movement means two runs ended at unrelated points: with the "
                 "query tower trained or not, the dropout masks and the candidates read at evaluation differ too, a "
                 "spread that one seed per run and the paired per-question interval do not measure).")
    f1 = {r["run"]: r["F1"] for r in data["table"] if r["system"].startswith("Re2G")}
    test = next((c for c in data["claims"] if c["first"].startswith("Re2G end to end with online KD")
                 and c["second"].endswith("clipped alone")), None)
    if "kd-clip" not in f1 or test is None:
        return [text[:-1] + ": a likely reason the KD run's re-ranker gains less, not isolated here (clipping the "
                "two parts apart would test it)."]
    d = test["F1"]
    if test["held"] == "held":
        why = "so the shared clip explains at least part of what KD cost"
    elif test["held"] == "reversed":
        why = "so clipping the parts apart makes KD worse still: the shared clip is not what KD cost"
    else:
        why = "no measurable change: the shared clip does not explain what KD cost at this scale"
    return [text, (f"Clipping each part alone (`e2e.trainer.clip_per_group: true`, the third end-to-end run) tests "
                   f"it: F1 {f1['kd-clip']:.3f} against {f1['kd']:.3f} under the shared clip "
                   f"({d['mean_diff']:+.3f} ± {d['half_width']:.3f}) and {f1['frozen']:.3f} without KD; {why}.")]


def _seed_spread(data: dict) -> list[str]:
    """The frozen run repeated with another training seed: how far one config's rows move between seeds."""
    spread = next((c for c in data["claims"] if "training seed 2" in c["claim"]), None)
    kd = next((c for c in data["claims"] if c["claim"] == "end to end with KD beats end to end without"), None)
    if spread is None:
        return []
    d = spread["F1"]["mean_diff"]
    text = (f"The frozen run repeated with training seed 2 (same data, other dropout masks and example order) moves F1 "
            f"by {d:+.3f} ± {spread['F1']['half_width']:.3f}")
    if kd is not None:
        k = kd["F1"]["mean_diff"]
        text += (f": KD's {k:+.3f} against the frozen run is "
                 + ("within" if abs(k) <= abs(d) else "beyond") + " what a second seed of one config moves, so "
                 + ("one seed per run cannot tell KD's effect from run-to-run spread here." if abs(k) <= abs(d)
                    else "it is more than seed-to-seed spread (two seeds; more would bound the spread).")
                 )
    return [text if text.endswith(".") else text + "."]


def render(data: dict) -> str:
    from distillir.evaluation.report import format_table

    env, e = data["environment"], data["e2e"]
    table = [{"system": r["system"], "EM": r["EM"], "F1": r["F1"], "Top-1": r["Top-1"], "Top-5": r["Top-5"],
              "questions": r["questions"]} for r in data["table"]]
    all_dev = [{"query encoder": f"MiniLM, {k}", **{m: v.get(m) for m in ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10")}}
               for k, v in data["all_dev"].items()]
    stages = "; ".join(f"{n}: " + ", ".join(f"{s} {_minutes(w)}" for s, w in st.items()) for n, st in data["stages"].items())
    return "\n".join([
        "# Re2G on squad-open: retrieve, re-rank, generate with a causal LM that reads", "",
        (f"Rendered {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}), torch {env.get('torch')}. `{data['config']}`: candidates are BM25's top 8 "
         "merged with all-MiniLM-L6-v2's top 8; the re-ranker is the cross-encoder trained from question-answer pairs "
         f"alone (`{data['ranker']}`, bench/ranker_answers.py); the generator is SmolLM2-135M-Instruct (packaged "
         "GGUF, bf16, frozen) reading each of the top 5 alone with a two-example plain prompt, its answer "
         "RAG-token-decoded (greedy) with the re-ranker's softmax as the passage weights; end-to-end training "
         f"({e['steps']} steps x {e['batch']} of {e['questions']} seeded training questions) trains the re-ranker through RAG-sequence marginal likelihood "
         "and, with KD, the query tower by alpha T^2 KL (0.9, 10). No relevance label is read for training. "
         f"Stage times: {stages}."), "",
        f"## What the generator reads and answers ({e['eval_questions']:,} seeded dev questions)", "",
        "EM / F1 of the generated answer; Top-k: an answer string in the first k passages it reads (answer recall).", "",
        format_table(table), "",
        (f"Reference, not a system: the same generator reading each question's gold paragraph alone (the qrels, read "
         f"only here) answers EM {data['gold_reference']['EM']:.3f} / F1 {data['gold_reference']['F1']:.3f} on "
         f"{data['gold_reference']['queries']:,} of the questions: its answers with perfect retrieval."), "",
        "## The paper's claims at this scale, and what end-to-end training alone adds (paired per question, 95% normal interval)", "",
        format_table(_claims_table(data["claims"])), "",
        "## The query encoder after online KD (all dev questions)", "",
        format_table(all_dev), "",
        *([f"Not measured yet: the {', '.join(data['runs_missing'])} run (its rows and claims are left out).", ""]
          if data.get("runs_missing") else []),
        "## Reading", "", reading(data), "",
        "## Command", "", "```", data["command"], "```"])
