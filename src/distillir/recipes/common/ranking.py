"""The ranker side every recipe with a cross-encoder shares: candidate lists, one resumable ranker training
phase, its warm-up, loading, and re-ranking a first stage's run for evaluation.

The ranker loss is the one RocketQAv2 trains its re-ranker with (Ren et al., 2021, L_sup) and AR2 its ranker
(Zhang et al., 2022): listwise softmax cross-entropy over one positive followed by mined hard negatives,
L = - log softmax(s_ce(q, [p+, n_1 .. n_k]))[p+].
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distillir.data.datasets import load_dataset
from distillir.data.run import Run
from distillir.errors import ConfigError
from distillir.evaluation import evaluate_run
from distillir.losses.listwise_ce import ListwiseCrossEntropyLoss
from distillir.models import resolve_model
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.recipes.common.config import RankerWarmup, RerankEvalConfig, check_head_learning_rate, check_list_size
from distillir.recipes.common.run import FINAL_DIR, finish_phase, phase_done, read_phase_summary
from distillir.retrievers.bm25 import bm25_cached
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.trainer import Trainer
from distillir.utils.log import get_logger

logger = get_logger(__name__)

WARMUP_DIR = "ranker-warmup"


def first_stage_run(source: str, corpus, queries, depth: int):
    """BM25's top-`depth` for `queries` over `corpus`, or a run read from a file (cut to `depth`)."""
    if source == "bm25":
        return bm25_cached(corpus).search(queries, top_k=depth)

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


class ScoredListCollator:
    """Teacher-scored lists (`recipes.common.distill.ListExample`) -> {"pairs", "teacher", "mask"} for a ranker
    learning the teacher's scores. A list longer than `list_size` keeps `list_size` members drawn with Python's
    `random` (checkpointed by the Trainer), in their list order; shorter lists are padded with empty passages
    that `mask` marks False. teacher, mask: (B, n); pairs: B * n (query, passage) pairs, query-major."""

    def __init__(self, corpus, list_size: int, ranker):
        check_list_size(list_size)
        self.corpus, self.list_size, self.ranker = corpus, list_size, ranker

    def __call__(self, examples):
        picked = []
        for ex in examples:
            keep = sorted(random.sample(range(len(ex.pids)), min(self.list_size, len(ex.pids))))
            picked.append(([ex.pids[i] for i in keep], [float(ex.scores[i]) for i in keep]))
        n = max(len(pids) for pids, _ in picked)
        titles, texts, teacher, mask = [], [], [], []
        for pids, values in picked:
            rows = [self.corpus.index_of[pid] for pid in pids]
            pad = n - len(pids)
            titles += [self.corpus.titles[r] for r in rows] + [""] * pad
            texts += [self.corpus.texts[r] for r in rows] + [""] * pad
            teacher.append(values + [0.0] * pad)
            mask.append([True] * len(pids) + [False] * pad)
        queries = [ex.query for ex in examples for _ in range(n)]
        return {"pairs": dict(self.ranker.tokenize(queries, titles, texts)),
                "teacher": torch.tensor(teacher, dtype=torch.float32), "mask": torch.tensor(mask, dtype=torch.bool)}


class RankerDistillLoss:
    """Trainer `loss_fn`: a distillation loss (KL, MSE, margin: `recipes.common.distill.distillation_loss`)
    between the ranker's scores over each list and the teacher's."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, ranker, batch):
        mask = batch["mask"]
        scores = ranker.list_scores(batch["pairs"], mask.shape[1]).float()
        return self.loss(scores, batch["teacher"].to(scores.device), mask)


def ranker_list_loss(ranker, batch):
    """ListwiseCE of the ranker's scores over each list (positive first): the supervised ranker loss."""
    mask = batch["mask"]
    scores = ranker.list_scores(batch["pairs"], mask.shape[1])
    return ListwiseCrossEntropyLoss()(scores, mask=mask)


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
    teacher_loss=None,
    **changes: Any,
) -> dict[str, Any]:
    """One ranker training phase in `output_dir`: checkpoints/, log.jsonl, then final/ and summary.json.

    `examples`: training lists (positives and negatives) for the listwise CE; with `teacher_loss` (a
    distillation loss), teacher-scored `ListExample`s whose scores the ranker learns instead.
    `changes` override fields of `trainer_config` for this phase (e.g. max_steps=500, learning_rate=1e-6).
    `head_learning_rate` gives the classifier head its own peak rate (None: the phase's rate for all).
    Returns the Trainer's summary, also written to `summary.json` so a skipped phase can report it.
    """
    args = phase_arguments(trainer_config, output_dir, seed=seed, resume=resume, **changes)
    if teacher_loss is None:
        collate, loss_fn = CandidateListCollator(corpus, list_size, ranker=ranker), ranker_list_loss
    else:
        collate, loss_fn = ScoredListCollator(corpus, list_size, ranker), RankerDistillLoss(teacher_loss)
    groups = ranker_param_groups(ranker, args.learning_rate, head_learning_rate, args.weight_decay)
    trainer = Trainer(ranker, args, examples, collate, loss_fn=loss_fn, callbacks=callbacks, param_groups=groups)
    summary = trainer.train()
    if teacher_loss is None and on_plateau(summary.get("loss"), list_size):
        logger.warning("%s: the ranker's loss ended at %.3f, on the uniform plateau ln(%d) = %.3f: it still scores "
                       "every passage alike, so it cannot denoise or teach yet. Train it longer or at a higher "
                       "learning rate, or start from a trained re-ranker (e.g. `distillir train cross-encoder`)",
                       output_dir, summary["loss"], list_size, math.log(list_size))
    finish_phase(ranker, output_dir, summary, trainer)
    return summary


