"""PNG plots for run reports (matplotlib, optional: without it reports are Markdown only)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from distillir.utils.io import atomic_write

_CUTOFF = re.compile(r"^(Top|R|Recall)@?-?(\d+)$")


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def recall_curves(rows: Sequence[dict], family: str) -> dict[str, list[tuple[int, float]]]:
    """{system: [(k, value)]} for the cut-off metrics of one family ("Top" answer recall, or "R" recall@k)."""
    curves = {}
    for row in rows:
        points = sorted((int(m.group(2)), float(v)) for key, v in row["metrics"].items()
                        if (m := _CUTOFF.match(key)) and m.group(1) == family and isinstance(v, (int, float)))
        if len(points) >= 2:
            curves[row["system"]] = points
    return curves


def plot_recall_at_k(rows: Sequence[dict], path: Path) -> Path | None:
    """Recall against the cut-off k, one line per system (answer recall Top-k and/or recall@k panels)."""
    panels = [(fam, curves) for fam in ("Top", "R") if (curves := recall_curves(rows, fam))]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (family, curves) in zip(axes[0], panels):
        for system, points in curves.items():
            ax.plot([k for k, _ in points], [v for _, v in points], marker="o", label=system)
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("answer recall (Top-k)" if family == "Top" else "recall@k (judged passages)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_training(logs: dict[str, list[dict]], path: Path) -> Path | None:
    """Training loss and learning rate against the step, one line per training phase."""
    logs = {name: rows for name, rows in logs.items() if any("loss" in r for r in rows)}
    if not logs:
        return None
    plt = _pyplot()
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in logs.items():
        points = [(r["step"], r["loss"]) for r in rows if "step" in r and isinstance(r.get("loss"), (int, float))]
        marker = "o" if len(points) < 30 else None  # a short log is a few points: draw them
        loss_ax.plot([s for s, _ in points], [v for _, v in points], marker=marker, label=name)
        lrs = [(r["step"], r["lr"]) for r in rows if "step" in r and isinstance(r.get("lr"), (int, float))]
        lr_ax.plot([s for s, _ in lrs], [v for _, v in lrs], marker=marker, label=name)
    for ax, label in ((loss_ax, "training loss (logged window mean)"), (lr_ax, "learning rate")):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_rounds(series: dict[str, list[tuple[int, float]]], metric: str, path: Path,
                xlabel: str = "round") -> Path | None:
    """A metric against the round (or iteration, or training step: `xlabel`), one line per quantity measured at
    every point."""
    series = {k: v for k, v in series.items() if len(v) >= 2}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, points in series.items():
        ax.plot([r for r, _ in points], [v for _, v in points], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
