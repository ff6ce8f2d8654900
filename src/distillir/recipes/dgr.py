"""DGR: distillation-enhanced generative retrieval (Li et al., 2024; code in liyongqi67/MINDER,
seal/minder_ltr_listwise_seal.py).

The student is a seq2seq model writing passage identifiers under constrained decoding
(`distillir.retrievers.generative`); a passage's score is its identifier's log-probability. A cross-encoder
teacher ranks each training query's candidates; the list is one positive followed by negatives in the
teacher's order, and the student is trained with the usual generation loss on the positive's identifier plus
the distilled RankNet loss over the list (`distillir.losses.DistilledRankNetLoss`):

    L = NLL(docid(positive) | q) / tokens + rank_weight * RankNet(s in teacher order)

With `indexing: true` the batches also hold DSI-style indexing examples (a passage's opening words -> its
identifier), so identifiers no query names are learnt too.

Stages (each resumable): candidates (BM25's top `candidates` of every training query), teacher (optionally
train the cross-encoder with listwise CE on the candidates, then score them: teacher/scores.jsonl in the
teacher-score format), student (training), eval (constrained beam search on the eval split, beside BM25).
Positives: the split's gold passages (`positives: gold`, BEIR qrels or squad gold ids), or the teacher's best
answer-bearing candidate (`positives: answer`: question-answer data without relevance labels).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillir.errors import ConfigError, InputError
from distillir.models import DEFAULT_ENCODER
from distillir.recipes.base import FINAL_DIR, METRICS_FILE, Recipe, seed_everything
from distillir.recipes.fid_kd import FiDKDReader, build_reader, evaluate_retrieval
from distillir.training.trainer import TrainConfig
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

STAGES_DIR = "stages"


@dataclass
class DGRTeacher:
    model: str = DEFAULT_ENCODER  # a trained cross-encoder (steps: 0) or an encoder to train (fresh head)
    max_length: int = 256
    query_max_length: int = 64
    steps: int = 100  # listwise CE steps on the candidates before scoring (0: use `model` as it is)
    list_size: int = 8
    batch_size: int = 64  # pairs per scoring batch
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=3e-5, warmup_ratio=0.1,
                                                                      per_device_batch_size=4))


@dataclass
class DGRStudent:
    seq2seq: FiDKDReader = field(default_factory=FiDKDReader)  # init / model / num_layers of the seq2seq
    docid_scheme: Literal["title", "id"] = "title"
    query_max_length: int = 64
    docid_max_length: int = 32
    indexing: bool = True  # add passage -> identifier examples (DSI indexing)
    indexing_words: int = 48  # opening words of a passage used as its indexing input
    list_size: int = 8  # the positive and list_size-1 negatives in the teacher's order
    rank_weight: float = 1.0
    base_margin: float = 1.0  # RankNet m, on the student's scale (sum of token log-probs)
    margin_step: float = 0.5  # RankNet delta
    first_weight: float = 3.0  # w_0
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=1e-4, warmup_ratio=0.05,
                                                                      per_device_batch_size=8, max_steps=500))

    def __post_init__(self) -> None:
        if self.list_size < 2:
            raise ConfigError(f"student.list_size must be at least 2, got {self.list_size}")
        if self.rank_weight < 0:
            raise ConfigError(f"rank_weight must not be negative, got {self.rank_weight}")


@dataclass
class DGREval:
    dataset: str | None = None
    split: str = "test"
    max_queries: int | None = None
    top_k: int = 20  # beams = passages returned per query
    batch_size: int = 8


@dataclass
class DGRConfig:
    output_dir: str = "runs/dgr"
    seed: int = 42
    resume: bool = False
    dataset: str = "scifact"
    train_split: str = "train"
    max_train_queries: int | None = None
    positives: Literal["gold", "answer"] = "gold"
    candidates: int = 20  # BM25 depth the teacher ranks (the paper: the student's top 200)
    teacher: DGRTeacher = field(default_factory=DGRTeacher)
    student: DGRStudent = field(default_factory=DGRStudent)
    eval: DGREval | None = field(default_factory=DGREval)

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ConfigError(f"candidates must be at least 2, got {self.candidates}")


# ------------------------------------------------------------------------------------------- parts


@dataclass
class RankedList:
    """A query's list for the student: positive first, then negatives in the teacher's order."""

    qid: str
    query: str
    pids: list[str]


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
        import torch

        lists = [ex for ex in examples if isinstance(ex, RankedList)]
        index = [ex for ex in examples if isinstance(ex, IndexingExample)]
        batch: dict[str, Any] = {"lists": None, "index": None}
        if lists:
            n = min(self.list_size, max(len(ex.pids) for ex in lists))
            pids, mask = [], []
            for ex in lists:
                row = ex.pids[:n]
                pids += row + [row[0]] * (n - len(row))  # padded with the positive, masked out
                mask.append([True] * len(row) + [False] * (n - len(row)))
            batch["lists"] = {"query": self.student.tokenize_queries([ex.query for ex in lists]),
                              "labels": self.student.docid_labels(pids),
                              "mask": torch.tensor(mask, dtype=torch.bool)}
        if index:
            batch["index"] = {"query": self.student.tokenize_queries([ex.text for ex in index]),
                              "labels": self.student.docid_labels([ex.pid for ex in index])}
        return batch


class DGRLoss:
    """Trainer loss: generation NLL of the positive (and indexing) identifiers per token, plus rank_weight
    times the distilled RankNet over each list's identifier scores."""

    def __init__(self, student, config: DGRStudent):
        from distillir.losses import DistilledRankNetLoss

        self.student = student
        self.rank_weight = config.rank_weight
        self.ranknet = DistilledRankNetLoss(config.base_margin, config.margin_step, config.first_weight)

    @staticmethod
    def _tokens(labels):
        from distillir.readers.fid import IGNORE_INDEX

        return (labels != IGNORE_INDEX).sum(dim=-1).clamp(min=1)

    def __call__(self, model, batch):
        total = 0.0
        lists = batch.get("lists")
        if lists is not None:
            mask = lists["mask"]
            n = mask.shape[1]
            scores = self.student.score(lists["query"], lists["labels"], per_query=n)  # (B, n), teacher order
            positive_tokens = self._tokens(lists["labels"]).view(-1, n)[:, 0]
            total = total + (-scores[:, 0] / positive_tokens).mean()
            if self.rank_weight > 0 and n > 1:
                total = total + self.rank_weight * self.ranknet(scores, mask=mask)
        index = batch.get("index")
        if index is not None:
            scores = self.student.score(index["query"], index["labels"], per_query=1)[:, 0]
            total = total + (-scores / self._tokens(index["labels"])).mean()
        return total


