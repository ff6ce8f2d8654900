"""Shared helpers for the benchmark scripts: environment capture and writing results."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import resource
import shlex
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
WORK_DIR = BENCH_DIR / "work"  # git-ignored: logs, run dirs, scratch data


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU features that decide bf16/int8 speed (AMX, AVX-512 BF16/VNNI)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ["avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"]
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def keep_environment(res: dict) -> None:
    """Record the machine a run started on, once: a resumed run adds the date and load of each later session
    under "resumed"; re-rendering a complete run changes nothing."""
    if "environment" not in res:
        res["environment"] = environment()
    elif not res.get("complete"):
        res.setdefault("resumed", []).append(
            {"date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "loadavg_at_start": list(os.getloadavg())})


def machine_line(env: dict) -> str:
    """'Run DATE on CPU (N logical CPUs; flags ...), torch V (T threads), 1-min load L at start' for a report."""
    return (f"Run {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
            f"{', '.join(env['cpu_flags'])}), torch {env.get('torch', '?')} ({env.get('torch_threads', '?')} threads), "
            f"1-min load {env['loadavg_at_start'][0]:.1f} at start")


def environment() -> dict:
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "total_memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    for mod in ("transformers", "sentence_transformers", "bm25s", "rank_bm25", "faiss", "numpy"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "installed")
        except ImportError:
            env[mod] = None
    try:
        from importlib.metadata import version

        env["distillir"] = version("distillir")
        env["rank_bm25"] = env["rank_bm25"] if env.get("rank_bm25") not in (None, "installed") else version("rank-bm25")
    except Exception as e:  # noqa: BLE001 - versions are informative only
        env["version_lookup_error"] = repr(e)
    return env


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_hwm_mb() -> float:
    """Peak RSS of this process image (VmHWM). Unlike getrusage's ru_maxrss, which Linux carries across
    fork+exec (a child spawned by a big parent starts with the parent's peak), it is reset by exec."""
    return _status_mb("VmHWM")


def command_line(drop: tuple[str, ...] = ("--note", "--only")) -> str:
    """How this benchmark was started, from the repository root; options in `drop` (annotations, partial
    reruns) and their values are left out, so the line reproduces the whole result."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if a.startswith("--"):
            skip = a.split("=", 1)[0] in drop
        if not skip:
            args.append(a)
    return ".venv/bin/python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], BENCH_DIR.parent), *args])


def paired_difference(first: dict, second: dict) -> dict:
    """Per query (the keys of `first`), second - first: the mean, its 95% normal half-width (paired, so tighter
    than the two means' own intervals) and how many queries went each way."""
    d = [second[q] - first[q] for q in first]
    mean = math.fsum(d) / len(d)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in d) / max(len(d) - 1, 1))
    return {"mean_diff": round(mean, 4), "half_width": round(1.96 * sd / math.sqrt(len(d)), 4), "queries": len(d),
            "better": sum(v > 0 for v in d), "worse": sum(v < 0 for v in d)}


def per_query(run, ds, metric: str) -> dict[str, float]:
    """Each eval query's Top-k answer hit (squad-open) or qrels metric (SciFact)."""
    if metric.startswith("Top-"):
        from distillir.data.answers import AnswerMatcher

        k, matcher = int(metric.split("-")[1]), AnswerMatcher(ds.corpus)
        return {q: float(any(matcher.hits(a, [p for p, _ in run.get(q, [])[:k]])))
                for q, a in zip(ds.queries.ids, ds.queries.answers)}
    from distillir.evaluation.metrics import evaluate_qrels

    scored = evaluate_qrels(run, ds.qrels, [metric], per_query=True)["per_query"]
    return {q: v[metric] for q, v in scored.items()}


# Gemma-3-270M (base): the GGUF the gemma3 packages write (bench/lm_teacher.py's docstring), and the overrides
# that make a shipped SmolLM2 config read with it (a base model: plain prompts, no chat template).
GEMMA = WORK_DIR / "models" / "gemma-3-270m-Q4_K_M.gguf"
GEMMA_SETS = [f"reader.model={GEMMA}", "reader.lm.prompts.chat=false"]


