"""Merged candidate lists for recipes that re-rank and read them end to end (Re2G): one question's candidates,
the collator giving the re-ranker's pairs, the query and the frozen passage embeddings per batch, and the reader
examples of the passages the re-ranker chose."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class CandidateList:
    """One training question with its merged candidates (passage ids, first-stage order)."""

    index: int
    qid: str
    question: str
    answers: list[str]
    pids: list[str]


class Re2GCollator:
    """CandidateLists -> {"pairs" (B*C re-ranker inputs), "query", "passage_embeddings" (B, C, d), "mask",
    "rows" (indices into the training lists)}; C = the batch's longest list, shorter ones padded and masked."""

    def __init__(self, ranker, encoder, corpus, passage_embeddings):
        self.ranker = ranker
        self.encoder = encoder
        self.corpus = corpus
        self.passage_embeddings = passage_embeddings

    def __call__(self, examples: Sequence[CandidateList]) -> dict[str, Any]:
        width = max(len(ex.pids) for ex in examples)
        rows = torch.zeros(len(examples), width, dtype=torch.long)
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        queries, titles, texts = [], [], []
        for i, ex in enumerate(examples):
            index = [self.corpus.index_of[pid] for pid in ex.pids]
            rows[i, : len(index)], mask[i, : len(index)] = torch.tensor(index), True
            pad = [""] * (width - len(index))
            titles += [self.corpus.titles[r] for r in index] + pad
            texts += [self.corpus.texts[r] for r in index] + pad
            queries += [ex.question] * width
        return {
            "pairs": self.ranker.tokenize(queries, titles, texts),
            "query": self.encoder.tokenize_queries([ex.question for ex in examples]),
            "passage_embeddings": self.passage_embeddings[rows] * mask.unsqueeze(-1),
            "mask": mask,
            "rows": torch.tensor([ex.index for ex in examples]),
        }


def generator_examples(lists: Sequence[CandidateList], chosen, corpus) -> list[dict]:
    """Reader examples (ctxs layout) holding each question's chosen candidates, in the chosen order."""
    return [{"id": ex.qid, "question": ex.question, "answers": ex.answers,
             "ctxs": [corpus.passage(ex.pids[j]) for j in picks]} for ex, picks in zip(lists, chosen)]


__all__ = ["CandidateList", "Re2GCollator", "generator_examples"]
