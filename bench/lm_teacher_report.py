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
           f"{', '.join(f'{x:.1f}' for x in env.get('loadavg_at_start', []) or [])}, {env.get('date_utc', '?')}."), ""]
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
        shared_plain = next((v["ms_per_pair"] for k, v in paths.items() if "no reuse" in k), None)
        for name, p in paths.items():
            base = shared_plain if "shared" in name else plain
            out.append(f"| {name} | {p['ms_per_pair']} | {base / p['ms_per_pair']:.2f}x | {p.get('tokens_per_s', '')} | "
                       f"{p['spearman']:.4f} | {p['top1_match']:.3f} |")
        out += ["", ("Speed-ups of the shared-passage rows are against batching the same pairs without reuse "
                "(bfloat16); the others against the plain float32 forward."), ""]
    rerank = res.get("rerank")
    if rerank:
        out += [f"## The LM as a re-ranker of BM25's top-10 ({rerank['questions']} seeded dev questions)", "",
                "| system | Top-1 | Top-5 |", "|---|---:|---:|"]
        out += [f"| {k} | {_f(m['Top-1'])} | {_f(m['Top-5'])} |" for k, m in rerank["metrics"].items()]
        out.append("")
    out += ["## Command", "", f"`{res.get('command', '.venv/bin/python bench/lm_teacher.py')}`", ""]
    return "\n".join(out)


__all__ = ["TEACHERS", "markdown"]
