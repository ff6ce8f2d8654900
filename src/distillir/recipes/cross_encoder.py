"""Train a cross-encoder re-ranker, and the candidate-list machinery the joint recipes share.

The re-ranker every distillation recipe here leans on (the teacher of RocketQAv2 and AR2, the denoiser
of RocketQA) reads [query; title: passage] and gives one logit. It is trained as RocketQAv2 trains its
re-ranker (Ren et al., 2021, L_sup) and AR2 its ranker (Zhang et al., 2022): listwise softmax
cross-entropy over a list of one positive followed by mined hard negatives,

    L = - log softmax(s_ce(q, [p+, n_1 .. n_k]))[p+]

Steps: load the training split (positives from its qrels, else its gold passage ids) -> BM25 (or a given
run) over its corpus -> mine negatives from the top-N, excluding positives and answer-containing passages
-> write `train_lists.jsonl` -> train -> save `final/` (`CrossEncoder.from_pretrained` and
`distillir rerank --model` load it) -> optionally re-rank the eval split's first-stage top-k and report the
metrics beside the first stage's.

Shared with `rocketqa_v2` and `ar2`: `CandidateListCollator` (fixed-size candidate lists, positive first,
tokenized for a retriever, a ranker or both), `train_ranker` (one resumable ranker training phase) and
`evaluate_rerank`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillir.errors import ConfigError
from distillir.models import DEFAULT_ENCODER
from distillir.recipes.base import FINAL_DIR, METRICS_FILE, Recipe, mined_training_lists, seed_everything
from distillir.training.trainer import TrainConfig, Trainer, TrainingArguments, process_state
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

LISTS_FILE = "train_lists.jsonl"
PHASE_SUMMARY_FILE = "summary.json"


# ------------------------------------------------------------------------------------------- config


@dataclass
class TrainSplit:
    """The labelled split to train on."""

    dataset: str = "scifact"  # a known name or a dataset directory (BEIR or squad-open layout)
    split: str = "train"
    max_train_queries: int | None = None  # a seeded sample of the split's queries


@dataclass
class RankerNegatives:
    source: str = "bm25"  # "bm25", or a run file (TREC or JSONL) over the training split's queries and corpus
    depth: int = 100  # ranks of the source to mine from
    mined: int = 15  # negatives kept per query in train_lists.jsonl (each step samples list_size - 1 of them)
    sample: bool = False  # False: the best-ranked negatives; True: a seeded random draw within `depth`
    exclude_answers: bool = True  # drop passages containing an answer string (when queries have answers)
    lists: str | None = None  # training lists (JSONL, e.g. from `distillir mine`) used as given: nothing is mined

    def __post_init__(self) -> None:
        if self.depth < 1 or self.mined < 1:
            raise ConfigError(f"depth and mined must be at least 1, got depth={self.depth}, mined={self.mined}")


@dataclass
class RerankEvalConfig:
    """Re-rank a first stage's top-k on a labelled split and report both runs' metrics."""

    dataset: str
    split: str = "test"
    max_queries: int | None = None  # a seeded sample, for quick looks
    first_stage: str = "bm25"  # "bm25", or a run file (TREC or JSONL) over the split's queries
    depth: int = 100  # first-stage depth evaluated (and re-ranked passages kept ahead of the rest)
    top_k: int = 100  # passages re-ranked per query
    batch_size: int = 64


@dataclass
class CrossEncoderConfig:
    output_dir: str = "runs/cross-encoder"
    seed: int = 42
    resume: bool = False
    model: str = DEFAULT_ENCODER  # hub id or local path: a plain encoder gets a fresh one-logit head
    max_length: int = 256  # query + passage tokens
    query_max_length: int | None = None  # None: 64, or half of max_length if less
    list_size: int = 8  # one positive and list_size - 1 negatives per query in each step
    head_learning_rate: float | None = None  # the classifier head's peak rate (None: trainer.learning_rate)
    data: TrainSplit = field(default_factory=TrainSplit)
    negatives: RankerNegatives = field(default_factory=RankerNegatives)
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5, warmup_ratio=0.1))
    eval: RerankEvalConfig | None = None

    def __post_init__(self) -> None:
        check_list_size(self.list_size)
        check_head_learning_rate(self.head_learning_rate)


def check_head_learning_rate(head_learning_rate: float | None) -> None:
    if head_learning_rate is not None and head_learning_rate <= 0:
        raise ConfigError(f"head_learning_rate must be positive, got {head_learning_rate}")


def check_list_size(list_size: int) -> None:
    if list_size < 2:
        raise ConfigError(f"list_size must be at least 2 (a positive and a negative), got {list_size}")


# ------------------------------------------------------------------------------------------- recipe


class CrossEncoderRecipe(Recipe):
    """Cross-encoder re-ranker: listwise CE over a positive and mined hard negatives (RocketQAv2's L_sup)."""

    name = "cross-encoder"
    Config = CrossEncoderConfig

    def run(self, config: CrossEncoderConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        from distillir.data.datasets import load_dataset
        from distillir.rankers.cross_encoder import CrossEncoder

        out = self.prepare_output_dir(config)
        seed_everything(config.seed)
        dataset = load_dataset(config.data.dataset, config.data.split, max_queries=config.data.max_train_queries,
                               seed=config.seed)
        neg = config.negatives
        examples = mined_training_lists(
            dataset,
            out / LISTS_FILE,
            lambda queries: first_stage_run(neg.source, dataset.corpus, queries, neg.depth),
            neg,
            seed=config.seed,
            resume=config.resume,
            require_negatives=True,
        )
        ranker = CrossEncoder.from_pretrained(config.model, max_length=config.max_length,
                                              query_max_length=config.query_max_length)
        summary = train_ranker(ranker, examples, dataset.corpus, config.list_size, config.trainer, out,
                               seed=config.seed, resume=config.resume, callbacks=callbacks,
                               head_learning_rate=config.head_learning_rate)
        final = out / FINAL_DIR
        metrics = None
        state = process_state()
        if state.is_main_process and config.eval is not None:
            metrics = evaluate_rerank(ranker, config.eval, seed=config.seed)
            write_json(out / METRICS_FILE, metrics)
        state.wait_for_everyone()
        results = {
            "recipe": self.name,
            "output_dir": str(out),
            "final_model": str(final),
            "train_examples": len(examples),
            "train": summary,
            "metrics": metrics,
        }
        self.write_results(out, results)
        return results


# ------------------------------------------------------------------------------------ shared parts


def first_stage_run(source: str, corpus, queries, depth: int):
    """BM25's top-`depth` for `queries` over `corpus`, or a run read from a file (cut to `depth`)."""
    if source == "bm25":
        from distillir.retrievers.bm25 import bm25_cached

        return bm25_cached(corpus).search(queries, top_k=depth)
    from distillir.data.run import Run

    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"first-stage source must be 'bm25' or a run file; {source!r} is neither")
    run = Run.read(path)
    missing = [qid for qid in queries.ids if qid not in run]
    if len(missing) == len(queries.ids):
        raise ConfigError(f"the run {path} has none of the {len(queries.ids)} queries of this split")
    if missing:
        logger.warning("the run %s lacks %d of %d queries: they get no candidates", path, len(missing), len(queries))
    return run.top(depth)


class CandidateListCollator:
    """Examples -> one fixed-size candidate list per query: [a positive, negatives...], positive first.

    Each list takes one of the example's positives and up to `list_size - 1` of its negatives, drawn with
    Python's `random` (whose state the Trainer checkpoints, so a resumed run draws the same). A list with
    too few negatives is padded with copies of its positive that `mask` marks False (padding), so every
    loss ignores them. The batch holds (for B queries, n = list_size, passages query-major):

        "mask"     (B, n) bool, True = a real entry
        "query", "passage"   with `retriever`: tokenized queries (B) and passages (B * n) for a BiEncoder
        "pairs"    with `ranker`: tokenized (query, passage) pairs (B * n) for a CrossEncoder
    """

    def __init__(self, corpus, list_size: int, *, retriever=None, ranker=None):
        check_list_size(list_size)
        if retriever is None and ranker is None:
            raise ValueError("CandidateListCollator needs a retriever, a ranker or both to tokenize for")
        self.corpus = corpus
        self.list_size = list_size
        self.retriever = retriever
        self.ranker = ranker

    def lists(self, examples) -> tuple[list[list[str]], list[list[bool]]]:
        """Passage ids (B x n) and the padding mask, drawing positives and negatives."""
        ids, mask = [], []
        for ex in examples:
            positive = random.choice(ex.positives)
            negatives = random.sample(ex.negatives, min(self.list_size - 1, len(ex.negatives)))
            pad = self.list_size - 1 - len(negatives)
            ids.append([positive, *negatives, *([positive] * pad)])
            mask.append([True] * (1 + len(negatives)) + [False] * pad)
        return ids, mask

    def __call__(self, examples):
        import torch

        ids, mask = self.lists(examples)
        rows = [self.corpus.index_of[pid] for row in ids for pid in row]
        titles = [self.corpus.titles[r] for r in rows]
        texts = [self.corpus.texts[r] for r in rows]
        batch: dict[str, Any] = {"mask": torch.tensor(mask, dtype=torch.bool)}
        if self.retriever is not None:
            batch["query"] = self.retriever.tokenize_queries([ex.query for ex in examples])
            batch["passage"] = self.retriever.tokenize_passages(titles, texts)
        if self.ranker is not None:
            pair_queries = [ex.query for ex in examples for _ in range(self.list_size)]
            batch["pairs"] = dict(self.ranker.tokenize(pair_queries, titles, texts))
        return batch


def ranker_list_loss(ranker, batch):
    """ListwiseCE of the ranker's scores over each list (positive first): the supervised ranker loss."""
    from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss

    mask = batch["mask"]
    scores = ranker.list_scores(batch["pairs"], mask.shape[1])
    return ListwiseCrossEntropyLoss()(scores, mask=mask)


def phase_done(phase_dir: Path) -> bool:
    """A training phase is complete once its final/ model is saved (it is written atomically)."""
    return (Path(phase_dir) / FINAL_DIR).is_dir()


def phase_arguments(trainer: TrainConfig, output_dir: Path, *, seed: int, resume: bool, **changes: Any):
    """TrainingArguments for one phase: the shared `trainer` section with per-phase changes (max_steps, lr)."""
    phase = dataclasses.replace(trainer, **changes) if changes else trainer
    return TrainingArguments.from_config(phase, output_dir=output_dir, seed=seed, resume=resume)


def ranker_param_groups(ranker, learning_rate: float, head_learning_rate: float | None,
                        weight_decay: float = 0.0) -> list[dict[str, Any]] | None:
    """AdamW groups giving the ranker's head `head_learning_rate` and its encoder `learning_rate`
    (None when there is no separate head rate: the Trainer's default groups apply)."""
    check_head_learning_rate(head_learning_rate)
    if head_learning_rate is None:
        return None
    head, body = ranker.head_and_body_parameters()
    groups = []
    for params, lr in ((body, learning_rate), (head, head_learning_rate)):
        # As the Trainer's default groups: biases and norm weights are not decayed.
        groups.append({"params": [p for p in params if p.ndim >= 2], "lr": lr, "weight_decay": weight_decay})
        groups.append({"params": [p for p in params if p.ndim < 2], "lr": lr, "weight_decay": 0.0})
    return groups


def on_plateau(loss: float | None, list_size: int, tolerance: float = 0.05) -> bool:
    """Whether a listwise CE loss is within `tolerance` (relative) of ln(list_size), the loss of uniform scores."""
    return loss is not None and loss >= (1 - tolerance) * math.log(list_size)


def train_ranker(
    ranker,
    examples,
    corpus,
    list_size: int,
    trainer_config: TrainConfig,
    output_dir: Path,
    *,
    seed: int,
    resume: bool,
    callbacks: Sequence[Any] = (),
    head_learning_rate: float | None = None,
    **changes: Any,
) -> dict[str, Any]:
    """One ranker training phase in `output_dir`: checkpoints/, log.jsonl, then final/ and summary.json.

    `changes` override fields of `trainer_config` for this phase (e.g. max_steps=500, learning_rate=1e-6).
    `head_learning_rate` gives the classifier head its own peak rate (None: the phase's rate for all).
    Returns the Trainer's summary, also written to `summary.json` so a skipped phase can report it.
    """
    args = phase_arguments(trainer_config, output_dir, seed=seed, resume=resume, **changes)
    collate = CandidateListCollator(corpus, list_size, ranker=ranker)
    groups = ranker_param_groups(ranker, args.learning_rate, head_learning_rate, args.weight_decay)
    trainer = Trainer(ranker, args, examples, collate, loss_fn=ranker_list_loss, callbacks=callbacks,
                      param_groups=groups)
    summary = trainer.train()
    if on_plateau(summary.get("loss"), list_size):
        logger.warning("%s: the ranker's loss ended at %.3f, on the uniform plateau ln(%d) = %.3f: it still scores "
                       "every passage alike, so it cannot denoise or teach yet. Train it longer or at a higher "
                       "learning rate, or start from a trained re-ranker (e.g. `distillir train cross-encoder`)",
                       output_dir, summary["loss"], list_size, math.log(list_size))
    if trainer.is_main_process:
        ranker.save_pretrained(Path(output_dir) / FINAL_DIR)
        write_json(Path(output_dir) / PHASE_SUMMARY_FILE, summary)
    trainer.accelerator.wait_for_everyone()
    return summary


def read_phase_summary(phase_dir: Path) -> dict[str, Any] | None:
    import json

    path = Path(phase_dir) / PHASE_SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def refuse_to_overwrite(out: Path, resume: bool, patterns: Sequence[str]) -> None:
    """ConfigError when `out` already holds parts of a run (glob `patterns`) and this is not a resume."""
    if resume or not out.is_dir():
        return
    found = [p for pattern in patterns for p in out.glob(pattern)]
    if found:
        raise ConfigError(
            f"{out} already holds a run ({found[0].name}); continue it with resume=true (distillir train --resume), "
            "or choose another output_dir"
        )


def evaluate_rerank(ranker, eval_config: RerankEvalConfig, seed: int = 0) -> dict[str, Any]:
    """Metrics of the first stage's run on the eval split and of the same run with its top-k re-ranked."""
    from distillir.data.datasets import load_dataset
    from distillir.evaluation import evaluate_run

    dataset = load_dataset(eval_config.dataset, eval_config.split, max_queries=eval_config.max_queries, seed=seed)
    run = first_stage_run(eval_config.first_stage, dataset.corpus, dataset.queries, eval_config.depth)
    reranked = rerank_run(ranker, run, dataset, eval_config.top_k, eval_config.batch_size)

    def metrics(r):
        return evaluate_run(r, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)

    logger.info("re-ranking the top-%d of %s on %s/%s", eval_config.top_k, eval_config.first_stage, dataset.name,
                dataset.split)
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "rerank_top_k": eval_config.top_k,
        "first_stage": {"name": eval_config.first_stage, **metrics(run)},
        "reranked": metrics(reranked),
    }


def rerank_run(ranker, run, dataset, top_k: int, batch_size: int = 64):
    """`run` with each query's top-k re-ordered by the ranker and the rest kept after them, in their order.

    The tail gets scores below every re-ranked score, so metrics deeper than k (R@100 after re-ranking the
    top 20) still count the first stage's tail instead of treating it as missing.
    """
    from distillir.data.run import Run

    head = ranker.rerank(run, dataset.queries, dataset.corpus, top_k=top_k, batch_size=batch_size)
    merged = Run(name=f"{run.name}.reranked")
    for qid, hits in run.items():
        top = head.get(qid, [])
        floor = min((s for _, s in top), default=0.0)
        tail = hits[top_k:]
        merged.add(qid, [*top, *((pid, floor - 1.0 - i) for i, (pid, _) in enumerate(tail))])
    return merged


__all__ = [
    "CandidateListCollator",
    "CrossEncoderConfig",
    "CrossEncoderRecipe",
    "RankerNegatives",
    "RerankEvalConfig",
    "TrainSplit",
    "evaluate_rerank",
    "first_stage_run",
    "phase_done",
    "ranker_list_loss",
    "refuse_to_overwrite",
    "rerank_run",
    "train_ranker",
]
