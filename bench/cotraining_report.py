"""Co-training benchmark report: the Markdown table and the reading generated from the results' numbers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import verdict

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"scifact": "test", "squad-open": "dev"}
COLUMNS = {
    "scifact": ["system", "nDCG@10", "R@100", "MRR@10", "wall_s", "note"],
    "squad-open": ["system", "Top-1", "Top-5", "Top-20", "MRR@10", "R@20", "wall_s", "note"],
}
PRIMARY = {"scifact": "nDCG@10", "squad-open": "Top-5"}
BM25_REFERENCE = {"scifact": ("BEIR's published BM25 nDCG@10", 0.665)}
# Run order: each comparison's pair back to back, so a run cut short still holds whole comparisons.
ORDER = ["bm25", "minilm", "cross_encoder", "rerank_bm25", "rocketqa_dynamic", "rocketqa_static", "ar2_lambda_0.5",
         "ar2_lambda_0", "hard_negatives", "dpr", "rerank_dpr"]

# (claim, first system, second system): second - first per query, 95% paired interval
CLAIMS = [
    ("RocketQAv2: dynamic beats static (the paper's claim)", "rocketqa_static", "rocketqa_dynamic"),
    ("AR2: adversarial (lambda 0.5) beats pure distillation (lambda 0)", "ar2_lambda_0", "ar2_lambda_0.5"),
    ("AR2 beats plain hard negatives at equal steps (the paper's claim)", "hard_negatives", "ar2_lambda_0.5"),
    ("RocketQAv2 dynamic beats DPR at equal budget", "dpr", "rocketqa_dynamic"),
    ("AR2 beats DPR at equal budget", "dpr", "ar2_lambda_0.5"),
    ("RocketQAv2 dynamic beats its untrained start", "minilm", "rocketqa_dynamic"),
    ("AR2 beats its untrained start", "minilm", "ar2_lambda_0.5"),
    ("RocketQAv2 dynamic beats BM25", "bm25", "rocketqa_dynamic"),
    ("the re-ranker over BM25 beats BM25", "bm25", "rerank_bm25"),
]


def claims_table(res: dict) -> list[str]:
    claims = res.get("claims") or []
    if not claims:
        return []
    metrics = [m for m in claims[0] if m not in ("claim", "first", "second")]
    out = ["## Claims, paired per query", "",
           "| claim (second - first) | " + " | ".join(f"{m} diff | ±" for m in metrics)
           + f" | better / worse ({metrics[-1]}) | at this scale ({metrics[-1]}) |",
           "|---|" + "---:|---:|" * len(metrics) + "---|---|"]
    for c in claims:
        last = c[metrics[-1]]
        out.append(f"| {c['claim']} | " + " | ".join(f"{c[m]['mean_diff']:+.3f} | {c[m]['half_width']:.3f}"
                                                      for m in metrics)
                   + f" | {last['better']} / {last['worse']} | {verdict(last)} |")
    return ["", *out]


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


UNLABELLED = ("bm25", "minilm")  # every other system trains on (or re-ranks with a ranker trained on) qrels


def summary(res: dict) -> list[dict]:
    from _common import summary_row

    ds = res["settings"]["dataset"]
    unlabelled = (*UNLABELLED, "rerank_bm25") if res.get("ranker_unlabelled") else UNLABELLED
    return [summary_row(res["systems"][k]["system"], ds, SPLITS[ds], k not in unlabelled, res["systems"][k],
                        tuple(c for c in COLUMNS[ds] if c not in ("system", "note", "wall_s")))
            for k in ORDER if res["systems"].get(k) is not None and k != "cross_encoder"]


def markdown(res: dict) -> str:
    s = res["settings"]
    ds = s["dataset"]
    cols = COLUMNS[ds]
    rows = [res["systems"][k] for k in ORDER if k in res["systems"] and k != "cross_encoder"]
    env = res.get("environment", {})
    status = "complete" if res.get("complete") else "PARTIAL (rerun the command to continue)"
    start = f", started from a saved re-ranker ({ranker_label(s['ranker']).split('/')[-2]})" if s.get("ranker") else ""
    out = [f"# Retriever-ranker co-training on {ds}{start}", "",
           (f"Run {env.get('date_utc')} on {env.get('cpu_model', 'CPU')}; torch {env.get('torch')}, transformers "
            f"{env.get('transformers')}. Status: {status}."), "",
           (f"Evaluation: {res.get('eval_queries')} {SPLITS[ds]} queries over {res.get('corpus_passages')} passages. "
            f"Training: {s['train_questions'] or 'all'} training queries ({s['denoise_questions']} for RocketQAv2, "
            f"whose denoising re-scores each one's top 20). Every retriever: {s['model'].split('/')[-1]}, "
            f"{s['retriever_steps']} optimizer steps x {s['lists_per_step']} queries x {s['list_size']} passages "
            f"(32/128 query/passage tokens). Re-ranker: the `cross-encoder` recipe, {s['ranker_steps']} steps "
            f"x {s['lists_per_step']} lists of {s['list_size']}, shared by RocketQAv2 and AR2 as their start."
            if not s.get("ranker") else
            f"Re-ranker: the saved cross-encoder `{ranker_label(s['ranker'])}`, shared by RocketQAv2 and AR2 as "
            "their start and re-ranking BM25 and DPR (not trained here"
            + ("; trained from question-answer pairs alone, no relevance labels" if res.get("ranker_unlabelled") else "")
            + ")."), "",
           "| " + " | ".join(cols) + " |",
           "|" + "|".join("---" if c in ("system", "note") else "---:" for c in cols) + "|"]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c), 1 if c == "wall_s" else 3) for c in cols) + " |")
    ce = res["systems"].get("cross_encoder")
    if ce and not s.get("ranker"):
        out += ["", f"Cross-encoder training: {fmt(ce['wall_s'])} s."]
    out += ["", "wall_s: training (if any) + corpus embedding + search + evaluation of that system, on this machine.",
            *[line for note in res.get("notes") or [] for line in ("", note)], *claims_table(res), "", "## Reading", "", reading(res), "", "## Command", "", "```", res["command"], "```", "",
            "Overrides of the shipped configs (configs/*-scifact-cpu.yaml), per recipe run:", ""]
    for name, sets in (res.get("overrides") or {}).items():
        out.append(f"- `{name}`: `{' '.join(sets).replace(str(REPO) + '/', '')}`")  # paths as in the command
    return "\n".join(out)


def ranker_label(path: str) -> str:
    """The path from the repository (bench/work/...), wherever the run's checkout was."""
    return path[path.index("bench/work/"):] if "bench/work/" in path else path.replace(str(REPO) + "/", "")


