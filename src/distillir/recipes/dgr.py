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

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from distillir.data.answers import has_answer
from distillir.data.datasets import load_dataset
from distillir.data.negatives import positives_from_dataset
from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.models import DEFAULT_ENCODER
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.readers.generative_lm import DEFAULT_PROMPT, CausalGenerativeRetriever, load_generative_retriever
from distillir.recipes.common.config import ReaderConfig
from distillir.recipes.common.generative_lists import DGRCollator, DGRStep, IndexingExample, RankedList
from distillir.recipes.common.lists import labelled_lists
from distillir.recipes.common.ranking import train_ranker
from distillir.recipes.common.reading import (
    build_lm_reader,
    build_reader,
    evaluate_retrieval,
    load_eval_split,
    torch_device,
)
from distillir.recipes.common.run import FINAL_DIR, METRICS_FILE, STAGES_DIR, Recipe, RunConfig, Stages, save_on_main
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.generative import GenerativeRetriever, make_docids
from distillir.teachers.scores import TeacherScores, read_teacher_scores
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.trainer import Trainer
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)


@dataclass
class DGRTeacherConfig:
    # A teacher-score file (qid, pids, scores per line: e.g. a causal LM's question likelihood written by fid-kd's
    # teacher stage) ranks the lists instead of a cross-encoder: its lists are the candidates, nothing is trained.
    scores: str | None = None
    model: str = DEFAULT_ENCODER  # a trained cross-encoder (steps: 0) or an encoder to train (fresh head)
    max_length: int = 256
    query_max_length: int = 64
    steps: int = 100  # listwise CE steps on the candidates before scoring (0: use `model` as it is)
    list_size: int = 8
    batch_size: int = 64  # pairs per scoring batch
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=3e-5, warmup_ratio=0.1,
                                                                      per_device_batch_size=4))


@dataclass
class DGRStudentConfig:
    # init / model / num_layers of the seq2seq; or kind: causal-lm, a decoder-only LM writing the identifier after
    # `prompt` (`readers.generative_lm`), training its last seq2seq.lm.train_layers layers
    seq2seq: ReaderConfig = field(default_factory=ReaderConfig)
    prompt: str = DEFAULT_PROMPT  # causal-lm only: the query's prompt ({query})
    docid_scheme: Literal["title", "id"] = "title"
    query_max_length: int = 64
    docid_max_length: int = 32
    indexing: bool = True  # add passage -> identifier examples (DSI indexing)
    indexing_words: int = 48  # opening words of a passage used as its indexing input
    list_size: int = 8  # the positive and list_size-1 negatives in the teacher's order
    rank_weight: float = 1.0
    # The distillation term: DGR's RankNet; the paper's ablation: KL on the teacher's scores (temperature
    # kl_temperature, student scores = summed identifier log-probs), or ListNet on the teacher's order.
    rank_loss: Literal["ranknet", "kl", "listnet"] = "ranknet"
    kl_temperature: float = 1.0
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
        if self.kl_temperature <= 0:
            raise ConfigError(f"kl_temperature must be positive, got {self.kl_temperature}")
        if self.seq2seq.kind == "causal-lm" and self.seq2seq.lm.train_layers < 1:
            raise ConfigError("a causal-LM student trains its last layers: set student.seq2seq.lm.train_layers >= 1")


@dataclass
class DGREval:
    dataset: str | None = None
    split: str = "test"
    max_queries: int | None = None
    top_k: int = 20  # beams = passages returned per query
    batch_size: int = 8
    # a causal-LM student's precision for the search; auto: bfloat16 where the CPU has it natively
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


@dataclass
class DGRConfig(RunConfig):
    output_dir: str = "runs/dgr"
    dataset: str = "scifact"
    train_split: str = "train"
    max_train_queries: int | None = None
    positives: Literal["gold", "answer"] = "gold"
    candidates: int = 20  # BM25 depth the teacher ranks (the paper: the student's top 200)
    teacher: DGRTeacherConfig = field(default_factory=DGRTeacherConfig)
    student: DGRStudentConfig = field(default_factory=DGRStudentConfig)
    eval: DGREval | None = field(default_factory=DGREval)

    def __post_init__(self) -> None:
        if self.candidates < 2:
            raise ConfigError(f"candidates must be at least 2, got {self.candidates}")