# ------------------------------------------------------------------------------------------- recipe


class DGRRecipe(Recipe):
    """DGR: a generative retriever distilled from a cross-encoder's ranking with a RankNet loss."""

    name = "dgr"
    Config = DGRConfig

    def run(self, config: DGRConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        from distillir.data.datasets import load_dataset
        from distillir.training.trainer import process_state

        if process_state().num_processes > 1:
            raise ConfigError("dgr runs in a single process (one GPU or the CPU); launch it without torchrun")
        out = Path(config.output_dir)
        if (out / STAGES_DIR).is_dir() and not config.resume:
            raise ConfigError(f"{out} already holds a run; continue it with resume=true (distillir train "
                              "--resume), or choose another output_dir")
        out = self.prepare_output_dir(config)
        seed_everything(config.seed)
        self.callbacks = list(callbacks)
        self.train = load_dataset(config.dataset, config.train_split, max_queries=config.max_train_queries,
                                  seed=config.seed)
        self.corpus = self.train.corpus
        self.eval_ds = None
        if config.eval is not None:
            self.eval_ds = load_dataset(config.eval.dataset or config.dataset, config.eval.split,
                                        max_queries=config.eval.max_queries, seed=config.seed)
            if self.eval_ds.corpus.fingerprint() != self.corpus.fingerprint():
                raise ConfigError("dgr evaluates on the corpus it indexed: the eval split must share the training "
                                  "corpus")
        record = {
            "candidates": self._stage(out, "candidates", lambda: self._candidates(config, out)),
            "teacher": self._stage(out, "teacher", lambda: self._teacher(config, out)),
            "student": self._stage(out, "student", lambda: self._student(config, out)),
        }
        if config.eval is not None:
            record["eval"] = self._stage(out, "eval", lambda: self._evaluate(config, out))
            write_json(out / METRICS_FILE, record["eval"])
        results = {"recipe": self.name, "output_dir": str(out), "final_retriever": str(out / FINAL_DIR),
                   "metrics": (record.get("eval") or {}).get("metrics"),
                   "bm25_metrics": (record.get("eval") or {}).get("bm25"), "stages": record}
        self.write_results(out, results)
        return results

    @staticmethod
    def _stage(out: Path, name: str, fn) -> dict[str, Any]:
        marker = out / STAGES_DIR / f"{name}.json"
        if marker.is_file():
            logger.info("dgr: %s already done: skipping", name)
            return {**json.loads(marker.read_text(encoding="utf-8")), "skipped": True}
        logger.info("dgr: %s", name)
        start = time.perf_counter()
        info = fn()
        info["wall_s"] = round(time.perf_counter() - start, 3)
        write_json(marker, info)
        return {**info, "skipped": False}

    # ----------------------------------------------------------------------------------- stages

    def _queries_with_positives(self, config: DGRConfig):
        from distillir.data.negatives import positives_from_dataset

        queries = self.train.queries
        if config.positives == "gold":
            gold = positives_from_dataset(self.train)
            keep = [q for q in queries.ids if gold.get(q)]
            if not keep:
                raise InputError(None, f"{config.dataset}/{config.train_split} has no gold passages; use "
                                       "positives: answer", field="positives")
            return queries.subset(keep), gold
        keep = [q for q, a in zip(queries.ids, queries.answers) if a]
        if not keep:
            raise InputError(None, f"{config.dataset}/{config.train_split} has no answers", field="positives")
        return queries.subset(keep), None

    def _candidates(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        from distillir.retrievers.bm25 import bm25_cached

        queries, _ = self._queries_with_positives(config)
        run = bm25_cached(self.corpus).search(queries, top_k=config.candidates)
        run.write_trec(out / "candidates.trec", tag="bm25")
        return {"queries": len(run), "depth": config.candidates}

    def _teacher(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        """Train the cross-encoder (optional), score every candidate list, write the ranked lists."""
        from distillir.data.answers import has_answer
        from distillir.data.negatives import TrainingExample
        from distillir.data.run import Run
        from distillir.rankers.cross_encoder import CrossEncoder
        from distillir.recipes.cross_encoder import train_ranker
        from distillir.teachers.scores import TeacherScores

        cfg = config.teacher
        queries, gold = self._queries_with_positives(config)
        run = Run.read_trec(out / "candidates.trec")
        text = {q: t for q, t in zip(queries.ids, queries.texts)}
        answers = {q: a for q, a in zip(queries.ids, queries.answers)}

        def is_positive(qid: str, pid: str) -> bool:
            if gold is not None:
                return pid in gold.get(qid, ())
            return has_answer(answers[qid] or [], self.corpus.texts[self.corpus.index_of[pid]])

        path = cfg.model
        if cfg.steps > 0:
            examples = []
            for qid, hits in run.items():
                pids = [p for p, _ in hits]
                pos = sorted(gold[qid]) if gold is not None else [p for p in pids if is_positive(qid, p)]
                neg = [p for p in pids if not is_positive(qid, p)]
                if pos and neg:
                    examples.append(TrainingExample(qid, text[qid], pos, neg))
            ranker = CrossEncoder.from_pretrained(cfg.model, max_length=cfg.max_length,
                                                  query_max_length=cfg.query_max_length)
            train_ranker(ranker, examples, self.corpus, cfg.list_size, cfg.trainer, out / "teacher",
                         seed=config.seed, resume=config.resume, callbacks=self.callbacks, max_steps=cfg.steps)
            path = str(out / "teacher" / FINAL_DIR)
        else:
            ranker = CrossEncoder.from_pretrained(cfg.model, max_length=cfg.max_length,
                                                  query_max_length=cfg.query_max_length)
        scored = ranker.rerank(run, queries, self.corpus, top_k=config.candidates, batch_size=cfg.batch_size)
        lists = TeacherScores(f"cross-encoder:{path}")
        for qid, hits in scored.items():
            ordered = [p for p, _ in hits]  # the teacher's order
            value = dict(hits)
            if gold is not None:
                pos = next((p for p in ordered if p in gold[qid]), min(gold[qid]))
            else:
                pos = next((p for p in ordered if is_positive(qid, p)), None)
            if pos is None:
                continue  # no answer-bearing candidate: nothing to learn the identifier of
            pids = [pos] + [p for p in ordered if not is_positive(qid, p)]
            # A gold positive the candidates missed has no teacher score: it heads the list anyway.
            lists.add(qid, pids, [value.get(p, max(value.values())) for p in pids], query=text[qid])
        lists.write(out / "teacher" / "scores.jsonl")
        return {"teacher": path, "lists": len(lists), "file": str(out / "teacher" / "scores.jsonl")}

    def _build_student(self, config: DGRConfig, path: Path | None = None):
        from distillir.retrievers.generative import GenerativeRetriever, make_docids

        s = config.student
        if path is not None:
            return GenerativeRetriever.from_pretrained(path)
        reader = build_reader(s.seq2seq, 1, config.seed)
        return GenerativeRetriever(reader, self.corpus.ids, make_docids(self.corpus, s.docid_scheme),
                                   s.query_max_length, s.docid_max_length)

    def _student(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        from distillir.teachers.scores import read_teacher_scores
        from distillir.training.trainer import Trainer, TrainingArguments

        s = config.student
        student = self._build_student(config)
        scores = read_teacher_scores(out / "teacher" / "scores.jsonl", corpus=self.corpus)
        examples: list[Any] = []
        for qid in scores:
            pids, _ = scores[qid]
            query = scores.queries.get(qid) or self.train.queries.texts[self.train.queries.index_of[qid]]
            examples.append(RankedList(qid, query, list(pids)))
        n_lists = len(examples)
        if s.indexing:
            for pid, text in zip(self.corpus.ids, self.corpus.texts):
                examples.append(IndexingExample(" ".join(text.split()[: s.indexing_words]), pid))
        random.Random(config.seed).shuffle(examples)
        if not examples:
            raise ConfigError("no training example: no list with a positive and indexing is off")
        args = TrainingArguments.from_config(s.trainer, output_dir=out / "student", seed=config.seed,
                                             resume=config.resume)
        trainer = Trainer(student.seq2seq, args, examples, DGRCollator(student, s.list_size),
                          loss_fn=DGRLoss(student, s), callbacks=self.callbacks)
        summary = trainer.train()
        student.save_pretrained(out / FINAL_DIR)
        return {"train": summary, "lists": n_lists, "indexing_examples": len(examples) - n_lists}

    def _evaluate(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        from distillir.retrievers.bm25 import bm25_cached

        ev = config.eval
        student = self._build_student(config, out / FINAL_DIR)
        student.seq2seq.to(_device(config.student.trainer.cpu))
        run = student.search(self.eval_ds.queries, top_k=ev.top_k, batch_size=ev.batch_size)
        run.write_trec(out / "eval" / "dgr.trec", tag="dgr")
        bm25 = bm25_cached(self.eval_ds.corpus).search(self.eval_ds.queries, top_k=ev.top_k)
        return {"metrics": evaluate_retrieval(run, self.eval_ds), "bm25": evaluate_retrieval(bm25, self.eval_ds)}


def _device(cpu: bool) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not cpu else "cpu"


__all__ = ["DGRCollator", "DGRConfig", "DGRLoss", "DGRRecipe", "IndexingExample", "RankedList"]
