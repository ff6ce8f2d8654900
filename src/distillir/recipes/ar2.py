"""AR2: adversarial co-training of a dense retriever and a cross-encoder ranker.

Zhang et al. (2022), "Adversarial Retriever-Ranker for Dense Text Retrieval" (ICLR; microsoft/AR2
AR2/wiki/co_training_wiki_train.py). The retriever plays a generator that retrieves negatives to fool the
ranker; the ranker a discriminator that tells the positive from them. Each iteration:

1. refresh the index: embed the training corpus with the current retriever and mine each training query's
   top-`depth`, removing its positives and, with `exclude_answers`, passages containing an answer (the
   ranker's false-negative filter) -> `iter-k/train_lists.jsonl`;
2. ranker phase (`ranker_steps`): listwise cross-entropy over groups {positive + group_size - 1 negatives
   sampled from the mined ones} -> `iter-k/ranker/`;
3. retriever phase (`retriever_steps`, the ranker frozen): over the same kind of group,
   L = lambda * L_adv + (1 - lambda) * L_R with the ranker's scores as T (`AdversarialRetrieverLoss`;
   lambda = 0 is pure distillation from the ranker) -> `iter-k/retriever/`.

AR2 co-trains models that were first trained apart; `ranker_warmup.steps` trains the ranker alone on
iteration 1's lists before co-training (`ranker-warmup/`), for a ranker that starts with a fresh head.

`retriever_loss: contrastive` is the comparison AR2's claim rests on, training with mined hard negatives
alone, at the same budget: the same iterations, re-mining and retriever steps, but the retriever is trained
on listwise cross-entropy over its own group scores and no ranker is trained or used (with `refresh: never`
the negatives stay those mined by the first retriever).

Every phase is its own Trainer run in its own directory (checkpoints, log.jsonl, final/, summary.json), so
interruption costs at most one phase's progress since its last checkpoint: on `resume`, phases whose final/
exists are skipped (their model is loaded from it) and an interrupted phase continues from its checkpoint.
Each iteration's metrics go to `iter-k/metrics.json` and, gathered, to `metrics.json`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from distillir.data.negatives import build_examples, mine_negatives, read_training_lists
from distillir.errors import ConfigError
from distillir.losses.adversarial import AdversarialRetrieverLoss
from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss
from distillir.models import DEFAULT_ENCODER
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.recipes.common.config import (
    PipelineEvalConfig,
    RankerWarmup,
    TrainSplit,
    check_list_size,
    check_temperature,
)
from distillir.recipes.common.lists import LISTS_FILE, read_or_build_lists
from distillir.recipes.common.ranking import (
    WARMUP_DIR,
    CandidateListCollator,
    load_ranker,
    phase_arguments,
    train_ranker,
    warm_up_ranker,
)
from distillir.recipes.common.retrieval import (
    default_temperature,
    dense_candidates,
    evaluate_pipeline,
    frozen,
    load_retriever,
    retriever_list_scores,
)
from distillir.recipes.common.run import (
    FINAL_DIR,
    METRICS_FILE,
    Recipe,
    RunConfig,
    finish_phase,
    phase_done,
    read_json,
    read_phase_summary,
)
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.training.arguments import TrainConfig
from distillir.training.state import process_state
from distillir.training.trainer import Trainer
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

CANDIDATES_FILE = "candidates.trec"
RANKER_DIR = "ranker"
RETRIEVER_DIR = "retriever"


@dataclass
class AR2Config(RunConfig):
    output_dir: str = "runs/ar2"
    retriever: str = DEFAULT_ENCODER  # hub id or local path (AR2 starts from a warmed-up DPR retriever)
    shared_encoder: bool = False  # one tower for questions and passages; False: two copies, trained apart
    normalize: bool | None = None  # unit-length embeddings; None: as the model's files say
    query_max_length: int = 32
    passage_max_length: int = 128
    temperature: float | None = None  # divides retriever scores; None: 0.05 when normalised, else 1
    ranker: str = DEFAULT_ENCODER  # a trained cross-encoder, or any encoder (then warm it up)
    ranker_max_length: int = 160
    ranker_warmup: RankerWarmup = field(default_factory=RankerWarmup)  # before iteration 1, on its lists
    data: TrainSplit = field(default_factory=TrainSplit)
    iterations: int = 2
    ranker_steps: int = 500  # per iteration (paper: 500)
    retriever_steps: int = 1500  # per iteration (paper: 1,500)
    ranker_learning_rate: float = 1e-6  # the retriever's is trainer.learning_rate (paper: 1e-5)
    group_size: int = 16  # the positive and group_size - 1 negatives (paper: 16)
    depth: int = 100  # mine from the retriever's top-`depth` (paper: 100)
    refresh: Literal["every_iteration", "never"] = "every_iteration"  # never: mine once, with the first retriever
    exclude_answers: bool = True  # no answer-containing passage among the negatives (queries with answers)
    retriever_loss: Literal["adversarial", "contrastive"] = "adversarial"
    lambda_: float = 0.5  # weight of the adversarial term; 1 - lambda_ weighs the distillation regulariser
    ranker_temperature: float = 1.0  # softens the ranker's distribution in the regulariser
    adversarial_over_negatives_only: bool = False  # drop the positive from L_adv (the paper's notation)
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-5, warmup_ratio=0.1))
    eval: PipelineEvalConfig | None = None  # evaluated after every iteration (and before the first: baseline)

    def __post_init__(self) -> None:
        check_list_size(self.group_size)
        if self.iterations < 1:
            raise ConfigError(f"iterations must be at least 1, got {self.iterations}")
        if self.retriever_steps < 1 or self.ranker_steps < 0:
            raise ConfigError(f"need retriever_steps >= 1 and ranker_steps >= 0, got {self.retriever_steps}, "
                              f"{self.ranker_steps}")
        if self.depth < 1:
            raise ConfigError(f"depth must be at least 1, got {self.depth}")
        if not 0.0 <= self.lambda_ <= 1.0:
            raise ConfigError(f"lambda_ must be in [0, 1], got {self.lambda_}")
        if self.ranker_learning_rate <= 0 or self.ranker_temperature <= 0:
            raise ConfigError("ranker_learning_rate and ranker_temperature must be positive")
        check_temperature(self.temperature)
        if self.trainer.max_steps is not None:
            raise ConfigError("AR2 counts steps per phase: set ranker_steps and retriever_steps, not "
                              "trainer.max_steps")


class RetrieverGroupLoss:
    """The AR2 retriever step as a Trainer `loss_fn` over groups (positive first).

    Adversarial: `AdversarialRetrieverLoss(lambda_)` with the frozen ranker's scores as T. Contrastive
    (the hard-negative baseline): listwise cross-entropy of the retriever's own group scores.
    """

    def __init__(self, kind: str, temperature: float, ranker=None, lambda_: float = 0.5,
                 ranker_temperature: float = 1.0, adversarial_over_negatives_only: bool = False):
        if kind == "adversarial" and ranker is None:
            raise ValueError("the adversarial retriever loss needs the ranker")
        self.kind = kind
        self.temperature = temperature
        self.ranker = ranker
        self.adversarial = AdversarialRetrieverLoss(lambda_, ranker_temperature, adversarial_over_negatives_only)
        self.contrastive = ListwiseCrossEntropyLoss()

    def __call__(self, retriever, batch: dict[str, Any]):
        mask = batch["mask"]
        scores = retriever_list_scores(retriever, batch, self.temperature)
        if self.kind == "contrastive":
            return self.contrastive(scores, mask=mask)
        with torch.no_grad():
            ranker_scores = self.ranker.list_scores(batch["pairs"], mask.shape[1])
        return {"loss": self.adversarial(scores, ranker_scores, mask),
                "ranker_ce": self.contrastive(ranker_scores, mask=mask)}  # how well the ranker spots d+ here


class AR2Recipe(Recipe):
    """AR2: alternating ranker and adversarial retriever phases with re-mined negatives (Zhang et al., 2022)."""

    name = "ar2"
    Config = AR2Config

    def run(self, config: AR2Config, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        out = self.start(config)
        state = process_state()
        dataset, positives, queries = config.data.labelled(config.seed)
        adversarial = config.retriever_loss == "adversarial"

        retriever = load_retriever(config.retriever, config)
        ranker = load_ranker(config.ranker, config) if adversarial else None
        report = (read_json(out / METRICS_FILE) or {}) if config.resume else {}
        if config.eval is not None and config.eval.baseline and "baseline" not in report and state.is_main_process:
            logger.info("evaluating the initial retriever on %s/%s", config.eval.dataset, config.eval.split)
            report["baseline"] = evaluate_pipeline(retriever, config.eval, seed=config.seed, cache=True)["retriever"]
        report.setdefault("baseline", None)
        report["iterations"] = []

        for k in range(1, config.iterations + 1):
            it = out / f"iter-{k}"
            examples = self._mine(config, k, it, out, dataset, queries, positives, retriever)
            row: dict[str, Any] = {"iteration": k, "train_lists": len(examples)}
            if adversarial and k == 1 and config.ranker_warmup.steps > 0:
                ranker, report["ranker_warmup"] = self._warm_up(config, ranker, examples, dataset.corpus,
                                                                out / WARMUP_DIR, callbacks)
            if adversarial:
                ranker, row["ranker"] = self._ranker_phase(config, ranker, examples, dataset.corpus,
                                                           it / RANKER_DIR, callbacks)
            retriever, row["retriever"] = self._retriever_phase(config, retriever, ranker, examples,
                                                                dataset.corpus, it / RETRIEVER_DIR, callbacks)
            row["eval"] = self._evaluate(config, it, retriever, ranker)
            report["iterations"].append(row)
            if state.is_main_process:
                write_json(it / METRICS_FILE, row)
                write_json(out / METRICS_FILE, report)
            state.wait_for_everyone()

        last = out / f"iter-{config.iterations}"
        final_eval = report["iterations"][-1]["eval"]
        results = {
            "recipe": self.name,
            "retriever_loss": config.retriever_loss,
            "lambda_": config.lambda_ if adversarial else None,
            "output_dir": str(out),
            "final_retriever": str(last / RETRIEVER_DIR / FINAL_DIR),
            "final_ranker": str(last / RANKER_DIR / FINAL_DIR) if adversarial else None,
            "ranker_warmup": report.get("ranker_warmup"),
            "iterations": report["iterations"],
            "metrics": final_eval and final_eval["retriever"],
            "baseline_metrics": report["baseline"],
            "reranked_metrics": final_eval and final_eval["reranked"],
        }
        self.write_results(out, results)
        return results

    # ----------------------------------------------------------------------------------- steps

    def _mine(self, config: AR2Config, k: int, it: Path, out: Path, dataset, queries, positives, retriever):
        """This iteration's training lists: the current retriever's top-`depth`, filtered (main process first)."""

        def build():
            if config.refresh == "never" and k > 1:
                examples = read_training_lists(out / "iter-1" / LISTS_FILE, dataset.corpus)
            else:
                logger.info("iteration %d: refreshing the index and mining the top-%d of %d queries", k,
                            config.depth, len(queries))
                # Cached: when the eval split shares the training corpus (BEIR), the previous iteration's
                # evaluation already embedded it with these exact weights.
                run = dense_candidates(retriever, dataset.corpus, queries, config.depth, cache=True)
                run.write_trec(it / CANDIDATES_FILE, tag=f"iter-{k}")
                negatives = mine_negatives(run, queries, dataset.corpus, positives, n=config.depth,
                                           rank_range=(0, config.depth), exclude_answers=config.exclude_answers,
                                           sample=False, seed=config.seed)
                examples = [ex for ex in build_examples(queries, positives, negatives) if ex.negatives]
            if not examples:
                raise ConfigError(f"iteration {k}: no training query kept a negative; raise depth")
            return examples

        return read_or_build_lists(it / LISTS_FILE, dataset.corpus, config.resume, build,
                                   label=f"iteration {k} training lists")

    def _warm_up(self, config: AR2Config, ranker, examples, corpus, phase_dir: Path, callbacks):
        """The ranker alone on iteration 1's lists (AR2 starts co-training from warmed-up models)."""
        return warm_up_ranker(ranker, examples, corpus, config.group_size, config.ranker_warmup, config.trainer,
                              phase_dir, seed=config.seed, resume=config.resume, callbacks=callbacks)

    def _ranker_phase(self, config: AR2Config, ranker, examples, corpus, phase_dir: Path, callbacks):
        if phase_done(phase_dir):
            logger.info("%s is done: loading its ranker", phase_dir)
            return CrossEncoder.from_pretrained(phase_dir / FINAL_DIR), read_phase_summary(phase_dir)
        if config.ranker_steps == 0:
            return ranker, None
        logger.info("ranker phase: %d steps -> %s", config.ranker_steps, phase_dir)
        summary = train_ranker(ranker, examples, corpus, config.group_size, config.trainer, phase_dir,
                               seed=config.seed, resume=config.resume, callbacks=callbacks,
                               max_steps=config.ranker_steps, learning_rate=config.ranker_learning_rate)
        return ranker, summary

    def _retriever_phase(self, config: AR2Config, retriever, ranker, examples, corpus, phase_dir: Path, callbacks):
        if phase_done(phase_dir):
            logger.info("%s is done: loading its retriever", phase_dir)
            return BiEncoder.from_pretrained(phase_dir / FINAL_DIR), read_phase_summary(phase_dir)
        logger.info("retriever phase (%s): %d steps -> %s", config.retriever_loss, config.retriever_steps,
                    phase_dir)
        args = phase_arguments(config.trainer, phase_dir, seed=config.seed, resume=config.resume,
                               max_steps=config.retriever_steps)
        collate = CandidateListCollator(corpus, config.group_size, retriever=retriever, ranker=ranker)
        loss = RetrieverGroupLoss(config.retriever_loss, default_temperature(retriever, config.temperature), ranker,
                                  lambda_=config.lambda_, ranker_temperature=config.ranker_temperature,
                                  adversarial_over_negatives_only=config.adversarial_over_negatives_only)
        trainer = Trainer(retriever, args, examples, collate, loss_fn=loss, callbacks=callbacks)
        with frozen(ranker) if ranker is not None else contextlib.nullcontext():
            if ranker is not None:
                ranker.to(trainer.device)
            summary = trainer.train()
        finish_phase(retriever, phase_dir, summary, trainer)
        return retriever, summary

    def _evaluate(self, config: AR2Config, it: Path, retriever, ranker):
        if config.eval is None:
            return None
        saved = (read_json(it / METRICS_FILE) or {}).get("eval") if config.resume else None
        if saved is not None:
            return saved
        if not process_state().is_main_process:
            return None
        logger.info("evaluating iteration %s's retriever on %s/%s", it.name, config.eval.dataset, config.eval.split)
        return evaluate_pipeline(retriever, config.eval, seed=config.seed, ranker=ranker, cache=True)


__all__ = ["AR2Config", "AR2Recipe", "RetrieverGroupLoss"]
