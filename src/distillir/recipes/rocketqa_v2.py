"""RocketQAv2: joint training of a dense retriever and a cross-encoder re-ranker by dynamic listwise distillation.

Ren et al. (2021), "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage Re-ranking"
(PaddlePaddle/RocketQA research/RocketQAv2_EMNLP2021). Each training query has a candidate list P_q with
its positive first; the retriever scores it with s_de(q, p) = E_q(q) . E_p(p) (over the query's own list,
not in-batch), the re-ranker with s_ce(q, p), and both are trained by

    L = L_sup + L_KL,   L_sup = - log softmax(s_ce)[positive],   L_KL = KL( softmax(s_ce) || softmax(s_de) )

with no stop-gradient on s_ce ("dynamic": the re-ranker learns from the KL too). `mode: static` freezes the
re-ranker (no gradient, eval mode) and trains only the retriever on L_KL: the paper's ablation.

Hybrid data augmentation (`lists.augmentation: hybrid`): every query gets an undenoised list (negatives
sampled from the retriever's top-N) and a denoised list (the top-N relabelled by the re-ranker's scores;
see `distillir.rankers.denoise`). The denoising re-ranker should be trained: give one from
`distillir train cross-encoder` as `ranker`, or let `ranker_warmup.steps` train it first on the undenoised
lists (its own resumable phase in `ranker-warmup/`).

Run directory: config.yaml, candidates.trec (the retriever's top-N of the training queries),
lists/undenoised.jsonl and lists/denoised.jsonl (the training lists), lists/denoise.json (what denoising
did), lists/denoise_scores.trec (the re-ranker's scores), ranker-warmup/ (a phase, when asked for),
checkpoints/ and log.jsonl (joint training), final/retriever and final/ranker, metrics.json, results.json.

The objective is `distillir.losses.JointListwiseLoss`; the retriever and ranker parts live in
`distillir.recipes.common`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillir.data.run import Run
from distillir.errors import ConfigError
from distillir.losses import JointListwiseLoss
from distillir.models import DEFAULT_ENCODER
from distillir.rankers.denoise import check_thresholds, denoise_lists, undenoised_lists
from distillir.recipes.common.config import (
    PipelineEvalConfig,
    RankerWarmup,
    TrainSplit,
    check_list_size,
    check_temperature,
)
from distillir.recipes.common.lists import read_or_build_lists
from distillir.recipes.common.ranking import (
    WARMUP_DIR,
    CandidateListCollator,
    load_ranker,
    phase_arguments,
    warm_up_ranker,
)
from distillir.recipes.common.retrieval import (
    RetrieverRanker,
    candidate_run,
    default_temperature,
    evaluate_pipeline,
    load_retriever,
    retriever_list_scores,
)
from distillir.recipes.common.run import FINAL_DIR, METRICS_FILE, Recipe, RunConfig, read_json, saved_baseline
from distillir.training.arguments import TrainConfig
from distillir.training.state import process_state
from distillir.training.trainer import Trainer
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

CANDIDATES_FILE = "candidates.trec"
LISTS_DIR = "lists"
UNDENOISED_FILE = "undenoised.jsonl"
DENOISED_FILE = "denoised.jsonl"
DENOISE_REPORT = "denoise.json"
DENOISE_SCORES = "denoise_scores.trec"


# ------------------------------------------------------------------------------------------- config


@dataclass
class CandidateLists:
    candidates: Literal["dense", "bm25"] = "dense"  # who retrieves the top-N: the initial retriever, or BM25
    depth: int = 100  # N: undenoised negatives are sampled from these ranks
    mined: int = 31  # negatives per query written to the undenoised lists
    list_size: int = 8  # entries per list in a step: the positive and list_size - 1 negatives (paper: 32 on NQ)
    augmentation: Literal["hybrid", "undenoised", "denoised"] = "hybrid"
    exclude_answers: bool = True  # never take an answer-containing passage as a negative (queries with answers)

    def __post_init__(self) -> None:
        check_list_size(self.list_size)
        if self.depth < 1 or self.mined < 1:
            raise ConfigError(f"depth and mined must be at least 1, got depth={self.depth}, mined={self.mined}")


@dataclass
class DenoiseConfig:
    """Relabel the retriever's top-`depth` with the re-ranker (see `distillir.rankers.denoise`)."""

    depth: int = 30  # ranks re-scored (each costs one cross-encoder pass per query)
    pos_threshold: float = 0.9  # scaled score >= this: an extra positive
    neg_threshold: float = 0.1  # scaled score <= this: a hard negative; in between: dropped
    # Thresholds on sigmoid(logit); "relative": on sigmoid(logit - the positive's logit), for listwise-trained
    # re-rankers (their logits have no calibrated offset); "logit": on the logit itself.
    scale: Literal["sigmoid", "relative", "logit"] = "sigmoid"
    max_negatives: int | None = None  # keep at most this many (the best-ranked); None: all
    extra_positives: bool = True  # False: high-scored passages are only kept out of the negatives
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_thresholds(self.pos_threshold, self.neg_threshold, self.scale)
        if self.depth < 1:
            raise ConfigError(f"depth must be at least 1, got {self.depth}")