# ------------------------------------------------------------------------------------------- recipe


class DGRRecipe(Recipe):
    """DGR: a generative retriever distilled from a cross-encoder's ranking with a RankNet loss."""

    name = "dgr"
    Config = DGRConfig

    def run(self, config: DGRConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        self.callbacks = list(callbacks)
        self.train = load_dataset(config.dataset, config.train_split, max_queries=config.max_train_queries,
                                  seed=config.seed)
        self.corpus = self.train.corpus
        self.teacher_file = None
        if config.teacher.scores is not None:  # a bad file fails here, before the run directory exists
            self.teacher_file = read_teacher_scores(config.teacher.scores, corpus=self.corpus)
            if not set(self.teacher_file) & set(self.train.queries.ids):
                raise InputError(config.teacher.scores, f"no line names a {config.dataset}/{config.train_split} "
                                                        "query", field="qid")
        out = self.start(config)
        self.eval_ds = None
        if config.eval is not None:
            self.eval_ds = load_eval_split(config.eval.dataset or config.dataset, config.eval.split,
                                           config.eval.max_queries, config.seed, self.corpus)
            if self.eval_ds.corpus is not self.corpus:
                raise ConfigError("dgr evaluates on the corpus it indexed: the eval split must share the training "
                                  "corpus")
        stages = Stages(out / STAGES_DIR, "dgr")
        record = {
            "candidates": stages.run("candidates", lambda: self._candidates(config, out)),
            "teacher": stages.run("teacher", lambda: self._teacher(config, out)),
            "student": stages.run("student", lambda: self._student(config, out)),
        }
        if config.eval is not None:
            record["eval"] = stages.run("eval", lambda: self._evaluate(config, out))
            write_json(out / METRICS_FILE, record["eval"])
        results = {"recipe": self.name, "output_dir": str(out), "final_retriever": str(out / FINAL_DIR),
                   "metrics": (record.get("eval") or {}).get("metrics"),
                   "bm25_metrics": (record.get("eval") or {}).get("bm25"), "stages": record}
        self.write_results(out, results)
        return results

    # ----------------------------------------------------------------------------------- stages

    def _queries_with_positives(self, config: DGRConfig):
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
        queries, _ = self._queries_with_positives(config)
        if self.teacher_file is not None:  # the given file's lists are the candidates: no first-stage search
            given, keep = self.teacher_file, set(queries.ids)
            run = Run({q: zip(*given[q]) for q in given if q in keep}, name="teacher-scores")
            run.write_trec(out / "candidates.trec")
            return {"queries": len(run), "depth": max((len(h) for h in run.values()), default=0),
                    "source": config.teacher.scores}
        run = bm25_cached(self.corpus).search(queries, top_k=config.candidates)
        run.write_trec(out / "candidates.trec", tag="bm25")
        return {"queries": len(run), "depth": config.candidates, "source": "bm25"}

    def _teacher(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        """Train the cross-encoder (optional), score every candidate list, write the ranked lists."""
        cfg = config.teacher
        queries, gold = self._queries_with_positives(config)
        run = Run.read_trec(out / "candidates.trec")
        text = {q: t for q, t in zip(queries.ids, queries.texts)}
        answers = {q: a for q, a in zip(queries.ids, queries.answers)}

        def is_positive(qid: str, pid: str) -> bool:
            if gold is not None:
                return pid in gold.get(qid, ())
            return has_answer(answers[qid] or [], self.corpus.texts[self.corpus.index_of[pid]])

        if cfg.scores is not None:
            given = self.teacher_file
            scored = {qid: sorted(zip(*given[qid]), key=lambda h: -h[1]) for qid in given if qid in text}
            return self._write_lists(scored, gold, is_positive, text, given.teacher, out)
        path = cfg.model
        if cfg.steps > 0:
            gold_first = (lambda qid, pids: sorted(gold[qid])) if gold is not None else None
            examples = labelled_lists(((qid, text[qid], [p for p, _ in hits]) for qid, hits in run.items()),
                                      is_positive, gold_first)
            ranker = CrossEncoder.from_pretrained(cfg.model, max_length=cfg.max_length,
                                                  query_max_length=cfg.query_max_length)
            train_ranker(ranker, examples, self.corpus, cfg.list_size, cfg.trainer, out / "teacher",
                         seed=config.seed, resume=config.resume, callbacks=self.callbacks, max_steps=cfg.steps)
            path = str(out / "teacher" / FINAL_DIR)
        else:
            ranker = CrossEncoder.from_pretrained(cfg.model, max_length=cfg.max_length,
                                                  query_max_length=cfg.query_max_length)
        scored = ranker.rerank(run, queries, self.corpus, top_k=config.candidates, batch_size=cfg.batch_size,
                               show_progress=True)
        return self._write_lists(dict(scored.items()), gold, is_positive, text, f"cross-encoder:{path}", out)

    def _write_lists(self, scored, gold, is_positive, text, teacher: str, out: Path) -> dict[str, Any]:
        """Each query's list in the teacher's order (`scored`: qid -> [(pid, score)], best first), its positive
        moved to the head, into teacher/scores.jsonl."""
        lists = TeacherScores(teacher)
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
        return {"teacher": teacher, "lists": len(lists), "file": str(out / "teacher" / "scores.jsonl")}

    def _build_student(self, config: DGRConfig, path: Path | None = None, dtype: str = "float32"):
        s = config.student
        if path is not None:
            return load_generative_retriever(path, dtype=dtype)
        if s.seq2seq.kind == "causal-lm":
            return self._build_lm_student(config)
        reader = build_reader(s.seq2seq, 1, config.seed)
        return GenerativeRetriever(reader, self.corpus.ids, make_docids(self.corpus, s.docid_scheme),
                                   s.query_max_length, s.docid_max_length)

    def _build_lm_student(self, config: DGRConfig):
        from distillir.readers.rag_lm import train_last_layers

        student = build_lm_student(config, self.corpus)
        train_last_layers(student.lm, config.student.seq2seq.lm.train_layers)
        return student

    def _student(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        s = config.student
        student = self._build_student(config)
        scores = read_teacher_scores(out / "teacher" / "scores.jsonl", corpus=self.corpus)
        examples: list[Any] = []
        for qid in scores:
            pids, values = scores[qid]
            query = scores.queries.get(qid) or self.train.queries.texts[self.train.queries.index_of[qid]]
            examples.append(RankedList(qid, query, list(pids), [float(v) for v in values]))
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
                          loss_fn=DGRStep(student, s), callbacks=self.callbacks)
        summary = trainer.train()
        save_on_main((student, out / FINAL_DIR))
        return {"train": summary, "lists": n_lists, "indexing_examples": len(examples) - n_lists}

    def _evaluate(self, config: DGRConfig, out: Path) -> dict[str, Any]:
        ev = config.eval
        student = self._build_student(config, out / FINAL_DIR, dtype=ev.dtype)
        student.seq2seq.to(torch_device(config.student.trainer.cpu))
        run = student.search(self.eval_ds.queries, top_k=ev.top_k, batch_size=ev.batch_size)
        run.write_trec(out / "eval" / "dgr.trec", tag="dgr")
        bm25 = bm25_cached(self.eval_ds.corpus).search(self.eval_ds.queries, top_k=ev.top_k)
        return {"metrics": evaluate_retrieval(run, self.eval_ds), "bm25": evaluate_retrieval(bm25, self.eval_ds)}


__all__ = ["DGRCollator", "DGRConfig", "DGRRecipe", "DGRStep", "DGRStudentConfig", "DGRTeacherConfig", "IndexingExample",
           "RankedList"]


def build_lm_student(config: DGRConfig, corpus, dtype: str | None = None):
    """The config's causal-LM student over `corpus`, untrained: its LM under the config's prompt, identifiers and
    prefix tree. `dtype`: the weights' (default the config's; auto means float32, since AdamW trains in float32)."""
    s = config.student
    if dtype is None:
        dtype = "float32" if s.seq2seq.lm.dtype == "auto" else s.seq2seq.lm.dtype
    lm = build_lm_reader(replace(s.seq2seq, lm=replace(s.seq2seq.lm, dtype=dtype,
                                                       prompts=replace(s.seq2seq.lm.prompts, chat=False))))
    return CausalGenerativeRetriever(lm, corpus.ids, make_docids(corpus, s.docid_scheme), s.query_max_length,
                                     s.docid_max_length, prompt=s.prompt)
