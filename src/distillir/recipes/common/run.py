"""The run directory every recipe shares: create it, refuse to overwrite a run, resume one, seed, stages.

A recipe is a class with a `name`, a `Config` dataclass (loaded with `distillir.training.config.load_config`)
and `run(config) -> dict`. A run directory holds:

    output_dir/config.yaml        the resolved config (written before anything else)
    output_dir/log.jsonl          training metrics (by the Trainer)
    output_dir/checkpoints/       step-N checkpoints (by the Trainer)
    output_dir/stages/NAME.json   a finished stage's record (its marker: a resumed run skips the stage)
    output_dir/PHASE/             a training phase of its own (checkpoints/, log.jsonl, final/, summary.json)
    output_dir/final/             the trained model(s)
    output_dir/metrics.json       evaluation results, when the config asks for them
    output_dir/results.json       what `run` returned
"""

from __future__ import annotations

import json
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from distillir.errors import ConfigError
from distillir.training.arguments import check_seed
from distillir.training.config import CONFIG_FILE, config_diff, config_to_dict, load_config, save_config
from distillir.training.state import process_state
from distillir.utils.io import write_json
from distillir.utils.log import get_logger
from distillir.utils.memory import keep_freed_memory

logger = get_logger(__name__)

FINAL_DIR = "final"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"
STAGES_DIR = "stages"
PHASE_SUMMARY_FILE = "summary.json"


@dataclass
class RunConfig:
    """What every recipe's config starts with: where the run lives, its seed, whether to continue it (the CLI's
    --resume). A recipe's config subclasses it and gives `output_dir` its own default."""

    output_dir: str = "runs/run"
    seed: int = 42
    resume: bool = False