@dataclass
class RocketQAv2Config(RunConfig):
    output_dir: str = "runs/rocketqa-v2"
    retriever: str = DEFAULT_ENCODER  # hub id or local path
    shared_encoder: bool = False  # RocketQA's dual encoder has separate towers (both start from `retriever`)
    normalize: bool | None = None  # unit-length embeddings; None: as the model's files say
    query_max_length: int = 32
    passage_max_length: int = 128
    temperature: float | None = None  # divides s_de; None: 0.05 for normalised embeddings, else 1
    ranker: str = DEFAULT_ENCODER  # a trained cross-encoder, or any encoder (fresh head: warm it up)
    ranker_max_length: int = 160  # query + passage tokens
    ranker_learning_rate: float | None = None  # None: trainer.learning_rate
    ranker_warmup: RankerWarmup = field(default_factory=RankerWarmup)
    mode: Literal["dynamic", "static"] = "dynamic"
    data: TrainSplit = field(default_factory=TrainSplit)
    lists: CandidateLists = field(default_factory=CandidateLists)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    # No gradient clipping by default: the Trainer clips the norm over all parameters together, so the
    # retriever's large gradients (scores / 0.05) would shrink the re-ranker's steps in joint training.
    trainer: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=1e-5, warmup_ratio=0.1, max_grad_norm=None))
    eval: PipelineEvalConfig | None = None

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        if self.ranker_learning_rate is not None and self.ranker_learning_rate <= 0:
            raise ConfigError(f"ranker_learning_rate must be positive, got {self.ranker_learning_rate}")


