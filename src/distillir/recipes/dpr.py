"""Supervised DPR: the labelled baseline every distillation paper compares against.

Karpukhin et al. (2020), "Dense Passage Retrieval for Open-Domain Question Answering": a bi-encoder trained
with a contrastive loss over the question's positive passage, the other questions' positives in the batch,
and BM25 hard negatives (top BM25 passages that are not positives and do not contain the answer).

Steps: load the training split (positives from its qrels, else its gold passage ids) -> BM25 over its corpus
-> mine hard negatives -> write `train_lists.jsonl` -> train -> save `final/` -> evaluate (optional).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from distillir.errors import ConfigError
from distillir.losses.contrastive import ContrastiveLoss
from distillir.models import DEFAULT_ENCODER
from distillir.recipes.common.config import EvalConfig, TrainSplit, check_temperature
from distillir.recipes.common.lists import LISTS_FILE, mined_training_lists
from distillir.recipes.common.retrieval import evaluate_dense
from distillir.recipes.common.run import FINAL_DIR, METRICS_FILE, Recipe, RunConfig
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.state import process_state
from distillir.training.trainer import Trainer
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

@dataclass
class DPRNegatives:
    mined: int = 8  # negatives kept per query in train_lists.jsonl
    per_query: int = 1  # hard negatives per query in each batch, drawn from the mined ones (DPR: 1)
    depth: int = 100  # BM25 ranks to mine from
    sample: bool = False  # False: the best-ranked BM25 negatives (DPR); True: a random draw within `depth`
    exclude_answers: bool = True  # drop passages containing an answer string (when queries have answers)
    lists: str | None = None  # training lists (JSONL, e.g. from `distillir mine`) used as given: nothing is mined

    def __post_init__(self) -> None:
        if self.per_query < 0 or self.mined < self.per_query:
            raise ConfigError(f"need 0 <= per_query <= mined, got per_query={self.per_query}, mined={self.mined}")
        if self.depth < 1:
            raise ConfigError(f"depth must be at least 1, got {self.depth}")


@dataclass
class DPRConfig(RunConfig):
    output_dir: str = "runs/dpr"
    model: str = DEFAULT_ENCODER  # hub id or local path
    shared_encoder: bool = True  # one tower for questions and passages; False: two copies, trained apart
    normalize: bool | None = None  # unit-length embeddings (cosine); None: as the model's files say
    query_max_length: int = 64
    passage_max_length: int = 256
    temperature: float | None = None  # None: 0.05 when the encoder normalises embeddings, else 1 (DPR)
    data: TrainSplit = field(default_factory=TrainSplit)
    negatives: DPRNegatives = field(default_factory=DPRNegatives)
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5, warmup_ratio=0.1))
    eval: EvalConfig | None = None

    def __post_init__(self) -> None:
        check_temperature(self.temperature)


class DPRRecipe(Recipe):
    """Supervised DPR: contrastive training with in-batch and BM25 hard negatives (Karpukhin et al., 2020)."""

    name = "dpr"
    Config = DPRConfig

    def run(self, config: DPRConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        out = self.start(config)
        dataset = config.data.load(config.seed)
        examples = mined_training_lists(
            dataset,
            out / LISTS_FILE,
            lambda queries: bm25_cached(dataset.corpus).search(queries, top_k=config.negatives.depth),
            config.negatives,
            seed=config.seed,
            resume=config.resume,
        )

        encoder = BiEncoder.from_pretrained(
            config.model, shared=config.shared_encoder, normalize=config.normalize,
            query_max_length=config.query_max_length,
            passage_max_length=config.passage_max_length,
        )
        is_main = process_state().is_main_process
        baseline = None
        if config.eval is not None and config.eval.baseline and is_main:
            logger.info("evaluating the untrained encoder on %s/%s", config.eval.dataset, config.eval.split)
            baseline = evaluate_dense(encoder, config.eval, seed=config.seed)

        temperature = config.temperature or (0.05 if encoder.settings.normalize else 1.0)
        loss = ContrastiveLoss(similarity=encoder.similarity, temperature=temperature,
                               cross_device=config.trainer.cross_device_negatives)

        def dpr_loss(model, batch):
            q = model.encode_query(batch["query"])
            p = model.encode_passage(batch["passage"])
            return loss(q, p[: len(q)], p[len(q):], mask=batch["mask"])

        args = TrainingArguments.from_config(config.trainer, output_dir=out, seed=config.seed, resume=config.resume)
        collate = DPRCollator(encoder, dataset.corpus, config.negatives.per_query)
        trainer = Trainer(encoder, args, examples, collate, loss_fn=dpr_loss, callbacks=callbacks)
        summary = trainer.train()

        final = out / FINAL_DIR
        metrics = None
        if is_main:
            encoder.card_training = {"method": "DPR (in-batch + mined hard negatives)", "dataset": config.data.dataset,
                                     "examples": len(examples), "steps": summary.get("global_step"),
                                     "relevance labels": "yes (the split's qrels)"}
            encoder.save_pretrained(final)
            if config.eval is not None:
                logger.info("evaluating the trained encoder on %s/%s", config.eval.dataset, config.eval.split)
                metrics = evaluate_dense(encoder, config.eval, seed=config.seed, cache=False)
                write_json(out / METRICS_FILE, {"trained": metrics, "baseline": baseline})
        trainer.accelerator.wait_for_everyone()
        results = {
            "recipe": self.name,
            "output_dir": str(out),
            "final_model": str(final),
            "train_examples": len(examples),
            "train": summary,
            "metrics": metrics,
            "baseline_metrics": baseline,
        }
        self.write_results(out, results)
        return results


class DPRCollator:
    """Examples -> {"query", "passage", "mask"}: passages are every query's positive, then hard negatives.

    The positive (when a query has several) and the hard negatives are drawn with Python's `random`, whose
    state the Trainer checkpoints, so resumed runs draw the same. `mask[i, j]` is True where passage j is
    relevant to query i without being its target (a duplicate or shared positive): not a negative for i.
    """

    def __init__(self, encoder, corpus, hard_negatives: int):
        self.encoder = encoder
        self.corpus = corpus
        self.hard_negatives = hard_negatives

    def __call__(self, examples):
        positives = [random.choice(ex.positives) for ex in examples]
        negatives = [pid for ex in examples
                     for pid in random.sample(ex.negatives, min(self.hard_negatives, len(ex.negatives)))]
        pids = positives + negatives
        rows = [self.corpus.index_of[pid] for pid in pids]
        relevant = [set(ex.positives) for ex in examples]
        mask = torch.tensor([[pid in rel for pid in pids] for rel in relevant], dtype=torch.bool)
        return {
            "query": self.encoder.tokenize_queries([ex.query for ex in examples]),
            "passage": self.encoder.tokenize_passages([self.corpus.titles[r] for r in rows],
                                                      [self.corpus.texts[r] for r in rows]),
            "mask": mask,
        }
