"""A generative retriever's training examples from teacher-ordered lists: the lists and DSI-style indexing
examples, the collator that batches them, and the Trainer step that scores them for `losses.DGRLoss` (DGR,
Li et al., 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from distillir.losses import DGRLoss
from distillir.models.seq2seq import IGNORE_INDEX


@dataclass
class RankedList:
    """A query's list for the student: positive first, then negatives in the teacher's order."""

    qid: str
    query: str
    pids: list[str]
    scores: list[float] = field(default_factory=list)  # the teacher's, aligned with pids (rank_loss: kl)


@dataclass
class IndexingExample:
    text: str
    pid: str


class DGRCollator:
    """Mixed batches -> {"lists": query tokens, (B*n) identifier labels, (B, n) mask} and {"index": passage
    tokens, identifier labels}; either part is None when the batch has none of it."""

    def __init__(self, student, list_size: int):
        self.student = student
        self.list_size = list_size

    def __call__(self, examples) -> dict[str, Any]:
        lists = [ex for ex in examples if isinstance(ex, RankedList)]
        index = [ex for ex in examples if isinstance(ex, IndexingExample)]
        batch: dict[str, Any] = {"lists": None, "index": None}
        if lists:
            n = min(self.list_size, max(len(ex.pids) for ex in lists))
            pids, mask, teacher = [], [], []
            for ex in lists:
                row = ex.pids[:n]
                pids += row + [row[0]] * (n - len(row))  # padded with the positive, masked out
                mask.append([True] * len(row) + [False] * (n - len(row)))
                values = list(ex.scores[:n]) or [0.0] * len(row)
                teacher.append(values + [0.0] * (n - len(values)))
            batch["lists"] = {"query": self.student.tokenize_queries([ex.query for ex in lists]),
                              "labels": self.student.docid_labels(pids),
                              "mask": torch.tensor(mask, dtype=torch.bool),
                              "teacher": torch.tensor(teacher, dtype=torch.float)}
        if index:
            batch["index"] = {"query": self.student.tokenize_queries([ex.text for ex in index]),
                              "labels": self.student.docid_labels([ex.pid for ex in index])}
        return batch


class DGRStep:
    """Trainer `loss_fn`: the student's identifier log-probabilities of each list (teacher order) and of the
    indexing examples, into `losses.DGRLoss`."""

    def __init__(self, student, config):  # config: the recipe's student config (rank_weight, margins, loss)
        self.student = student
        self.loss = DGRLoss(config.rank_weight, config.base_margin, config.margin_step, config.first_weight,
                            rank_loss=config.rank_loss, temperature=config.kl_temperature)

    @staticmethod
    def _tokens(labels):
        return (labels != IGNORE_INDEX).sum(dim=-1).clamp(min=1)

    def __call__(self, model, batch):
        parts: dict[str, Any] = {}
        lists = batch.get("lists")
        if lists is not None:
            n = lists["mask"].shape[1]
            labels, mask, teacher = lists["labels"], lists["mask"], lists["teacher"]
            if self.loss.rank_weight == 0:  # the plain objective reads the positive alone: score nothing else
                labels, mask, teacher = labels.view(-1, n, labels.shape[-1])[:, 0], mask[:, :1], teacher[:, :1]
                n = 1
            parts["scores"] = self.student.score(lists["query"], labels, per_query=n)  # (B, n), teacher order
            parts["positive_tokens"] = self._tokens(labels).view(-1, n)[:, 0]
            parts["mask"] = mask
            parts["teacher"] = teacher.to(parts["scores"].device)
        index = batch.get("index")
        if index is not None:
            parts["index_scores"] = self.student.score(index["query"], index["labels"], per_query=1)[:, 0]
            parts["index_tokens"] = self._tokens(index["labels"])
        return self.loss(**parts)