class JointLoss:
    """Trainer `loss_fn`: `JointListwiseLoss` over the retriever's and the re-ranker's scores of each list."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature
        self.loss = JointListwiseLoss()

    def __call__(self, model: RetrieverRanker, batch: dict[str, Any]):
        mask = batch["mask"]
        s_de = retriever_list_scores(model.retriever, batch, self.temperature)
        s_ce = model.ranker_scores(batch["pairs"], mask.shape[1])
        return self.loss(s_de, s_ce, mask, ranker_frozen=model.ranker_frozen)


# ------------------------------------------------------------------------------------------- recipe


class RocketQAv2Recipe(Recipe):
    """RocketQAv2: retriever and re-ranker trained jointly by dynamic listwise distillation (Ren et al., 2021)."""

    name = "rocketqa-v2"
    Config = RocketQAv2Config

    def run(self, config: RocketQAv2Config, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        out = self.start(config)
        state = process_state()
        dataset, positives, queries = config.data.labelled(config.seed)

        retriever = load_retriever(config.retriever, config)
        ranker = load_ranker(config.ranker, config)
        baseline = self._baseline(config, retriever, out)

        lists_dir = out / LISTS_DIR
        undenoised = self._undenoised(config, dataset, queries, positives, retriever, out)
        warmup = None
        ranker_source = config.ranker
        if config.ranker_warmup.steps > 0:
            ranker, warmup = self._warm_up(config, ranker, undenoised, dataset.corpus, out / WARMUP_DIR, callbacks)
            ranker_source = str(out / WARMUP_DIR / FINAL_DIR)
        denoised, denoise_stats = [], None
        if config.lists.augmentation in ("hybrid", "denoised"):
            denoised, denoise_stats = self._denoised(config, dataset, queries, positives, retriever, ranker, out)
        examples = {"hybrid": undenoised + denoised, "undenoised": undenoised, "denoised": denoised}[
            config.lists.augmentation]
        if not examples:
            raise ConfigError(f"no {config.lists.augmentation} training lists: every query lost its negatives "
                              f"(see {lists_dir / DENOISE_REPORT}); loosen denoise.neg_threshold")

        dynamic = config.mode == "dynamic"
        model = RetrieverRanker(retriever, ranker, ranker_frozen=not dynamic)
        groups = [{"params": retriever, "lr": config.trainer.learning_rate}]
        if dynamic:
            groups.append({"params": ranker, "lr": config.ranker_learning_rate or config.trainer.learning_rate})
        args = phase_arguments(config.trainer, out, seed=config.seed, resume=config.resume)
        collate = CandidateListCollator(dataset.corpus, config.lists.list_size, retriever=retriever, ranker=ranker)
        loss = JointLoss(default_temperature(retriever, config.temperature))
        trainer = Trainer(model, args, examples, collate, loss_fn=loss, param_groups=groups, callbacks=callbacks)
        summary = trainer.train()

        final = out / FINAL_DIR
        metrics = None
        if state.is_main_process:
            retriever.save_pretrained(final / "retriever")
            if dynamic:
                ranker.save_pretrained(final / "ranker")
            if config.eval is not None:
                logger.info("evaluating the trained retriever on %s/%s", config.eval.dataset, config.eval.split)
                evaluated = evaluate_pipeline(retriever, config.eval, seed=config.seed, ranker=ranker)
                metrics = {"trained": evaluated["retriever"], "baseline": baseline, "reranked": evaluated["reranked"]}
                write_json(out / METRICS_FILE, metrics)
        state.wait_for_everyone()
        results = {
            "recipe": self.name,
            "mode": config.mode,
            "output_dir": str(out),
            "final_retriever": str(final / "retriever"),
            "final_ranker": str(final / "ranker") if dynamic else ranker_source,
            "train_examples": {"undenoised": len(undenoised), "denoised": len(denoised), "used": len(examples)},
            "denoise": denoise_stats,
            "ranker_warmup": warmup,
            "train": summary,
            "metrics": metrics and metrics["trained"],
            "baseline_metrics": baseline,
            "reranked_metrics": metrics and metrics["reranked"],
        }
        self.write_results(out, results)
        return results

    # ----------------------------------------------------------------------------------- steps

    def _baseline(self, config, retriever, out: Path):
        """The untrained retriever's metrics (main process), kept in metrics.json so a resumed run reuses them."""
        if config.eval is None or not config.eval.baseline or not process_state().is_main_process:
            return None
        saved = saved_baseline(out / METRICS_FILE, config.resume)
        if saved is not None:
            return saved
        logger.info("evaluating the untrained retriever on %s/%s", config.eval.dataset, config.eval.split)
        baseline = evaluate_pipeline(retriever, config.eval, seed=config.seed, cache=True)["retriever"]
        write_json(out / METRICS_FILE, {"trained": None, "baseline": baseline, "reranked": None})
        return baseline

    def _undenoised(self, config, dataset, queries, positives, retriever, out: Path):
        def build():
            lists = config.lists
            run = self._candidates(config, dataset, queries, retriever, out)
            return undenoised_lists(run, queries, dataset.corpus, positives, n=lists.mined, depth=lists.depth,
                                    exclude_answers=lists.exclude_answers, seed=config.seed)

        return read_or_build_lists(out / LISTS_DIR / UNDENOISED_FILE, dataset.corpus, config.resume, build,
                                   label="undenoised lists")

    def _candidates(self, config, dataset, queries, retriever, out: Path):
        path = out / CANDIDATES_FILE
        if path.is_file():  # written by this run: a fresh run refuses a directory that holds one
            return Run.read(path)
        depth = max(config.lists.depth, config.denoise.depth)
        logger.info("retrieving the top-%d candidates of %d training queries with %s", depth, len(queries),
                    config.lists.candidates)
        return candidate_run(config.lists.candidates, retriever, dataset.corpus, queries, depth, path, cache=True)

    def _warm_up(self, config, ranker, undenoised, corpus, phase_dir: Path, callbacks):
        return warm_up_ranker(ranker, undenoised, corpus, config.lists.list_size, config.ranker_warmup, config.trainer,
                              phase_dir, seed=config.seed, resume=config.resume, callbacks=callbacks)

    def _denoised(self, config, dataset, queries, positives, retriever, ranker, out: Path):
        report = out / LISTS_DIR / DENOISE_REPORT

        def build():
            d = config.denoise
            run = self._candidates(config, dataset, queries, retriever, out)
            result = denoise_lists(
                ranker, run, queries, dataset.corpus, positives, depth=d.depth, pos_threshold=d.pos_threshold,
                neg_threshold=d.neg_threshold, scale=d.scale, max_negatives=d.max_negatives,
                extra_positives=d.extra_positives, exclude_answers=config.lists.exclude_answers,
                batch_size=d.batch_size,
            )
            result.scores.write_trec(out / LISTS_DIR / DENOISE_SCORES, tag="denoise")
            write_json(report, {**result.stats.as_dict(), "scale": d.scale, "pos_threshold": d.pos_threshold,
                                "neg_threshold": d.neg_threshold, "depth": d.depth})
            if len(result.examples) < len(queries) / 2:
                logger.warning(
                    "only %d of %d queries kept a denoised list: with %s thresholds %.3g / %.3g, the re-ranker's "
                    "scaled scores (quantiles %s) rarely reach the negative threshold. Raise denoise.neg_threshold, "
                    "or train the re-ranker longer (ranker_warmup.steps).", len(result.examples), len(queries),
                    d.scale, d.pos_threshold, d.neg_threshold, result.stats.quantiles)
            return result.examples

        examples = read_or_build_lists(out / LISTS_DIR / DENOISED_FILE, dataset.corpus, config.resume, build,
                                       label="denoised lists")
        return examples, read_json(report)


__all__ = ["CandidateLists", "DenoiseConfig", "JointLoss", "RocketQAv2Config", "RocketQAv2Recipe"]
