"""The dense-retriever side of the recipes that train a bi-encoder on candidate lists beside a ranker
(RocketQAv2, AR2) or evaluate one: loading, list scores, candidates (the index refresh), evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distillir.data.datasets import load_dataset
from distillir.evaluation import evaluate_run
from distillir.recipes.common.config import EvalConfig, PipelineEvalConfig
from distillir.recipes.common.ranking import rerank_run
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.dense.encoder import BiEncoder
from distillir.retrievers.dense.retriever import DenseRetriever


def load_retriever(name_or_path, config) -> Any:
    """The BiEncoder a joint recipe starts from, with the config's tower/length settings."""
    return BiEncoder.from_pretrained(
        name_or_path, shared=config.shared_encoder, normalize=config.normalize,
        query_max_length=config.query_max_length, passage_max_length=config.passage_max_length,
    )


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
    """(B, n) retriever scores of each query against its own list: E_q(q) . E_p(p) * scale / temperature, in the
    model's precision (RocketQAv2, AR2). `common.distill.student_list_scores` is the distillation student's: in
    float32, over precomputed passage embeddings too, and against the whole batch's lists."""
    mask = batch["mask"]
    q = encoder.encode_query(batch["query"])
    p = encoder.encode_passage(batch["passage"]).view(mask.shape[0], mask.shape[1], -1)
    return (q.unsqueeze(1) * p).sum(dim=-1) * encoder.settings.scale / temperature


def default_temperature(encoder, temperature: float | None) -> float:
    return temperature or (0.05 if encoder.settings.normalize else 1.0)


def dense_candidates(encoder, corpus, queries, depth: int, batch_size: int = 64, cache: bool = False):
    """The retriever's top-`depth` for `queries`: embed `corpus` (the index refresh), then search."""
    retriever = DenseRetriever.build(corpus, encoder, batch_size=batch_size, cache=cache)
    run = retriever.search(queries, top_k=depth)
    run.name = "candidates"
    return run


def candidate_run(kind: str, encoder, corpus, queries, depth: int, path: Path, batch_size: int = 64, cache=False):
    """Top-N candidates from the dense retriever or BM25, written to `path` (TREC) for inspection."""
    if kind == "bm25":
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


def evaluate_dense(encoder: Any, eval_config: EvalConfig, seed: int = 0, cache: bool = True) -> dict[str, Any]:
    """Index the eval split's corpus with `encoder`, search its queries, and compute every metric it allows.

    `cache` reuses corpus embeddings across runs (worth it for a pretrained model evaluated again and again;
    pointless for freshly trained weights, whose embeddings would only fill the cache).
    """
    dataset = load_dataset(eval_config.dataset, eval_config.split, max_queries=eval_config.max_queries, seed=seed)
    retriever = DenseRetriever.build(dataset.corpus, encoder, batch_size=eval_config.batch_size, cache=cache)
    run = retriever.search(dataset.queries, top_k=eval_config.top_k)
    metrics = evaluate_run(run, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)
    return {"dataset": dataset.name, "split": dataset.split, **metrics}


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    """`model` as a fixed teacher for the duration: no gradients, eval mode; restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


__all__ = ["RetrieverRanker", "candidate_run", "default_temperature", "dense_candidates", "evaluate_dense",
           "evaluate_pipeline", "frozen", "load_retriever", "retriever_list_scores"]
