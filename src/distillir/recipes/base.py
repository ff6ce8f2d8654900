"""What every recipe shares: the interface, the run directory, and evaluating a trained dense retriever.

A recipe is a class with a `name`, a `Config` dataclass (loaded with `distillir.training.config.load_config`)
and `run(config) -> dict`. A run directory holds:

    output_dir/config.yaml        the resolved config (written before anything else)
    output_dir/log.jsonl          training metrics (by the Trainer)
    output_dir/checkpoints/       step-N checkpoints (by the Trainer)
    output_dir/final/             the trained model
    output_dir/metrics.json       evaluation results, when the config asks for them
    output_dir/results.json       what `run` returned
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from distillir.errors import ConfigError
from distillir.training import checkpoint as ckpt
from distillir.training.config import CONFIG_FILE, config_diff, config_to_dict, save_config
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

FINAL_DIR = "final"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"


@dataclass
class EvalConfig:
    """Evaluate the trained retriever on a labelled split (dense index over the split's corpus)."""

    dataset: str
    split: str = "test"
    max_queries: int | None = None  # a seeded sample, for quick looks
    top_k: int = 100
    batch_size: int = 64  # encoding batch size
    baseline: bool = False  # also evaluate the model before training, for the side-by-side every paper shows


class Recipe(ABC):
    """Base class of training recipes. Subclasses set `name`, `Config` and implement `run`.

    The Config dataclass must have `output_dir: str`, `seed: int` and `resume: bool` (the CLI's --resume
    sets `resume=true`); the training section is conventionally `trainer: TrainConfig`.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    @abstractmethod
    def run(self, config: Any, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        """Train (and evaluate, if configured) and return the results. `callbacks` go to the Trainer."""

    # ----------------------------------------------------------------------------------- helpers

    @classmethod
    def load_config(cls, yaml_path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
        from distillir.training.config import load_config

        return load_config(cls.Config, yaml_path, overrides)

    def prepare_output_dir(self, config: Any) -> Path:
        """Create output_dir and write config.yaml; refuse to overwrite a previous run unless resuming.

        Resuming with a config that differs from the saved one is allowed (e.g. more steps) but logged.
        Call on every process; only the main process writes.
        """
        from distillir.training.trainer import process_state

        out = Path(config.output_dir)
        saved_path = out / CONFIG_FILE
        previous_run = bool(ckpt.list_checkpoints(out)) or (out / FINAL_DIR).exists()
        if previous_run and not config.resume:
            raise ConfigError(
                f"{out} already holds a run; continue it with resume=true (distillir train --resume), "
                "or choose another output_dir"
            )
        if config.resume and saved_path.is_file():
            saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
            changed = [k for k in config_diff(saved, config_to_dict(config)) if k != "resume"]
            if changed:
                logger.warning("resuming %s with changed settings: %s", out, ", ".join(changed))
        if process_state().is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, saved_path)
        return out

    def write_results(self, output_dir: Path, results: dict[str, Any]) -> None:
        from distillir.training.trainer import process_state

        if process_state().is_main_process:
            write_json(output_dir / RESULTS_FILE, results)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) before building models, so a run repeats exactly."""
    from accelerate.utils import set_seed

    random.seed(seed)
    set_seed(seed)


def evaluate_dense(encoder: Any, eval_config: EvalConfig, seed: int = 0, cache: bool = True) -> dict[str, Any]:
    """Index the eval split's corpus with `encoder`, search its queries, and compute every metric it allows.

    `cache` reuses corpus embeddings across runs (worth it for a pretrained model evaluated again and again;
    pointless for freshly trained weights, whose embeddings would only fill the cache).
    """
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.retrievers.dense.retriever import DenseRetriever

    dataset = load_dataset(eval_config.dataset, eval_config.split, max_queries=eval_config.max_queries, seed=seed)
    retriever = DenseRetriever.build(dataset.corpus, encoder, batch_size=eval_config.batch_size, cache=cache)
    run = retriever.search(dataset.queries, top_k=eval_config.top_k)
    metrics = evaluate_run(run, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)
    return {"dataset": dataset.name, "split": dataset.split, **metrics}


def mined_training_lists(
    dataset: Any,
    lists_path: Path,
    first_stage: Any,
    negatives: Any,
    *,
    seed: int,
    resume: bool,
    require_negatives: bool = False,
) -> list:
    """Training lists for a supervised recipe: each query's positives (qrels or gold ids) and negatives mined
    from `first_stage(queries)`'s run (`negatives`: mined, depth, exclude_answers, sample), or, when
    `negatives.lists` names a file (e.g. from `distillir mine`), that file's lists as given (checked against the
    corpus). The main process writes `lists_path`; other processes, and resumed runs, read it back."""
    from distillir.data.negatives import (
        build_examples,
        mine_negatives,
        positives_from_dataset,
        read_training_lists,
        write_training_lists,
    )
    from distillir.training.trainer import process_state

    state = process_state()
    with state.main_process_first():
        if lists_path.is_file() and (resume or not state.is_main_process):
            logger.info("reading training lists from %s", lists_path)
            return read_training_lists(lists_path, dataset.corpus)
        given = getattr(negatives, "lists", None)
        if given:
            examples = read_training_lists(given, dataset.corpus)
            if require_negatives:
                kept = [ex for ex in examples if ex.negatives]
                if not kept:
                    from distillir.errors import InputError

                    raise InputError(given, "no list has a negative: a ranker needs something to contrast with")
                if len(kept) < len(examples):
                    logger.warning("%d of %d lists in %s have no negative and are left out",
                                   len(examples) - len(kept), len(examples), given)
                examples = kept
            write_training_lists(lists_path, examples)  # the run directory keeps what it trained on
            logger.info("using %d training lists from %s", len(examples), given)
            return examples
        positives = positives_from_dataset(dataset)
        queries = dataset.queries.subset([q for q in dataset.queries.ids if q in positives])
        if len(queries) < len(dataset.queries):
            logger.warning("%d training queries have no positive passage and are left out",
                           len(dataset.queries) - len(queries))
        mined = mine_negatives(
            first_stage(queries), queries, dataset.corpus, positives, n=negatives.mined,
            rank_range=(0, negatives.depth), exclude_answers=negatives.exclude_answers,
            sample=negatives.sample, seed=seed,
        )
        examples = build_examples(queries, positives, mined)
        if require_negatives:
            kept = [ex for ex in examples if ex.negatives]
            if len(kept) < len(examples):
                logger.warning("%d of %d training queries have no negative and are left out",
                               len(examples) - len(kept), len(examples))
            examples = kept
        write_training_lists(lists_path, examples)
        logger.info("wrote %d training lists to %s", len(examples), lists_path)
        return examples
