"""The LM-teacher benchmark's report: what the teacher knows, its cost per path, and the LM as a re-ranker."""

from __future__ import annotations

TEACHERS = ("pdist", "question_likelihood")


def _f(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(res: dict) -> str:
    env = res.get("environment", {})
    label = res.get("label", "the LM")
    out = [f"# A causal LM as the teacher: {label} on squad-open", "",
           (f"Model: {res.get('model')}. {env.get('cpu_model', '?')} ({', '.join(env.get('cpu_flags', []))}), "
           f"{env.get('logical_cpus', '?')} logical CPUs, load average at start "
           f"{', '.join(f'{x:.1f}' for x in env.get('loadavg_at_start', []) or [])}, {env.get('date_utc', '?')}"
            + "".join(f"; re-run {r.get('step', '')} {r['date_utc']} at load "
                      f"{', '.join(f'{x:.1f}' for x in r['loadavg_at_start'])}" for r in res.get("resumed", []))
            + ". Scores in the cost table come from one run each, warmed up (a fresh model's first forwards build "
              "its kernels)."), ""]
    knows = res.get("knows")
    if knows:
        out += [(f"## What the teacher knows (training lists: {knows['questions']} seeded squad-open train questions, "
                f"top-{knows['depth']}, each passage read alone, {knows.get('dtype')})"), "",
                ("Answer hit@1 and MRR of the first answer-bearing passage, over the lists holding an answer; "
                "\"own first missed\": the lists whose own first passage holds none."), "",
                "| lists | order | hit@1 | MRR | hit@1, own first missed | lists with an answer | wall s |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for source, found in knows["lists"].items():
            any_teacher = next(iter(found["teachers"].values()), {})
            out.append(f"| {source} | {source}'s own | {_f(found['own']['hit@1'])} | {_f(found['own']['mrr'])} | "
                       f"0.000 | {any_teacher.get('answer_lists', '')} | |")
            for teacher, hits in found["teachers"].items():
                missed = found["teachers_first_missed"][teacher]
                out.append(f"| {source} | {teacher} | {_f(hits['teacher_hit@1'])} | {_f(hits['teacher_mrr'])} | "
                           f"{_f(missed['teacher_hit@1'])} (of {missed['answer_lists']}) | {hits['answer_lists']} | "
                           f"{found['wall_s'].get(teacher, '')} |")
        out.append("")
    cost = res.get("cost")
    if cost:
        out += [(f"## Cost (question likelihood; {cost['pairs']} pairs in {cost['lists']} BM25 lists, and "
                f"{cost['shared_pairs']} pairs over {cost['shared_passages']} passages shared by their questions)"),
                "", "| path | ms / pair | speed-up | tokens / s | Spearman vs plain | top-1 match |",
                "|---|---:|---:|---:|---:|---:|"]
        paths = cost["paths"]
        plain = next(iter(paths.values()))["ms_per_pair"]
        shared_plain = shared_base(paths)
        for name, p in paths.items():
            base = shared_plain if "shared" in name else plain
            out.append(f"| {name} | {p['ms_per_pair']} | {base / p['ms_per_pair']:.2f}x | {p.get('tokens_per_s', '')} | "
                       f"{p['spearman']:.4f} | {p['top1_match']:.3f} |")
        env = cost.get("environment") or res.get("environment") or {}
        out += ["", (f"Speed-ups and agreement of the shared-passage rows are against {shared_label(paths)} "
                "of the same pairs (Spearman over each passage's questions); the others against the plain float32 "
                "forward of the BM25 lists (Spearman over each list). Measured on "
                f"{env.get('cpu_model', '?')} ({', '.join(env.get('cpu_flags', []))}), "
                f"{env.get('torch_threads', '?')} threads, load {_load(env)} at start, {env.get('date_utc', '')}."), ""]
    rerank = res.get("rerank")
    if rerank:
        out += [f"## The LM as a re-ranker of BM25's top-10 ({rerank['questions']} seeded dev questions)", "",
                "| system | Top-1 | Top-5 |", "|---|---:|---:|"]
        out += [f"| {k} | {_f(m['Top-1'])} | {_f(m['Top-5'])} |" for k, m in rerank["metrics"].items()]
        out.append("")
    out += ["## Reading", "", *reading(res), "", "## Command", "",
            f"`{res.get('command', '.venv/bin/python bench/lm_teacher.py')}`", ""]
    return "\n".join(out)


def reading(res: dict) -> list[str]:
    lines = []
    for source, found in ((res.get("knows") or {}).get("lists") or {}).items():
        parts = [f"{t} {h['teacher_hit@1']:.3f}" for t, h in found["teachers"].items()]
        lines.append(f"- {source} lists: the teacher's first passage holds an answer in " + ", ".join(parts)
                     + f" of the lists with one, the list's own first in {found['own']['hit@1']:.3f}.")
    paths = ((res.get("cost") or {}).get("paths")) or {}
    if paths:
        plain = next(iter(paths.values()))["ms_per_pair"]
        good = [f"{k} ({plain / v['ms_per_pair']:.2f}x)" for k, v in list(paths.items())[1:]
                if "shared" not in k and v["spearman"] >= 0.99]
        bad = [f"{k} ({plain / v['ms_per_pair']:.2f}x, Spearman {v['spearman']:.3f})"
               for k, v in list(paths.items())[1:] if "shared" not in k and v["spearman"] < 0.99]
        lines.append("- Cost against the plain forward: within Spearman 0.99 of it: " + (", ".join(good) or "none")
                     + "; below: " + (", ".join(bad) or "none") + ".")
        base, kv = shared_base(paths), [(k, v) for k, v in paths.items() if "KV" in k]
        for k, v in kv:
            lines.append(f"- A passage scored for several questions (question likelihood puts it first) encoded once, "
                         f"{k.rsplit('(', 1)[-1].rstrip(')')}: {base / v['ms_per_pair']:.1f}x {shared_label(paths)} "
                         f"of the same pairs per pair, Spearman {v['spearman']:.4f}, top-1 match {v['top1_match']:.3f}"
                         + (" (the goal: at least 5x at Spearman 0.99: " + (
                             "met" if base / v["ms_per_pair"] >= 5 and v["spearman"] >= 0.99 else "not met") + ")"
                            if "plain" in shared_label(paths) else "") + ".")
    rerank = (res.get("rerank") or {}).get("metrics") or {}
    if rerank:
        bm = rerank.get("BM25 top-10", {})
        lines.append("- Re-ranking BM25's top-10 (pdist reads the gold answers, so it is an upper line, not a "
                     "label-free ranker; question likelihood uses none): " + ", ".join(
                         f"{k.split(' ', 1)[1].replace(' re-ranking BM25 top-10', '')} {m['Top-1']:.3f}/{m['Top-5']:.3f}"
                         for k, m in rerank.items() if k != "BM25 top-10")
                     + f" Top-1/5 against BM25's {bm.get('Top-1', 0):.3f}/{bm.get('Top-5', 0):.3f}.")
    return lines or ["(incomplete)"]


def shared_base(paths: dict) -> float | None:
    """The shared-passage rows' reference: their plain float32 forward (older runs: bf16 batching, no reuse)."""
    return next((v["ms_per_pair"] for k, v in paths.items() if "shared" in k and ("plain" in k or "no reuse" in k)),
                None)


def shared_label(paths: dict) -> str:
    plain = any("shared" in k and "plain" in k for k in paths)
    return "the plain float32 forward" if plain else "bf16 batching without reuse"


def _load(env: dict) -> str:
    load = env.get("loadavg_at_start")
    return f"{load[0]:.2f}" if load else "?"


__all__ = ["TEACHERS", "markdown"]