def evaluate_rerank(ranker, eval_config: RerankEvalConfig, seed: int = 0) -> dict[str, Any]:
    """Metrics of the first stage's run on the eval split and of the same run with its top-k re-ranked."""
    dataset = load_dataset(eval_config.dataset, eval_config.split, max_queries=eval_config.max_queries, seed=seed)
    run = first_stage_run(eval_config.first_stage, dataset.corpus, dataset.queries, eval_config.depth)
    if hasattr(ranker, "with_inference_dtype"):
        ranker.with_inference_dtype(eval_config.dtype)
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
    pairs = sum(min(len(hits), top_k) for hits in run.values())
    head = ranker.rerank(run, dataset.queries, dataset.corpus, top_k=top_k, batch_size=batch_size,
                         show_progress=pairs >= 2048)  # a bar when it takes a while
    return with_tail(head, run, top_k)


def with_tail(head, run, top_k: int):
    """`head` (each query's re-ranked top k of `run`) followed by the rest of `run` in its order, scored below
    every re-ranked score."""
    merged = Run(name=f"{run.name}.reranked")
    for qid, hits in run.items():
        top = head.get(qid, [])
        floor = min((s for _, s in top), default=0.0)
        tail = hits[top_k:]
        merged.add(qid, [*top, *((pid, floor - 1.0 - i) for i, (pid, _) in enumerate(tail))])
    return merged


def load_ranker(name_or_path, config) -> Any:
    """The CrossEncoder a joint recipe starts from; warns when its scoring head is new and no warm-up trains it."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(resolve_model(name_or_path)).architectures or []
    trained_head = any(a.endswith("ForSequenceClassification") for a in architectures)
    if not trained_head and config.ranker_warmup.steps == 0:
        logger.warning("the ranker %s has no trained scoring head (a fresh one is initialised) and no warm-up: "
                       "set ranker_warmup.steps, or give a model from `distillir train cross-encoder`.",
                       name_or_path)
    query_max_length = min(config.query_max_length, config.ranker_max_length // 2)
    return CrossEncoder.from_pretrained(name_or_path, max_length=config.ranker_max_length,
                                        query_max_length=query_max_length)


def warm_up_ranker(ranker, examples, corpus, list_size: int, warmup: RankerWarmup, trainer: TrainConfig,
                   phase_dir: Path, *, seed: int, resume: bool, callbacks: Sequence[Any] = ()):
    """(ranker, summary): the ranker trained alone on `examples` before it denoises or teaches (RocketQAv2,
    AR2 from a fresh head), clipped at the warm-up's own max_grad_norm; a finished warm-up is loaded."""
    if phase_done(phase_dir):
        logger.info("ranker warm-up already done: loading %s", phase_dir / FINAL_DIR)
        return CrossEncoder.from_pretrained(phase_dir / FINAL_DIR), read_phase_summary(phase_dir)
    logger.info("warming up the ranker for %d steps -> %s", warmup.steps, phase_dir)
    summary = train_ranker(ranker, examples, corpus, list_size, trainer, phase_dir, seed=seed, resume=resume,
                           callbacks=callbacks, max_steps=warmup.steps, learning_rate=warmup.learning_rate,
                           max_grad_norm=warmup.max_grad_norm, head_learning_rate=warmup.head_learning_rate)
    return ranker, summary


__all__ = ["WARMUP_DIR", "CandidateListCollator", "RankerDistillLoss", "ScoredListCollator", "evaluate_rerank", "first_stage_run", "load_ranker", "on_plateau",
           "phase_arguments", "ranker_list_loss", "ranker_param_groups", "rerank_run", "train_ranker",
           "warm_up_ranker", "with_tail"]
