"""The report of a run directory: `report.md` with the evaluated systems side by side (the baseline, each
round, the trained model) and PNG plots beside it (training loss and learning rate of every phase, recall
against k for every system in the table, metrics per round). Built from the files a run writes
(results.json, metrics.json, log.jsonl, config.yaml) only, so `distillir report RUN_DIR` renders it again
at any time, and a run cut short gets a report of what it has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from distillir.evaluation.report import format_table
from distillir.utils.io import atomic_write

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
METRIC_KEY = re.compile(r"^(Top-\d+|nDCG@\d+|MRR@\d+|R@\d+|MAP|EM|F1)$")
_ORDER = ("Top-", "nDCG@", "MRR@", "R@", "MAP", "EM", "F1")
PRIMARY = ("Top-5", "nDCG@10", "MRR@10", "EM")
_NAMES = {"start_metrics": "start", "baseline_metrics": "baseline (before training)", "baseline": "baseline (before training)",
          "metrics": "trained", "trained": "trained"}


def _metric_order(key: str) -> tuple:
    group = next((i for i, p in enumerate(_ORDER) if key.startswith(p)), len(_ORDER))
    number = re.search(r"(\d+)$", key)
    return group, int(number.group(1)) if number else 0


def _label(path: tuple[str, ...]) -> str:
    parts = [p for p in path if p not in ("metrics", "eval")] or list(path[-1:])
    return " / ".join(_NAMES.get(p, p) if len(parts) == 1 else p for p in parts)


def find_metrics(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict]]:
    """Every dict holding two or more retrieval/QA metrics, with the path of keys that leads to it. A list of
    rounds contributes `round N` (its own "round" field, else its position from 1)."""
    if isinstance(obj, dict):
        metrics = {k: v for k, v in obj.items() if METRIC_KEY.match(str(k)) and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if len(metrics) >= 2:
            return [(path, metrics)]
        return [found for k, v in obj.items() for found in find_metrics(v, (*path, str(k)))]
    if isinstance(obj, list):
        out = []
        for i, v in enumerate(obj):
            tag = f"round {v.get('round', i + 1)}" if isinstance(v, dict) and path[-1:] == ("rounds",) else str(i)
            out += find_metrics(v, (*path[:-1], tag) if path[-1:] == ("rounds",) else (*path, tag))
        return out
    return []


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect(run_dir: Path) -> dict[str, Any]:
    """What a report shows, read from the run directory: systems and their metrics, logs, settings."""
    run_dir = Path(run_dir)
    rows, seen = [], set()
    for name in ("results.json", "metrics.json"):
        data = _read(run_dir / name)
        found = find_metrics(data) if data is not None else []
        keys = [json.dumps(metrics, sort_keys=True) for _, metrics in found]
        # metrics.json mostly repeats results.json: only what the first file lacks is added from it.
        rows += [{"system": _label(path), "metrics": metrics} for (path, metrics), key in zip(found, keys)
                 if key not in seen]
        seen.update(keys)
    logs = {}
    for log in sorted(run_dir.rglob("log.jsonl")):
        lines = [_read_line(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        phase = log.parent.relative_to(run_dir).as_posix()
        logs["training" if phase == "." else phase] = [r for r in lines if isinstance(r, dict)]
    results = _read(run_dir / "results.json") or {}
    return {"rows": rows, "logs": logs, "recipe": results.get("recipe"), "complete": (run_dir / "results.json").is_file()}


def _read_line(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None  # a line cut short by a kill


def round_series(rows: list[dict], metric: str) -> dict[str, list[tuple[int, float]]]:
    """{quantity: [(round, value)]} for systems labelled `round N / quantity`."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        m = re.match(r"^round (\d+) / (.+)$", row["system"])
        if m and metric in row["metrics"]:
            series.setdefault(m.group(2), []).append((int(m.group(1)), row["metrics"][metric]))
    return {k: sorted(v) for k, v in series.items()}


def render_run_report(run_dir: str | Path, title: str | None = None) -> Path:
    """Write run_dir/report.md and run_dir/plots/*.png; returns the report's path."""
    from distillir.evaluation.plots import plot_recall_at_k, plot_rounds, plot_training, plotting_available

    run_dir = Path(run_dir)
    info = collect(run_dir)
    rows = info["rows"]
    lines = [f"# {title or (info['recipe'] or 'distillir') + ' run'}: {run_dir.name}", "",
             f"Run directory `{run_dir}`" + ("" if info["complete"] else " (not finished: what it has so far)") +
             "; settings in `config.yaml`, raw numbers in `results.json` / `metrics.json`, training logs in "
             "`log.jsonl`. Render again with `distillir report " + str(run_dir) + "`.", ""]
    if rows:
        keys = sorted({k for r in rows for k in r["metrics"]}, key=_metric_order)
        lines += ["## Evaluated systems, side by side", "",
                  format_table([{"system": r["system"], **r["metrics"]} for r in rows], ["system", *keys]), ""]
    else:
        lines += ["No evaluation in this run (set the config's `eval` section to evaluate).", ""]
    if info["logs"]:
        table = [{"phase": name, "steps": (log[-1].get("step") if log else None),
                  "first loss": next((r.get("loss") for r in log if "loss" in r), None),
                  "last loss": next((r.get("loss") for r in reversed(log) if "loss" in r), None)}
                 for name, log in info["logs"].items()]
        lines += ["## Training", "", format_table(table, ["phase", "steps", "first loss", "last loss"]), ""]
    plots = run_dir / PLOTS_DIR
    if plotting_available():
        made = [("Training loss and learning rate", plot_training(info["logs"], plots / "training.png")),
                ("Recall against k", plot_recall_at_k(rows, plots / "recall_at_k.png"))]
        metric = next((m for m in PRIMARY if any(m in r["metrics"] for r in rows)), None)
        if metric is not None:
            made.append((f"{metric} per round", plot_rounds(round_series(rows, metric), metric, plots / "rounds.png")))
        for caption, path in made:
            if path is not None:
                lines += [f"## {caption}", "", f"![{caption}]({PLOTS_DIR}/{path.name})", ""]
    else:
        lines += [("(Plots: install matplotlib, `pip install distillir[report]`, then `distillir report "
                  f"{run_dir}`.)"), ""]
    report = run_dir / REPORT_FILE
    with atomic_write(report) as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return report