def lm_rerank(config, run, ds):
    """A fid-kd config's LM (its reader and prompt) scoring every (question, passage) of `run` by question
    likelihood, as a Run; pairs are cached as scored, so a killed run resumes."""
    from distillir.data.run import Run
    from distillir.readers.fid_data import examples_from_run
    from distillir.recipes.common.reading import build_lm_reader
    from distillir.teachers.lm_likelihood import default_cache, lm_teacher_scores

    reader = build_lm_reader(config.reader, config.teacher.aggregation)
    examples = [ex for ex in examples_from_run(run, ds.queries, ds.corpus) if ex["ctxs"]]
    scores = lm_teacher_scores(reader, examples, "question_likelihood", batch_size=config.reader.batch_size,
                               cache=default_cache(reader), progress="LM re-ranking")
    return Run({q: list(zip(pids, vals)) for q, (pids, vals) in scores.items()}, name="lm")


def verdict(diff: dict) -> str:
    """A paired_difference's reading: "held" (interval above 0), "reversed" (below 0) or "not shown"."""
    if diff["mean_diff"] - diff["half_width"] > 0:
        return "held"
    return "reversed" if diff["mean_diff"] + diff["half_width"] < 0 else "not shown"


SUMMARY_FIELDS = ("system", "dataset", "split", "labels_used", "metrics")


def summary_row(system: str, dataset: str, split: str, labels_used: bool, metrics: dict | None,
                keys: tuple[str, ...]) -> dict:
    """One row of a result's top-level `summary`: the metrics named in `keys` (as the tables name them) that
    this system has, in that order."""
    metrics = metrics or {}
    return {"system": system, "dataset": dataset, "split": split, "labels_used": bool(labels_used),
            "metrics": {k: metrics[k] for k in keys
                        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)}}


def check_summary(name: str, data: dict) -> None:
    """Every results JSON carries `summary`: a list of rows {system, dataset, split, labels_used, metrics}."""
    rows = data.get("summary")
    if not isinstance(rows, list):
        raise ValueError(  # noqa: TRY004 - a results file's content, not an argument's type
            f"{name}.json: top-level 'summary' must be a list of rows, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        missing = [f for f in SUMMARY_FIELDS if f not in row] if isinstance(row, dict) else list(SUMMARY_FIELDS)
        if missing:
            raise ValueError(f"{name}.json: summary[{i}] lacks {', '.join(missing)}")
        if not isinstance(row["labels_used"], bool) or not isinstance(row["metrics"], dict):
            raise ValueError(f"{name}.json: summary[{i}] ({row['system']}): labels_used must be true/false and "  # noqa: TRY004
                             "metrics a mapping")
        bad = [k for k, v in row["metrics"].items() if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if bad:
            raise ValueError(f"{name}.json: summary[{i}] ({row['system']}): non-numeric metrics {', '.join(bad)}")


def summary_plots(name: str, data: dict, max_systems: int = 12) -> list[Path]:
    """Recall against k of the summary rows, one PNG per dataset (results/plots/NAME-DATASET.png); none
    without matplotlib or cut-off metrics. At most `max_systems` lines each (the table's first rows)."""
    from distillir.evaluation.plots import plot_recall_at_k, plotting_available

    if not plotting_available():
        return []
    made = []
    for dataset in dict.fromkeys(r["dataset"] for r in data["summary"]):
        rows = [r for r in data["summary"] if r["dataset"] == dataset][:max_systems]
        path = plot_recall_at_k(rows, RESULTS_DIR / "plots" / f"{name}-{dataset}.png")
        if path is not None:
            made.append(path)
    return made


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    check_summary(name, data)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plots = summary_plots(name, data)
    if plots:
        markdown = markdown.rstrip() + "\n\n## Recall against k (summary rows)\n\n" + "\n\n".join(
            f"![{p.stem}](plots/{p.name})" for p in plots) + "\n"
    json_path = RESULTS_DIR / f"{name}.json"
    md_path = RESULTS_DIR / f"{name}.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(json_path)
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    tmp.replace(md_path)
    return json_path, md_path