def reading(res: dict) -> str:
    ds = res["settings"]["dataset"]
    key = PRIMARY[ds]
    sysd = res["systems"]
    parts = []

    def value(k):
        return (sysd.get(k) or {}).get(key)

    bm = value("bm25")
    if bm is None:
        return "No system evaluated yet."
    ref = BM25_REFERENCE.get(ds)
    if ref:
        parts.append(f"BM25 {key} {bm:.3f} here ({ref[0]}: {ref[1]:.3f}).")
    for k, name in (("rocketqa_dynamic", "RocketQAv2 dynamic"), ("rocketqa_static", "RocketQAv2 static"),
                    ("ar2_lambda_0.5", "AR2 lambda=0.5"), ("ar2_lambda_0", "AR2 lambda=0"),
                    ("hard_negatives", "plain hard negatives"), ("dpr", "DPR supervised"),
                    ("minilm", "the untrained MiniLM")):
        v, start = value(k), value("minilm")
        if v is not None:
            vs_start = f", {v - start:+.3f} vs its untrained start" if start is not None and k != "minilm" else ""
            parts.append(f"{name} {v:.3f} ({v - bm:+.3f} vs BM25{vs_start}).")
    for k, source, name in (("rerank_bm25", "bm25", "re-ranking BM25"), ("rerank_dpr", "dpr", "re-ranking DPR")):
        v, first = value(k), value(source)
        if v is not None:
            trained = [value(x) for x in ("rocketqa_dynamic", "ar2_lambda_0.5") if value(x) is not None]
            best = max(trained) if trained else None
            parts.append(f"The cross-encoder {name}: {v:.3f}"
                         + (f" ({v - first:+.3f} vs the run it re-ranks)" if first is not None else "")
                         + (f"; best co-trained retriever {best:.3f}." if best is not None else "."))
    rr, start = value("rerank_bm25"), value("minilm")
    if rr is not None and start is not None and rr < start:
        taught = [value(x) for x in ("rocketqa_dynamic", "rocketqa_static", "ar2_lambda_0.5", "ar2_lambda_0")]
        taught = [v for v in taught if v is not None]
        below = taught and all(v < start for v in taught)
        parts.append(f"The re-ranker is the teacher here, and it ranks worse than the student's start (re-ranking "
                     f"BM25: {rr:.3f} vs the untrained MiniLM's {start:.3f}): "
                     + ("every ranker-taught retriever ends below that start, as distilling a weaker teacher should."
                        if below else "distillation cannot be expected to lift the student above it."))
    elif rr is not None and start is not None:
        taught = [v - start for v in (value(x) for x in ("rocketqa_dynamic", "rocketqa_static", "ar2_lambda_0.5",
                                                           "ar2_lambda_0")) if v is not None]
        plain = [v - start for v in (value(x) for x in ("hard_negatives", "dpr")) if v is not None]
        if taught and plain:
            parts.append(f"The re-ranker ranks above the student's start here (re-ranking BM25: {rr:.3f} vs the "
                         f"untrained MiniLM's {start:.3f}); the ranker-taught retrievers gain {min(taught):+.3f} to "
                         f"{max(taught):+.3f} over that start, the label-trained ones (plain hard negatives, DPR) "
                         f"{min(plain):+.3f} to {max(plain):+.3f} at the same steps.")
    d, st = value("rocketqa_dynamic"), value("rocketqa_static")
    if d is not None and st is not None:
        parts.append(f"Dynamic minus static: {d - st:+.3f}.")
    a, z, h = value("ar2_lambda_0.5"), value("ar2_lambda_0"), value("hard_negatives")
    if a is not None and z is not None:
        parts.append(f"AR2 lambda 0.5 minus lambda 0: {a - z:+.3f}.")
    if a is not None and h is not None:
        parts.append(f"AR2 lambda 0.5 minus plain hard negatives at equal steps: {a - h:+.3f}.")
    by = {}
    for c in res.get("claims") or []:
        metric = [m for m in c if m not in ("claim", "first", "second")][-1]
        by.setdefault(verdict(c[metric]), []).append(f"{c['claim']} ({c[metric]['mean_diff']:+.3f} ± "
                                                       f"{c[metric]['half_width']:.3f} {metric})")
    for word in ("held", "not shown", "reversed"):
        if by.get(word):
            parts.append(f"{word.capitalize()} at this scale: {'; '.join(by[word])}.")
    n = res.get("eval_queries") or 0
    if n and not res.get("claims"):
        parts.append(f"With {n} queries, differences of a point or two are within run-to-run noise; one seed.")
    return " ".join(parts)
