"""The `distillir` commands that run jobs: train a recipe, list recipes, the demo. Registered on the app in
`distillir.cli.main`; heavy imports happen inside each command."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Annotated

import typer

from distillir.cli.options import Precision, echo_err
from distillir.models import DEFAULT_ENCODER

CONFIGS_DIR = Path(__file__).resolve().parents[3] / "configs"  # the shipped configs, in a source checkout


def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `distillir recipes`).")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config for the recipe.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: --set trainer.max_steps=100 (repeatable).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in the output directory.")] = False,
    defaults: Annotated[bool, typer.Option("--defaults", help="Run on the recipe's built-in defaults (printed "
                                           "first) instead of a --config file.")] = False,
) -> None:
    """Train with a recipe from a YAML config plus --set overrides."""
    import yaml

    from distillir.errors import ConfigError, DistillirError
    from distillir.recipes import get_recipe
    from distillir.training.config import config_to_dict, load_config

    recipe_cls = get_recipe(recipe)
    if config is None and not defaults:
        shipped = sorted(CONFIGS_DIR.glob(f"{recipe}-*.yaml")) if CONFIGS_DIR.is_dir() else []
        raise ConfigError(f"train {recipe}: give a config (--config FILE; shipped: "
                          f"{', '.join(str(p) for p in shipped) or 'none found'}), or --defaults to run on the "
                          f"built-in defaults")
    sets = list(overrides or [])
    if resume:
        sets.append("resume=true")
    cfg = load_config(recipe_cls.Config, config, sets)
    if config is None:
        echo_err(f"{recipe}: built-in defaults (--defaults):\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    echo_err(f"{recipe}: output directory {getattr(cfg, 'output_dir', '?')}")
    from distillir.training.interrupt import TrainingInterrupted

    out = Path(getattr(cfg, "output_dir", "") or ".")
    fresh = not out.exists()
    try:
        result = recipe_cls().run(cfg)
    except DistillirError:
        # Bad input found before the run wrote anything but its config: leave no directory behind.
        if fresh and out.is_dir() and {p.name for p in out.iterdir()} <= {"config.yaml"}:
            shutil.rmtree(out, ignore_errors=True)
        raise
    except TrainingInterrupted as e:
        again = ["distillir", "train", recipe, *(["--config", str(config)] if config else ["--defaults"]),
                 *[part for item in overrides or [] for part in ("--set", item)], "--resume"]
        echo_err(f"interrupted ({e}); resume with:\n  {' '.join(shlex.quote(a) for a in again)}")
        raise typer.Exit(130) from None
    typer.echo(json.dumps(result, indent=2, default=str))
    if result.get("report"):
        echo_err(f"report: {result['report']}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (a recipe's output_dir).")],
) -> None:
    """Render a run's report again: report.md with the evaluated systems side by side, and plots/*.png."""
    from distillir.errors import InputError
    from distillir.evaluation.run_report import render_run_report

    if not (run_dir / "config.yaml").is_file():
        raise InputError(run_dir, "not a run directory (no config.yaml); give a recipe's output_dir")
    typer.echo(f"report: {render_run_report(run_dir)}")


def recipes() -> None:
    """List the training recipes."""
    from distillir.recipes import RECIPES, get_recipe

    for name in sorted(RECIPES):
        doc = (get_recipe(name).__doc__ or "").strip().splitlines()
        typer.echo(f"{name:<16} {doc[0] if doc else ''}")


def demo(
    dataset: Annotated[str, typer.Option(help="Dataset name or directory (BEIR layout or squad-open layout).")] = "scifact",
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    model: Annotated[str, typer.Option(help="Dense encoder (hub id or path).")] = DEFAULT_ENCODER,
    max_queries: Annotated[int | None, typer.Option(min=1, help="Evaluate on a fixed, seeded sample of queries.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Depth of each run.")] = 100,
    dtype: Annotated[Precision, typer.Option(help="Dense encoding precision: auto (bfloat16 on CPUs with native bf16), float32, bfloat16, float16 (GPU).")] = Precision.auto,
    out: Annotated[Path | None, typer.Option(help="Where report.md, metrics.json and the runs go (default: runs/demo-DATASET-SPLIT; an existing one is replaced).")] = None,
) -> None:
    """The main job: BM25, the dense encoder and their RRF hybrid on a real dataset, side by side."""
    from distillir.demo import run_demo

    out = out or Path("runs") / f"demo-{Path(dataset).name}-{split}"
    typer.echo(run_demo(dataset=dataset, split=split, model=model, max_queries=max_queries, top_k=top_k,
                        dtype=dtype.value, out=out))
    typer.echo(f"\nreport: {out / 'report.md'} (metrics.json and the runs beside it)")