class Recipe(ABC):
    """Base class of training recipes. Subclasses set `name`, `Config` and implement `run`.

    The Config dataclass must have `output_dir: str`, `seed: int` and `resume: bool` (the CLI's --resume
    sets `resume=true`); the training section is conventionally `trainer: TrainConfig`.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    single_process: ClassVar[bool] = False  # True: refuse to run under torchrun (one GPU or the CPU)

    @abstractmethod
    def run(self, config: Any, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Train (and evaluate, if configured) and return the results. `callbacks` go to the Trainer."""

    @classmethod
    def load_config(cls, yaml_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
        return load_config(cls.Config, yaml_path, overrides)

    def start(self, config: Any) -> Path:
        """The preamble of every run: the process check, the run directory (`prepare_output_dir`), the seed, and
        malloc keeping freed memory (utils/memory.py)."""
        if self.single_process and process_state().num_processes > 1:
            raise ConfigError(f"{self.name} runs in a single process (one GPU or the CPU); launch it without torchrun")
        check_seed("seed", config.seed)  # before the run directory is written
        out = self.prepare_output_dir(config)
        seed_everything(config.seed)
        keep_freed_memory()  # every stage's large batches (scoring, encoding, training) reuse freed pages
        return out

    def prepare_output_dir(self, config: Any) -> Path:
        """Create output_dir and write config.yaml; refuse a directory that holds a run unless resuming.

        A directory holds a run when it has anything besides config.yaml (a run that failed before writing
        anything can be started again). Resuming with a config that differs from the saved one is allowed
        (e.g. more steps) but logged. Call on every process; only the main process writes.
        """
        out = Path(config.output_dir)
        saved_path = out / CONFIG_FILE
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output_dir {out} is a file; choose a directory")
        found = sorted(p.name for p in out.iterdir() if p.name != CONFIG_FILE) if out.is_dir() else []
        if found and not saved_path.is_file():
            raise ConfigError(f"output_dir {out} holds files that are not a distillir run ({found[0]}); choose "
                              "another output_dir")
        if found and not config.resume:
            raise ConfigError(f"{out} already holds a run ({found[0]}); continue it with resume=true (distillir "
                              "train --resume), or choose another output_dir")
        if config.resume and saved_path.is_file():
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
            changed = [k for k in config_diff(saved, config_to_dict(config)) if k != "resume"]
            if changed:
                logger.warning("resuming %s with changed settings: %s", out, ", ".join(changed))
        state = process_state()
        state.wait_for_everyone()  # every process has looked at the directory before the main one writes to it
        if state.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, saved_path)
        state.wait_for_everyone()
        return out

    def write_results(self, output_dir: Path, results: dict[str, Any]) -> None:
        """results.json, then the run's report (report.md and plots/, from the files the run wrote)."""
        if process_state().is_main_process:
            from distillir.evaluation.run_report import REPORT_FILE, render_run_report

            results["report"] = str(Path(output_dir) / REPORT_FILE)
            write_json(output_dir / RESULTS_FILE, results)
            render_run_report(output_dir)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before building models, so a run repeats exactly."""
    from accelerate.utils import set_seed  # accelerate imports torch: only when a run starts

    random.seed(seed)
    set_seed(seed)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file this run wrote, or None when it is not there."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


StageHook = Callable[[str, dict], None]


class Stages:
    """Named stages of a run, each skipped once done: a finished stage's record goes to `directory/NAME.json`
    (written last, atomically), and a resumed run reads it back instead of running the stage again.

    `label` prefixes the log lines ("round 1", "re2g"); `on_stage(name, record)` runs after each stage
    finishes or is found finished (benchmarks write partial results there; tests inject failures)."""

    def __init__(self, directory: Path, label: str, on_stage: StageHook | None = None):
        self.directory = Path(directory)
        self.label = label
        self.on_stage = on_stage

    def run(self, name: str, fn: Callable[[], dict]) -> dict[str, Any]:
        marker = self.directory / f"{name}.json"
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8"))
            logger.info("%s: %s already done (%.1f s): skipping", self.label, name, info.get("wall_s", 0.0))
            info["skipped"] = True
        else:
            logger.info("%s: %s", self.label, name)
            start = time.perf_counter()
            info = fn()
            info["wall_s"] = round(time.perf_counter() - start, 3)
            write_json(marker, info)
            info["skipped"] = False
        if self.on_stage is not None:
            self.on_stage(name, info)
        return info


def phase_done(phase_dir: Path) -> bool:
    """A training phase is complete once its final/ model is saved (it is written atomically)."""
    return (Path(phase_dir) / FINAL_DIR).is_dir()


def read_phase_summary(phase_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(phase_dir) / PHASE_SUMMARY_FILE)


def save_on_main(*saves: tuple[Any, Path]) -> None:
    """Save each (model or index, directory) on the main process only, then wait for the others: under
    torchrun every process holds the same trained weights, and N processes replacing one directory race."""
    state = process_state()
    if state.is_main_process:
        for thing, path in saves:
            (thing.save_pretrained if hasattr(thing, "save_pretrained") else thing.save)(path)
    state.wait_for_everyone()


def finish_phase(model, phase_dir: Path, summary: dict[str, Any], trainer) -> None:
    """Save a phase's model to final/ and its summary beside it (main process), then wait for the others."""
    if trainer.is_main_process:
        model.save_pretrained(Path(phase_dir) / FINAL_DIR)
        write_json(Path(phase_dir) / PHASE_SUMMARY_FILE, summary)
    trainer.accelerator.wait_for_everyone()


def saved_baseline(path: Path, resume: bool, key: str = "baseline"):
    """The baseline metrics a resumed run recorded earlier in `path` (None when fresh or not recorded)."""
    saved = read_json(path) if resume else None
    return None if saved is None else saved.get(key)


__all__ = [
    "FINAL_DIR",
    "METRICS_FILE",
    "PHASE_SUMMARY_FILE",
    "RESULTS_FILE",
    "STAGES_DIR",
    "Recipe",
    "RunConfig",
    "Stages",
    "finish_phase",
    "phase_done",
    "read_json",
    "read_phase_summary",
    "save_on_main",
    "saved_baseline",
    "seed_everything",
]
