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

Also home of the parts AR2 shares: `RetrieverRanker`, `retriever_list_scores`, `dense_candidates`,
`PipelineEvalConfig` and `evaluate_pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from distillir.errors import ConfigError
from distillir.models import DEFAULT_ENCODER
from distillir.recipes.base import FINAL_DIR, METRICS_FILE, EvalConfig, Recipe, seed_everything
from distillir.recipes.cross_encoder import (
    CandidateListCollator,
    TrainSplit,
    check_head_learning_rate,
    check_list_size,
    phase_arguments,
    phase_done,
    read_phase_summary,
    refuse_to_overwrite,
    rerank_run,
    train_ranker,
)
from distillir.training.trainer import TrainConfig, Trainer, check_max_grad_norm, process_state
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

CANDIDATES_FILE = "candidates.trec"
LISTS_DIR = "lists"
UNDENOISED_FILE = "undenoised.jsonl"
DENOISED_FILE = "denoised.jsonl"
DENOISE_REPORT = "denoise.json"
DENOISE_SCORES = "denoise_scores.trec"
WARMUP_DIR = "ranker-warmup"


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
        from distillir.rankers.denoise import check_thresholds

        check_thresholds(self.pos_threshold, self.neg_threshold, self.scale)
        if self.depth < 1:
            raise ConfigError(f"depth must be at least 1, got {self.depth}")


@dataclass
class RankerWarmup:
    """Train the re-ranker alone on the undenoised lists before it denoises and teaches (0 steps: skip)."""

    steps: int = 0
    learning_rate: float = 2e-5
    head_learning_rate: float | None = None  # a fresh classifier head's peak rate (None: learning_rate)
    # The ranker trains alone here, so clipping cannot shrink a retriever's steps (as it would in joint
    # training); a fresh head at a high rate is trained clipped, as in the cross-encoder recipe.
    max_grad_norm: float | None = 1.0  # None: no clipping

    def __post_init__(self) -> None:
        if self.steps < 0 or self.learning_rate <= 0:
            raise ConfigError(f"need steps >= 0 and learning_rate > 0, got {self.steps}, {self.learning_rate}")
        check_max_grad_norm(self.max_grad_norm)
        check_head_learning_rate(self.head_learning_rate)


@dataclass
class PipelineEvalConfig(EvalConfig):
    """Evaluate the retriever (dense index over the split's corpus); with `rerank_top_k`, also the re-ranker
    re-ranking the retriever's top-k."""

    rerank_top_k: int = 0  # 0: evaluate the retriever only


@dataclass
class RocketQAv2Config:
    output_dir: str = "runs/rocketqa-v2"
    seed: int = 42
    resume: bool = False
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
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"temperature must be positive (or null for the default), got {self.temperature}")
        if self.ranker_learning_rate is not None and self.ranker_learning_rate <= 0:
            raise ConfigError(f"ranker_learning_rate must be positive, got {self.ranker_learning_rate}")


# ------------------------------------------------------------------------------------- shared parts


class RetrieverRanker(nn.Module):
    """A retriever (BiEncoder) and a re-ranker (CrossEncoder) as one module, so one Trainer (one optimizer,
    one checkpoint) trains both. `ranker_frozen` turns the re-ranker into a fixed teacher: no parameter
    requires a gradient, and it stays in eval mode (no dropout) whatever `train()` is called with."""

    def __init__(self, retriever: nn.Module, ranker: nn.Module, ranker_frozen: bool = False):
        super().__init__()
        self.retriever = retriever
        self.ranker = ranker
        self.ranker_frozen = ranker_frozen
        if ranker_frozen:
            ranker.requires_grad_(False)
            ranker.eval()

    def train(self, mode: bool = True) -> RetrieverRanker:
        super().train(mode)
        if self.ranker_frozen:
            self.ranker.eval()
        return self

    def ranker_scores(self, pairs: Any, list_size: int) -> Tensor:
        """(B, n) re-ranker logits; without building a graph when the re-ranker is frozen."""
        if self.ranker_frozen:
            with torch.no_grad():
                return self.ranker.list_scores(pairs, list_size)
        return self.ranker.list_scores(pairs, list_size)


def retriever_list_scores(encoder, batch: dict[str, Any], temperature: float = 1.0) -> Tensor:
    """(B, n) retriever scores of each query against its own list: E_q(q) . E_p(p) * scale / temperature."""
    mask = batch["mask"]
    q = encoder.encode_query(batch["query"])
    p = encoder.encode_passage(batch["passage"]).view(mask.shape[0], mask.shape[1], -1)
    return (q.unsqueeze(1) * p).sum(dim=-1) * encoder.settings.scale / temperature


def default_temperature(encoder, temperature: float | None) -> float:
    return temperature or (0.05 if encoder.settings.normalize else 1.0)


class JointListwiseLoss:
    """RocketQAv2's L = L_sup + L_KL over each query's list (positive first), as a Trainer `loss_fn`.

    Dynamic (a trainable re-ranker): KL without stop-gradient, so the re-ranker learns from L_sup and L_KL
    and the retriever from L_KL. Static (frozen re-ranker): the loss is L_KL alone; L_sup is still logged.
    """

    def __init__(self, temperature: float = 1.0):
        from distillir.losses.kl_divergence import KLDivergenceLoss
        from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss

        self.temperature = temperature
        self.supervised = ListwiseCrossEntropyLoss()
        self.kl = KLDivergenceLoss(detach_teacher=False)

    def __call__(self, model: RetrieverRanker, batch: dict[str, Any]) -> dict[str, Tensor]:
        mask = batch["mask"]
        s_de = retriever_list_scores(model.retriever, batch, self.temperature)
        s_ce = model.ranker_scores(batch["pairs"], mask.shape[1])
        supervised = self.supervised(s_ce, mask=mask)
        kl = self.kl(s_de, s_ce, mask)
        loss = kl if model.ranker_frozen else supervised + kl
        return {"loss": loss, "sup": supervised.detach(), "kl": kl.detach()}


def dense_candidates(encoder, corpus, queries, depth: int, batch_size: int = 64, cache: bool = False):
    """The retriever's top-`depth` for `queries`: embed `corpus` (the index refresh), then search."""
    from distillir.retrievers.dense.retriever import DenseRetriever

    retriever = DenseRetriever.build(corpus, encoder, batch_size=batch_size, cache=cache)
    run = retriever.search(queries, top_k=depth)
    run.name = "candidates"
    return run


def candidate_run(kind: str, encoder, corpus, queries, depth: int, path: Path, batch_size: int = 64, cache=False):
    """Top-N candidates from the dense retriever or BM25, written to `path` (TREC) for inspection."""
    if kind == "bm25":
        from distillir.retrievers.bm25 import bm25_cached

        run = bm25_cached(corpus).search(queries, top_k=depth)
    else:
        run = dense_candidates(encoder, corpus, queries, depth, batch_size=batch_size, cache=cache)
    run.write_trec(path, tag=kind)
    return run


def evaluate_pipeline(encoder, eval_config: PipelineEvalConfig, seed: int = 0, ranker=None,
                      cache: bool = False) -> dict[str, Any]:
    """Retriever metrics on the eval split; with a ranker and `rerank_top_k`, also those of its re-ranking.

    Returns {"retriever": metrics, "reranked": metrics or None}; the index is built once for both.
    """
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run
    from distillir.retrievers.dense.retriever import DenseRetriever

    dataset = load_dataset(eval_config.dataset, eval_config.split, max_queries=eval_config.max_queries, seed=seed)
    index = DenseRetriever.build(dataset.corpus, encoder, batch_size=eval_config.batch_size, cache=cache)
    run = index.search(dataset.queries, top_k=eval_config.top_k)

    def metrics(r):
        return {"dataset": dataset.name, "split": dataset.split,
                **evaluate_run(r, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)}

    reranked = None
    if ranker is not None and eval_config.rerank_top_k > 0:
        reranked = metrics(rerank_run(ranker, run, dataset, eval_config.rerank_top_k, eval_config.batch_size))
        reranked["rerank_top_k"] = eval_config.rerank_top_k
    return {"retriever": metrics(run), "reranked": reranked}


def load_retriever(name_or_path, config) -> Any:
    """The BiEncoder a joint recipe starts from, with the config's tower/length settings."""
    from distillir.retrievers.dense.encoder import BiEncoder

    return BiEncoder.from_pretrained(
        name_or_path, shared=config.shared_encoder, normalize=config.normalize,
        query_max_length=config.query_max_length, passage_max_length=config.passage_max_length,
    )


def load_ranker(name_or_path, config) -> Any:
    """The CrossEncoder a joint recipe starts from; warns when its scoring head is new and no warm-up trains it."""
    from transformers import AutoConfig

    from distillir.models import resolve_model
    from distillir.rankers.cross_encoder import CrossEncoder

    architectures = AutoConfig.from_pretrained(resolve_model(name_or_path)).architectures or []
    trained_head = any(a.endswith("ForSequenceClassification") for a in architectures)
    if not trained_head and config.ranker_warmup.steps == 0:
        logger.warning("the ranker %s has no trained scoring head (a fresh one is initialised) and no warm-up: "
                       "set ranker_warmup.steps, or give a model from `distillir train cross-encoder`.",
                       name_or_path)
    query_max_length = min(config.query_max_length, config.ranker_max_length // 2)
    return CrossEncoder.from_pretrained(name_or_path, max_length=config.ranker_max_length,
                                        query_max_length=query_max_length)


# ------------------------------------------------------------------------------------------- recipe


class RocketQAv2Recipe(Recipe):
    """RocketQAv2: retriever and re-ranker trained jointly by dynamic listwise distillation (Ren et al., 2021)."""

    name = "rocketqa-v2"
    Config = RocketQAv2Config

    def run(self, config: RocketQAv2Config, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        from distillir.data.datasets import load_dataset
        from distillir.data.negatives import positives_from_dataset

        out = Path(config.output_dir)
        refuse_to_overwrite(out, config.resume, [WARMUP_DIR, LISTS_DIR, CANDIDATES_FILE])
        out = self.prepare_output_dir(config)
        seed_everything(config.seed)
        state = process_state()
        dataset = load_dataset(config.data.dataset, config.data.split, max_queries=config.data.max_train_queries,
                               seed=config.seed)
        positives = positives_from_dataset(dataset)
        queries = dataset.queries.subset([q for q in dataset.queries.ids if q in positives])

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
        loss = JointListwiseLoss(default_temperature(retriever, config.temperature))
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
        import json

        if config.eval is None or not config.eval.baseline or not process_state().is_main_process:
            return None
        path = out / METRICS_FILE
        if config.resume and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8")).get("baseline")
            if saved is not None:
                return saved
        logger.info("evaluating the untrained retriever on %s/%s", config.eval.dataset, config.eval.split)
        baseline = evaluate_pipeline(retriever, config.eval, seed=config.seed, cache=True)["retriever"]
        write_json(path, {"trained": None, "baseline": baseline, "reranked": None})
        return baseline

    def _undenoised(self, config, dataset, queries, positives, retriever, out: Path):
        from distillir.data.negatives import read_training_lists, write_training_lists
        from distillir.rankers.denoise import undenoised_lists

        path = out / LISTS_DIR / UNDENOISED_FILE
        state = process_state()
        with state.main_process_first():
            if path.is_file() and (config.resume or not state.is_main_process):
                logger.info("reading undenoised lists from %s", path)
                return read_training_lists(path, dataset.corpus)
            lists = config.lists
            run = self._candidates(config, dataset, queries, retriever, out)
            examples = undenoised_lists(run, queries, dataset.corpus, positives, n=lists.mined, depth=lists.depth,
                                        exclude_answers=lists.exclude_answers, seed=config.seed)
            write_training_lists(path, examples)
            logger.info("wrote %d undenoised lists to %s", len(examples), path)
            return examples

    def _candidates(self, config, dataset, queries, retriever, out: Path):
        from distillir.data.run import Run

        path = out / CANDIDATES_FILE
        if path.is_file():  # written by this run: a fresh run refuses a directory that holds one
            return Run.read(path)
        depth = max(config.lists.depth, config.denoise.depth)
        logger.info("retrieving the top-%d candidates of %d training queries with %s", depth, len(queries),
                    config.lists.candidates)
        return candidate_run(config.lists.candidates, retriever, dataset.corpus, queries, depth, path, cache=True)

    def _warm_up(self, config, ranker, undenoised, corpus, phase_dir: Path, callbacks):
        from distillir.rankers.cross_encoder import CrossEncoder

        if phase_done(phase_dir):
            logger.info("ranker warm-up already done: loading %s", phase_dir / FINAL_DIR)
            return CrossEncoder.from_pretrained(phase_dir / FINAL_DIR), read_phase_summary(phase_dir)
        logger.info("warming up the ranker for %d steps on the undenoised lists", config.ranker_warmup.steps)
        summary = train_ranker(ranker, undenoised, corpus, config.lists.list_size, config.trainer, phase_dir,
                               seed=config.seed, resume=config.resume, callbacks=callbacks,
                               max_steps=config.ranker_warmup.steps,
                               learning_rate=config.ranker_warmup.learning_rate,
                               max_grad_norm=config.ranker_warmup.max_grad_norm,
                               head_learning_rate=config.ranker_warmup.head_learning_rate)
        return ranker, summary

    def _denoised(self, config, dataset, queries, positives, retriever, ranker, out: Path):
        import json

        from distillir.data.negatives import read_training_lists, write_training_lists
        from distillir.rankers.denoise import denoise_lists

        path = out / LISTS_DIR / DENOISED_FILE
        report = out / LISTS_DIR / DENOISE_REPORT
        state = process_state()
        with state.main_process_first():
            if path.is_file() and (config.resume or not state.is_main_process):
                logger.info("reading denoised lists from %s", path)
                stats = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
                return (read_training_lists(path, dataset.corpus) if path.stat().st_size else []), stats
            d = config.denoise
            run = self._candidates(config, dataset, queries, retriever, out)
            result = denoise_lists(
                ranker, run, queries, dataset.corpus, positives, depth=d.depth, pos_threshold=d.pos_threshold,
                neg_threshold=d.neg_threshold, scale=d.scale, max_negatives=d.max_negatives,
                extra_positives=d.extra_positives, exclude_answers=config.lists.exclude_answers,
                batch_size=d.batch_size,
            )
            result.scores.write_trec(out / LISTS_DIR / DENOISE_SCORES, tag="denoise")
            stats = {**result.stats.as_dict(), "scale": d.scale, "pos_threshold": d.pos_threshold,
                     "neg_threshold": d.neg_threshold, "depth": d.depth}
            write_json(report, stats)
            write_training_lists(path, result.examples)
            logger.info("wrote %d denoised lists to %s", len(result.examples), path)
            if len(result.examples) < len(queries) / 2:
                logger.warning(
                    "only %d of %d queries kept a denoised list: with %s thresholds %.3g / %.3g, the re-ranker's "
                    "scaled scores (quantiles %s) rarely reach the negative threshold. Raise denoise.neg_threshold, "
                    "or train the re-ranker longer (ranker_warmup.steps).", len(result.examples), len(queries),
                    d.scale, d.pos_threshold, d.neg_threshold, result.stats.quantiles)
            return result.examples, stats


__all__ = [
    "CandidateLists",
    "DenoiseConfig",
    "JointListwiseLoss",
    "PipelineEvalConfig",
    "RankerWarmup",
    "RetrieverRanker",
    "RocketQAv2Config",
    "RocketQAv2Recipe",
    "dense_candidates",
    "evaluate_pipeline",
    "retriever_list_scores",
]
