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

The round guard (`common.guard`, as in fid-kd): `agreement_holdout` of each iteration's lists are held out of the
retriever phase, and the retriever's KL to the ranker on them is measured before and after it; an iteration
whose KL rose, or whose retriever collapsed (one passage first for most training queries), is not kept with
`on_worse: keep` (the next iteration mines with and trains the earlier retriever; "stop" also ends the run).

Every phase is its own Trainer run in its own directory (checkpoints, log.jsonl, final/, summary.json), so
interruption costs at most one phase's progress since its last checkpoint: on `resume`, phases whose final/
exists are skipped (their model is loaded from it) and an interrupted phase continues from its checkpoint.
Each iteration's metrics go to `iter-k/metrics.json` and, gathered, to `metrics.json`.
"""

from __future__ import annotations

import contextlib
import math
import random
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
from distillir.recipes.common.guard import ON_WORSE, guard_round, ranker_agreement
from distillir.recipes.common.lists import LISTS_FILE, read_or_build_lists
from distillir.recipes.common.ranking import (
    WARMUP_DIR,
    CandidateListCollator,
    load_ranker,
    phase_arguments,
    train_ranker,
    warm_up_ranker,
)
from distillir.recipes.common.reading import collapse_check
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
AGREEMENT_BEFORE_FILE = "agreement_before.json"


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
    on_worse: str = "keep"  # an iteration the guard finds worse: keep the earlier retriever, stop, or continue
    agreement_holdout: float = 0.1  # lists held out of the retriever phase for the guard's KL (0: collapse only)
    agreement_sample: int = 256  # at most this many held-out lists

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
        if self.on_worse not in ON_WORSE:
            raise ConfigError(f"on_worse must be one of {', '.join(ON_WORSE)}, got {self.on_worse!r}")
        if not 0.0 <= self.agreement_holdout < 1.0 or self.agreement_sample < 0:
            raise ConfigError(f"agreement_holdout must be in [0, 1) and agreement_sample >= 0, got "
                              f"{self.agreement_holdout}, {self.agreement_sample}")
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
        in_effect = [0]  # after iteration k: the iteration whose retriever is in use (0: the start one)

        for k in range(1, config.iterations + 1):
            it = out / f"iter-{k}"
            examples = self._mine(config, k, it, out, dataset, queries, positives, retriever)
            held, examples = self._hold_out(config, examples)
            row: dict[str, Any] = {"iteration": k, "train_lists": len(examples), "held_out_lists": len(held)}
            if adversarial and k == 1 and config.ranker_warmup.steps > 0:
                ranker, report["ranker_warmup"] = self._warm_up(config, ranker, examples, dataset.corpus,
                                                                out / WARMUP_DIR, callbacks)
            if adversarial:
                ranker, row["ranker"] = self._ranker_phase(config, ranker, examples, dataset.corpus,
                                                           it / RANKER_DIR, callbacks)
            retriever, row["retriever"], row["agreement"] = self._retriever_phase(
                config, retriever, ranker, examples, held, dataset.corpus, it / RETRIEVER_DIR, callbacks)
            row["eval"] = self._evaluate(config, it, retriever, ranker)
            top1 = dense_candidates(retriever, dataset.corpus, queries, 1, cache=True)  # cached for the next mining
            row["index"] = {"diagnostics": collapse_check(top1, f"iteration {k}'s retriever")}
            kept, row["guard"] = guard_round(k, in_effect[-1], row["agreement"], row["index"], config.on_worse,
                                          unit="iteration")
            in_effect.append(kept)
            if kept != k:  # the earlier retriever mines and trains on in the next iteration
                retriever = self._retriever_of(config, out, kept)
            report["iterations"].append(row)
            report["kept_iteration"] = kept
            if state.is_main_process:
                write_json(it / METRICS_FILE, row)
                write_json(out / METRICS_FILE, report)
            state.wait_for_everyone()
            if row["guard"]["worse"] and config.on_worse == "stop":
                logger.warning("iteration %d made the retriever worse: stopping (on_worse: stop)", k)
                break

        kept = in_effect[-1]
        last = out / f"iter-{kept or len(report['iterations'])}"
        final_eval = report["iterations"][kept - 1]["eval"] if kept else None
        results = {
            "recipe": self.name,
            "retriever_loss": config.retriever_loss,
            "lambda_": config.lambda_ if adversarial else None,
            "output_dir": str(out),
            "kept_iteration": kept,
            "final_retriever": str(last / RETRIEVER_DIR / FINAL_DIR) if kept else config.retriever,
            "final_ranker": str(last / RANKER_DIR / FINAL_DIR) if adversarial else None,
            "ranker_warmup": report.get("ranker_warmup"),
            "iterations": report["iterations"],
            "metrics": final_eval["retriever"] if final_eval else report["baseline"],
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

    def _hold_out(self, config: AR2Config, examples):
        """(held out, training) lists: a seeded `agreement_holdout` share (at most `agreement_sample`) is kept out
        of both phases for the guard, when there is a ranker to agree with."""
        if config.retriever_loss != "adversarial" or not config.agreement_holdout or not config.agreement_sample:
            return [], examples
        n = min(config.agreement_sample, len(examples) - 1, max(1, math.ceil(config.agreement_holdout * len(examples))))
        rows = set(random.Random(config.seed).sample(range(len(examples)), max(0, n)))
        return [ex for i, ex in enumerate(examples) if i in rows], [ex for i, ex in enumerate(examples) if i not in rows]

    def _retriever_of(self, config: AR2Config, out: Path, k: int):
        if k == 0:
            return load_retriever(config.retriever, config)
        return BiEncoder.from_pretrained(out / f"iter-{k}" / RETRIEVER_DIR / FINAL_DIR)

    def _retriever_phase(self, config: AR2Config, retriever, ranker, examples, held, corpus, phase_dir: Path,
                         callbacks):
        """(retriever, the phase summary, the guard's agreement record): the retriever's KL to the ranker on the
        held-out lists before the phase (kept in a file, so a resume reuses it) and after it."""
        temperature = default_temperature(retriever, config.temperature)

        def agreement():
            return ranker_agreement(retriever, ranker, held, corpus, config.group_size, temperature=temperature,
                                    ranker_temperature=config.ranker_temperature, seed=config.seed)

        record: dict[str, Any] = {"agreement_held_out": bool(held and ranker is not None)}
        before_file = phase_dir / AGREEMENT_BEFORE_FILE
        if record["agreement_held_out"]:
            record["agreement_before"] = read_json(before_file) if config.resume else None
            if record["agreement_before"] is None:
                record["agreement_before"] = agreement()
                write_json(before_file, record["agreement_before"])
        if phase_done(phase_dir):
            logger.info("%s is done: loading its retriever", phase_dir)
            retriever = BiEncoder.from_pretrained(phase_dir / FINAL_DIR)
            summary = read_phase_summary(phase_dir)
        else:
            logger.info("retriever phase (%s): %d steps -> %s", config.retriever_loss, config.retriever_steps,
                        phase_dir)
            args = phase_arguments(config.trainer, phase_dir, seed=config.seed, resume=config.resume,
                                   max_steps=config.retriever_steps)
            collate = CandidateListCollator(corpus, config.group_size, retriever=retriever, ranker=ranker)
            loss = RetrieverGroupLoss(config.retriever_loss, temperature, ranker, lambda_=config.lambda_,
                                      ranker_temperature=config.ranker_temperature,
                                      adversarial_over_negatives_only=config.adversarial_over_negatives_only)
            trainer = Trainer(retriever, args, examples, collate, loss_fn=loss, callbacks=callbacks)
            with frozen(ranker) if ranker is not None else contextlib.nullcontext():
                if ranker is not None:
                    ranker.to(trainer.device)
                summary = trainer.train()
            finish_phase(retriever, phase_dir, summary, trainer)
        if record["agreement_held_out"]:
            record["agreement_after"] = agreement()
        return retriever, summary, record

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
