"""FiD-KD: distil a reader's relevance into a dense retriever, without relevance labels (Izacard & Grave, 2021,
"Distilling Knowledge from Reader to Retriever for Question Answering"; facebookresearch/FiD). A reader answers
from a retriever's top-n passages, the passages it attends to (or finds likely) become teacher scores T(q, p),
a bi-encoder learns to reproduce T over each question's list, and the rounds iterate.

Round k (`output_dir/round-k/`), each stage resumable on its own:
  retrieve     the retriever in use (round 1: `start`; later the last round the guard kept) fetches each
               training question's top-n (`candidates: union`: merged with BM25's) and each eval question's.
  reader       train the FiD reader on the lists (round k > 1 continues round k-1's) -> `reader/final/`;
               a causal LM (`reader.kind: causal-lm`) is used as it is: no reader stage.
  reader_eval  the reader's answers for the eval questions -> `reader/predictions.json`; EM / F1.
  teacher      scores for every training list -> `teacher/scores.jsonl`: FiD attention or likelihood
               aggregations, or a causal LM's pdist / question_likelihood (`teachers.lm_likelihood`).
  retriever    the student on loss(S, T) over each list (`common.distill.train_student`) -> `retriever/final/`.
  index        re-embed the corpus -> `index/`, eval metrics, and the round guard (`on_worse`, `common.guard`).
Every stage writes atomically, then its marker `stages/<stage>.json`: a resumed run skips finished stages.

`teacher_scores: PATH` distils from a score file made elsewhere (one round); `teacher_scores: answers` is the
answer-string teacher (1 if a candidate holds an answer; DPR's distant supervision) and `teacher_scores: ranker`
a cross-encoder's scores of each list (`teacher.ranker`: any hub id or path), both iterating without a reader. No relevance labels are read for training: the training split is reduced to question ids, texts and
answers (`question_likelihood`: questions only). Gold passages are used only to evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.evaluation.qa import evaluate_answers
from distillir.readers.fid_data import load_fid_examples
from distillir.recipes.common.config import EncodeConfig, FiDKDTeacher, QAEvalConfig, ReaderConfig, StudentConfig
from distillir.recipes.common.distill import build_student, list_examples, reindex, train_student
from distillir.recipes.common.guard import ON_WORSE, guard_round
from distillir.recipes.common.reading import (
    build_lm_reader,
    build_reader,
    check_reader_teacher,
    evaluate_retrieval,
    free_accelerator_memory,
    list_teacher,
    load_eval_split,
    qa_training_split,
    read_answers,
    score_lists,
    torch_device,
    train_fid_reader,
)
from distillir.recipes.common.run import FINAL_DIR, METRICS_FILE, STAGES_DIR, Recipe, RunConfig, Stages
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.dense.retriever import DenseRetriever
from distillir.retrievers.hybrid import union_of_tops
from distillir.teachers.scores import most_confident, read_teacher_scores, within_sample
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

ANSWERS = "answers"  # teacher_scores: the answer-string teacher
RANKER = "ranker"  # teacher_scores: a cross-encoder's scores (teacher.ranker)
MODEL_FREE = (ANSWERS, RANKER)  # teachers that need no reader and iterate over rounds
STAGES = ("retrieve", "reader", "reader_eval", "teacher", "retriever", "index")
StageHook = Callable[[int, str, dict], None]  # (round, stage, record)
SCORES_FILE = "scores.jsonl"
PREDICTIONS_FILE = "predictions.json"


# ------------------------------------------------------------------------------------------- config


@dataclass
class FiDKDEval(QAEvalConfig):
    """Evaluation after every stage that changes a model: retriever answer recall (Top-k), gold MRR@10 and
    recall (from the eval split's qrels, used for evaluation only), and reader EM / F1."""

    start_retriever: bool = True  # also evaluate the retriever round 1 starts from (BM25 / `start`)
    reader: bool = True  # reader EM / F1 on the eval questions' top-n


@dataclass
class FiDKDConfig(RunConfig):
    output_dir: str = "runs/fid-kd"
    dataset: str = "squad-open"  # a known name or a QA dataset directory (question + answers per line)
    train_split: str = "train"
    max_train_queries: int | None = 1000  # a seeded sample of the training questions; null: all
    # The first round's retriever: "student" (the student's own initial model, `retriever.model`), "bm25" (the
    # paper), or a dense model id / path.
    start: str = "student"
    # Each round's training lists: "union": the round's retriever's top-n and BM25's top-n, merged in RRF order
    # (up to 2n; with a reader, the first n of that order); "retriever": its top-n only (the paper). The student's
    # own lists keep its mistakes in view; BM25's alone are a distribution it never produces (measured, README).
    candidates: Literal["union", "retriever"] = "union"
    rounds: int = 2
    n_passages: int = 10  # passages per question read by the reader and distilled into the retriever
    teacher_scores: str | None = None  # a score file (reader stages skipped; one round), "answers" or "ranker"
    # A round that the label-free check (`common.guard.round_verdict`: collapse -- one passage first for most
    # questions -- or a rising KL to the teacher on held-out lists) finds worse than the retriever it started
    # from: "keep" goes on with that earlier retriever (the next round retrieves with it and the result reports
    # it), "stop" keeps it and ends the run there, "continue" uses the new one anyway.
    on_worse: str = "keep"
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    teacher: FiDKDTeacher = field(default_factory=FiDKDTeacher)
    retriever: StudentConfig = field(default_factory=StudentConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    eval: FiDKDEval | None = field(default_factory=FiDKDEval)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.n_passages < 1:
            raise ConfigError(f"n_passages must be at least 1, got {self.n_passages}")
        if self.teacher_scores == RANKER and not self.teacher.ranker:
            raise ConfigError("teacher_scores: ranker needs teacher.ranker (a cross-encoder: hub id or path)")
        if self.teacher_scores not in (None, *MODEL_FREE) and self.rounds != 1:
            raise ConfigError("teacher_scores gives the scores of one round; set rounds: 1 (later rounds need the "
                              "reader to score the new retriever's passages)")
        if self.max_train_queries is not None and self.max_train_queries < 1:
            raise ConfigError(f"max_train_queries must be at least 1 (or null), got {self.max_train_queries}")
        if self.teacher_scores is None:
            check_reader_teacher(self.reader, self.teacher.aggregation)
        if self.retriever.loss == "emdr2" and (self.teacher.normalize != "none" or self.teacher.scale != 1.0):
            raise ConfigError("retriever.loss: emdr2 reads teacher scores as log-likelihoods: set teacher.normalize: "
                              "none and teacher.scale: 1 (and, with a causal LM, pdist with reader.lm.reduce: sum)")
        if self.on_worse not in ON_WORSE:
            raise ConfigError(f"on_worse must be 'keep', 'stop' or 'continue', got {self.on_worse!r}")

    @property
    def start_model(self) -> str:
        """Round 1's retriever: "bm25" or a dense model (`start: student` is the student's initial model)."""
        return self.retriever.model if self.start == "student" else self.start


# ------------------------------------------------------------------------------------------- recipe


class FiDKDRecipe(Recipe):
    """FiD-KD: reader-to-retriever distillation, iterated (Izacard & Grave, 2021)."""

    name = "fid-kd"
    Config = FiDKDConfig

    def __init__(self, on_stage: StageHook | None = None):
        """`on_stage(round, stage, record)` runs after each stage finishes or is found finished (resume):
        benchmarks write partial results there; tests inject failures."""
        self.on_stage = on_stage
        self._models: dict[str, tuple[Path, Any]] = {}

    # ----------------------------------------------------------------------------------- run

    def run(self, config: FiDKDConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        out = self.start(config)
        self._models = {}
        self.callbacks = list(callbacks)

        self.lm = config.reader.kind == "causal-lm" and config.teacher_scores is None
        if self.lm:  # loaded (and kept) now: a model that does not load fails before any retrieval
            self._reader(config, None)
        # Answers are read only by the answer-string teacher and by readers that learn or score them; a score
        # file, a cross-encoder and the LM's question likelihood need none (claims, questions without answers).
        questions_only = (config.teacher_scores not in (None, ANSWERS)
                          or (self.lm and config.teacher.aggregation == "question_likelihood"))
        train, self.train_queries = qa_training_split(config.dataset, config.train_split, config.max_train_queries,
                                                      config.seed, need_answers=not questions_only)
        self.corpus = train.corpus
        del train  # no qrels, no gold passages past this line: the questions keep ids, texts and answers
        self.eval_ds = None
        if config.eval is not None:
            self.eval_ds = load_eval_split(config.eval.dataset or config.dataset, config.eval.split,
                                           config.eval.max_queries, config.seed, self.corpus)
        logger.info("fid-kd: %d training questions (%s/%s), %s eval questions, start %s, %d round(s), n=%d",
                    len(self.train_queries), config.dataset, config.train_split,
                    len(self.eval_ds.queries) if self.eval_ds else 0, config.start_model, config.rounds, config.n_passages)

        rounds: list[dict[str, Any]] = []
        stopped = None
        self.in_effect = [0]  # after round k: the round whose retriever is in use (0: the start retriever)
        for k in range(1, config.rounds + 1):
            rounds.append(self.run_round(config, out, k))
            guard = rounds[-1]["guard"]
            if config.on_worse == "stop" and guard["worse"] and k < config.rounds:
                stopped = {"after_round": k, "reasons": guard["reasons"]}
                logger.warning("round %d made the retriever worse: stopping before round %d (on_worse: stop)", k,
                               k + 1)
                break
            self.write_results(out, self._results(config, out, rounds, partial=k < config.rounds))
        self._models = {}
        results = self._results(config, out, rounds, partial=False)
        results["stopped"] = stopped
        self.write_results(out, results)
        return results

    def _results(self, config: FiDKDConfig, out: Path, rounds: list[dict], partial: bool) -> dict[str, Any]:
        kept = self.in_effect[len(rounds)] if rounds else 0
        last = out / f"round-{kept}"
        first = rounds[0] if rounds else {}
        start_metrics = (first.get("retrieve") or {}).get("metrics")
        return {
            "recipe": self.name, "output_dir": str(out), "complete": not partial,
            "train_questions": len(self.train_queries),
            "eval_questions": len(self.eval_ds.queries) if self.eval_ds is not None else 0,
            "start": config.start_model, "n_passages": config.n_passages, "loss": config.retriever.loss,
            "aggregation": None if config.teacher_scores else config.teacher.aggregation,
            "teacher_scores": config.teacher_scores, "kept_round": kept,
            "final_retriever": str(last / "retriever" / FINAL_DIR) if kept else config.start_model,
            "final_reader": None if config.teacher_scores or not rounds else str(
                out / f"round-{len(rounds)}" / "reader" / FINAL_DIR),
            "start_metrics": start_metrics,
            "metrics": (rounds[kept - 1].get("index") or {}).get("metrics") if kept else start_metrics,
            "rounds": rounds,
        }

    # ----------------------------------------------------------------------------------- stages

    def run_round(self, config: FiDKDConfig, out: Path, k: int) -> dict[str, Any]:
        rd = out / f"round-{k}"
        hook = None if self.on_stage is None else (lambda name, info: self.on_stage(k, name, info))
        stages = Stages(rd / STAGES_DIR, f"round {k}", hook)
        record: dict[str, Any] = {"round": k}
        record["retrieve"] = stages.run("retrieve", lambda: self._retrieve(config, out, rd, k))
        if config.teacher_scores in MODEL_FREE:
            record["teacher"] = stages.run("teacher", lambda: list_teacher(
                config.teacher_scores, load_fid_examples(rd / "retrieve" / "train.jsonl"), rd / "teacher" / SCORES_FILE,
                ranker=config.teacher.ranker, ranker_max_length=config.teacher.ranker_max_length,
                ranker_dtype=config.teacher.ranker_dtype))
        if self.lm:  # used as it is: no reader training
            if config.eval is not None and config.eval.reader:
                record["reader_eval"] = stages.run("reader_eval", lambda: self._evaluate_reader(config, rd))
            record["teacher"] = stages.run("teacher", lambda: self._score(config, rd))
        elif config.teacher_scores is None:
            record["reader"] = stages.run("reader", lambda: self._train_reader(config, out, rd, k))
            if config.eval is not None and config.eval.reader:
                record["reader_eval"] = stages.run("reader_eval", lambda: self._evaluate_reader(config, rd))
            record["teacher"] = stages.run("teacher", lambda: self._score(config, rd))
            self._models.pop("reader", None)
            free_accelerator_memory()
        record["retriever"] = stages.run("retriever", lambda: self._train_retriever(config, out, rd, k))
        record["index"] = stages.run("index", lambda: self._index(config, rd))
        self._models.pop("student", None)
        free_accelerator_memory()
        in_effect, record["guard"] = guard_round(k, self.in_effect[k - 1], record["retriever"], record["index"],
                                                 config.on_worse)
        self.in_effect.append(in_effect)
        record["wall_s"] = {name: record[name]["wall_s"] for name in STAGES if name in record}
        record["wall_s"]["round"] = round(sum(record["wall_s"].values()), 3)
        write_json(rd / METRICS_FILE, record)
        return record

    def _retrieve(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        """The current retriever's top-n for the training questions and top-k for the eval questions."""
        d = rd / "retrieve"
        n = config.n_passages
        needs_train = config.teacher_scores in (None, *MODEL_FREE)
        # Round 1's eval retrieval: the start retriever's metrics, and the eval questions' passages for the reader.
        needs_eval = self.eval_ds is not None and (
            k > 1 or config.eval.start_retriever or (config.teacher_scores is None and config.eval.reader))
        built: dict[str, Any] = {}

        def start_retriever(corpus):
            """BM25 or the `start` dense model over `corpus` (built once per corpus)."""
            key = corpus.fingerprint()
            if key not in built:
                built[key] = bm25_cached(corpus) if config.start == "bm25" else DenseRetriever.build(
                    corpus, config.start_model, batch_size=config.encode.batch_size, dtype=config.encode.dtype, cache=True)
            return built[key]

        src = self.in_effect[k - 1]  # the retriever in use: the start one, or the last round kept
        info: dict[str, Any] = {"retriever": f"round-{src} retriever" if src else config.start_model}
        if needs_train:
            if src == 0:
                retriever = start_retriever(self.corpus)
            else:
                retriever = DenseRetriever.load(out / f"round-{src}" / "index", corpus=self.corpus)
            train_run = retriever.search(self.train_queries, top_k=n)
            if config.candidates == "union" and not (src == 0 and config.start == "bm25"):
                bm25_run = bm25_cached(self.corpus).search(self.train_queries, top_k=n)
                train_run = union_of_tops([(train_run, n), (bm25_run, n)])
                if config.teacher_scores is None:  # a reader reads n passages: its first n are the list
                    train_run = train_run.top(n)
                info["candidates"] = "union"
            train_run.write_trec(d / "train.trec", tag=f"round-{k}")
            # A question with no hit (BM25: no known term) has nothing to read or to distil.
            read = Run({q: hits for q, hits in train_run.items() if hits}, name=train_run.name)
            read.write_jsonl(d / "train.jsonl", self.train_queries, self.corpus)
            info["train_questions"] = len(read)
            info["train_questions_without_passages"] = len(train_run) - len(read)
        if needs_eval:
            if src == 0:
                eval_run = start_retriever(self.eval_ds.corpus).search(self.eval_ds.queries, top_k=config.eval.top_k)
            else:  # that round evaluated this very retriever on these questions
                eval_run = Run.read_trec(out / f"round-{src}" / "eval" / "retriever.trec")
            eval_run.write_trec(d / "eval.trec", tag=f"round-{k}")
            eval_run.top(n).write_jsonl(d / "eval.jsonl", self.eval_ds.queries, self.eval_ds.corpus)
            info["metrics"] = evaluate_retrieval(eval_run, self.eval_ds)
        return info

    def _reader(self, config: FiDKDConfig, path: Path):
        """The reader saved at `path` (a causal LM: `reader.model`), kept in memory between stages and rounds."""
        if self.lm:
            if "lm" not in self._models:
                self._models["lm"] = (None, build_lm_reader(config.reader, config.teacher.aggregation))
            return self._models["lm"][1]
        cached = self._models.get("reader")
        if cached is not None and cached[0] == path:
            return cached[1]
        reader = build_reader(config.reader, config.n_passages, config.seed, warm_start=path)
        reader.to(torch_device(config.reader.trainer.cpu))
        self._models["reader"] = (path, reader)
        return reader

    def _train_reader(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        d = rd / "reader"
        examples = load_fid_examples(rd / "retrieve" / "train.jsonl")
        warm = None
        if k > 1 and config.reader.warm_start_next_round:
            warm = out / f"round-{k - 1}" / "reader" / FINAL_DIR
        reader, summary = train_fid_reader(config.reader, examples, config.n_passages, config.seed + k - 1, d,
                                           run_seed=config.seed, warm_start=warm, resume=config.resume,
                                           callbacks=self.callbacks)
        self._models["reader"] = (d / FINAL_DIR, reader)
        return {"train": summary, "examples": len(examples), "warm_start": str(warm) if warm else None,
                "final": str(d / FINAL_DIR)}

    def _evaluate_reader(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        reader = self._reader(config, rd / "reader" / FINAL_DIR)
        examples = load_fid_examples(rd / "retrieve" / "eval.jsonl")  # in the eval questions' order
        if config.eval.reader_max_queries is not None:
            examples = examples[: config.eval.reader_max_queries]
        queries = self.eval_ds.queries.subset([str(ex["id"]) for ex in examples])
        examples = [ex for ex in examples if ex["ctxs"]]  # nothing retrieved: no answer (scored 0)
        predictions = read_answers(reader, examples, config.reader, config.n_passages)
        write_json(rd / "reader" / PREDICTIONS_FILE, predictions)
        return {"metrics": evaluate_answers(predictions, queries)}

    def _score(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        reader = self._reader(config, rd / "reader" / FINAL_DIR)
        return score_lists(reader, load_fid_examples(rd / "retrieve" / "train.jsonl"), config.reader,
                           config.teacher.aggregation, config.n_passages, rd / "teacher" / SCORES_FILE,
                           layers=config.teacher.layers, label=rd.name)

    def _train_retriever(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        cfg = config.retriever
        given = config.teacher_scores not in (None, *MODEL_FREE)
        source = Path(config.teacher_scores) if given else rd / "teacher" / SCORES_FILE
        scores = read_teacher_scores(source, corpus=self.corpus)
        if given and config.max_train_queries is not None:  # the question sample bounds a score file's lists too
            scores = within_sample(scores, self.train_queries, source)
        if config.teacher.keep_confident is not None:
            scores = most_confident(scores, config.teacher.keep_confident)
        examples = list_examples(scores, self.train_queries, self.corpus, source, normalize=config.teacher.normalize,
                                 scale=config.teacher.scale, skip_uniform=config.teacher.skip_uniform)
        if not examples:
            raise InputError(source, "no question with passages to distil from"
                             + (" (every list's teacher scores are equal: teacher.skip_uniform)"
                                if len(scores) else ""))
        start_from, src = None, self.in_effect[k - 1]
        if src and cfg.continue_training:
            start_from = out / f"round-{src}" / "retriever" / FINAL_DIR
        student, info = train_student(cfg, examples, self.corpus, rd / "retriever", encode=config.encode,
                                      seed=config.seed, resume=config.resume, callbacks=self.callbacks,
                                      start_from=start_from)
        self._models["student"] = (rd / "retriever" / FINAL_DIR, student)
        return {**info, "teacher_scores": str(source), "uniform_lists_skipped": len(scores) - len(examples)}

    def _index(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        """Re-embed the corpus with the trained retriever, save the index, evaluate it (`reindex`)."""
        path = rd / "retriever" / FINAL_DIR
        cached = self._models.get("student")
        student = cached[1] if cached is not None and cached[0] == path else build_student(config.retriever, path)
        # A frozen passage tower has the start model's embeddings: read them from the cache, not re-embed.
        return reindex(student, self.corpus, rd, config.encode, eval_ds=self.eval_ds, train_queries=self.train_queries,
                       top_k=config.eval.top_k if config.eval else 1, cache=not config.retriever.train_passages)


__all__ = ["FiDKDConfig", "FiDKDEval", "FiDKDRecipe", "FiDKDTeacher"]
