"""Re2G: retrieve, re-rank, generate, trained end to end (Glass et al., 2022; IBM/kgi-slot-filling, re2g).

1. candidates: BM25's top `bm25_depth` and the dense retriever's top `dense_depth` of every question, merged
   (deduplicated; RRF order) -- the re-ranker makes their scores comparable.
2. ranker (optional): the cross-encoder trained on the candidates with listwise cross-entropy,
   - sum_i c_i log softmax(r)_i, c_i = 1 for positives: passages containing an answer string (no relevance
   labels) or the split's gold passages (`ranker.positives: gold`). `ranker.steps: 0` uses `ranker.model`
   as it is (a cross-encoder trained elsewhere).
3. end to end: per question the re-ranker scores all candidates, the generator reads the top `n_generate`,
   each passage alone, and its answer likelihood is marginalised with weights softmax(r) over them (RAG-token
   or -sequence), so the generator's loss trains the re-ranker too. The generator is a seq2seq reader
   (`readers.rag`, trained) or a causal LM (`generator.kind: causal-lm`, `readers.rag_lm`: frozen, or its last
   `generator.lm.train_layers` layers trained). The query encoder gets no
   gradient from the generator: it is frozen, or trained by online distillation from the re-ranker,
   alpha T^2 KL(softmax(r / T) || softmax(s / T)) over the candidates (alpha 0.9, T 10). The passage index is
   frozen (the passage tower never trains), so the corpus is embedded once.
4. eval: BM25, the start and the trained dense retriever, the merged candidates before and after re-ranking
   (answer recall Top-k, gold MRR@10), and the generator's EM/F1 on the re-ranked top `n_generate`; with
   `eval.generator_baselines` also on BM25's, the start dense retriever's, and the start ranker's top n.

Run directory: config.yaml, candidates/{train,eval}.jsonl, ranker/ (a phase), e2e/ (checkpoints, log.jsonl),
final/{query_encoder,ranker,generator}, eval/generations.jsonl (answers as they come: a killed eval resumes),
stages/*.json (finished stages: resume skips them), metrics.json, results.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from distillir.data.answers import has_answer
from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.evaluation.qa import evaluate_answers
from distillir.losses import Re2GLoss
from distillir.models import DEFAULT_ENCODER
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.readers.fid_data import load_fid_examples
from distillir.readers.rag import top_passages
from distillir.recipes.common.candidate_lists import CandidateList, Re2GCollator, generator_examples
from distillir.recipes.common.config import QAEvalConfig, ReaderConfig
from distillir.recipes.common.generators import build_generator, generate_logged, load_generator
from distillir.recipes.common.lists import labelled_lists
from distillir.recipes.common.ranking import train_ranker
from distillir.recipes.common.reading import (
    CollatorRNGCallback,
    evaluate_retrieval,
    load_eval_split,
    qa_training_split,
)
from distillir.recipes.common.run import (
    FINAL_DIR,
    METRICS_FILE,
    STAGES_DIR,
    Recipe,
    RunConfig,
    Stages,
    read_json,
    save_on_main,
)
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.dense.encoder import BiEncoder, encode_corpus_cached
from distillir.retrievers.dense.retriever import DenseRetriever
from distillir.retrievers.hybrid import union_of_tops
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.trainer import Trainer
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

STAGES = ("candidates", "ranker", "e2e", "eval")


@dataclass
class Re2GRetrieval:
    """The first stage: BM25 + a dense retriever, merged."""

    bm25_depth: int = 12
    dense_depth: int = 12
    query_encoder: str = DEFAULT_ENCODER  # the dense retriever's start (its passage tower builds the index)
    query_max_length: int = 40
    passage_max_length: int = 256
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # corpus embedding precision
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.bm25_depth < 0 or self.dense_depth < 0 or self.bm25_depth + self.dense_depth < 2:
            raise ConfigError("bm25_depth and dense_depth must be >= 0 and give at least 2 candidates together")


@dataclass
class Re2GRanker:
    model: str = DEFAULT_ENCODER  # a trained cross-encoder (steps: 0) or an encoder to train (fresh head)
    max_length: int = 256
    query_max_length: int = 40
    positives: Literal["answer", "gold"] = "answer"  # answer: passages containing an answer string (no labels)
    steps: int = 100  # listwise CE steps before end-to-end training (0: use `model` as it is)
    list_size: int = 8
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=3e-5, warmup_ratio=0.1,
                                                                      per_device_batch_size=4))


@dataclass
class Re2GEndToEnd:
    n_generate: int = 5  # re-ranked passages the generator reads (Re2G: 5)
    style: Literal["token", "sequence"] = "token"  # RAG-token or RAG-sequence marginalisation
    query_encoder: Literal["distill", "frozen"] = "distill"
    kd_alpha: float = 0.9
    kd_temperature: float = 10.0
    scale: float | None = None  # student scores = scale * q.p; null: 20 for unit-length embeddings, else 1
    ranker_learning_rate: float | None = None  # null: trainer.learning_rate
    query_learning_rate: float | None = None  # null: trainer.learning_rate
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=3e-5, warmup_ratio=0.05,
                                                                      per_device_batch_size=4, max_steps=200))

    def __post_init__(self) -> None:
        if self.n_generate < 1:
            raise ConfigError(f"n_generate must be at least 1, got {self.n_generate}")
        if self.kd_temperature <= 0 or self.kd_alpha < 0:
            raise ConfigError("kd_temperature must be positive and kd_alpha non-negative")


@dataclass
class Re2GEval(QAEvalConfig):
    batch_size: int = 8  # questions per generation batch
    # Also read BM25's top n_generate, the start dense retriever's, and the start candidates re-ranked by the
    # start ranker (the pipeline, no end-to-end training), with the same generator and prompts.
    generator_baselines: bool = False
    ranker_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where the CPU has it natively


@dataclass
class Re2GConfig(RunConfig):
    output_dir: str = "runs/re2g"
    dataset: str = "squad-open"  # a QA dataset (question + answers per line)
    train_split: str = "train"
    max_train_queries: int | None = 1000
    retrieval: Re2GRetrieval = field(default_factory=Re2GRetrieval)
    ranker: Re2GRanker = field(default_factory=Re2GRanker)
    generator: ReaderConfig = field(default_factory=ReaderConfig)  # the seq2seq model (n_passages: n_generate)
    e2e: Re2GEndToEnd = field(default_factory=Re2GEndToEnd)
    eval: Re2GEval | None = field(default_factory=Re2GEval)


# ------------------------------------------------------------------------------------------- parts


class Re2GStep:
    """Trainer `loss_fn`: the re-ranker picks each question's top `n_generate` candidates, the generator reads
    them alone and its marginal likelihood (`readers.rag`) and, when the query encoder is distilled, its scores
    over all candidates go into `losses.Re2GLoss`."""

    def __init__(self, lists: Sequence[CandidateList], corpus, generator, config: Re2GEndToEnd, scale: float):
        self.lists = lists
        self.corpus = corpus
        self.generator = generator  # recipes.common.generators: a seq2seq reader or a causal LM
        self.config = config
        self.scale = scale
        self.loss = Re2GLoss(config.kd_alpha if config.query_encoder == "distill" else None, config.kd_temperature)

    def __call__(self, model, batch):
        mask = batch["mask"]
        ranker_scores = model.ranker.list_scores(batch["pairs"], mask.shape[1])
        top, log_weights, present = top_passages(ranker_scores, mask, self.config.n_generate)
        lists = [self.lists[int(i)] for i in batch["rows"]]
        picks = [[int(j) for j, p in zip(row, ok) if p] for row, ok in zip(top.tolist(), present.tolist())]
        log_likelihood, tokens = self.generator.log_likelihood(generator_examples(lists, picks, self.corpus),
                                                               log_weights, self.config.style)
        if self.loss.kd is None:
            return self.loss(log_likelihood, tokens)
        q = model.query_encoder.encode_query(batch["query"])
        p = batch["passage_embeddings"].to(q.device)
        with torch.autocast(device_type=q.device.type, enabled=False):
            student = torch.einsum("bd,bnd->bn", q.float(), p.float()) * self.scale
        return self.loss(log_likelihood, tokens, student, ranker_scores, mask)


# ------------------------------------------------------------------------------------------- recipe


class Re2GRecipe(Recipe):
    """Re2G: BM25 + dense candidates -> cross-encoder -> marginalising generator, trained end to end."""

    name = "re2g"
    Config = Re2GConfig

    def run(self, config: Re2GConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        out = self.start(config)
        self.callbacks = list(callbacks)
        train, self.train_queries = qa_training_split(config.dataset, config.train_split, config.max_train_queries,
                                                      config.seed)
        self.corpus, self.gold = train.corpus, train.qrels
        self.eval_ds = None
        if config.eval is not None:
            self.eval_ds = load_eval_split(config.eval.dataset or config.dataset, config.eval.split,
                                           config.eval.max_queries, config.seed, self.corpus)
        stages = Stages(out / STAGES_DIR, "re2g")
        record = {}
        record["candidates"] = stages.run("candidates", lambda: self._candidates(config, out))
        record["ranker"] = stages.run("ranker", lambda: self._train_ranker(config, out))
        record["e2e"] = stages.run("e2e", lambda: self._end_to_end(config, out))
        if config.eval is not None:
            record["eval"] = stages.run("eval", lambda: self._evaluate(config, out))
            write_json(out / METRICS_FILE, record["eval"])
        results = {"recipe": self.name, "output_dir": str(out), "train_questions": len(self.train_queries),
                   "final": {k: str(out / FINAL_DIR / k) for k in ("query_encoder", "ranker", "generator")},
                   "metrics": (record.get("eval") or {}).get("metrics"), "stages": record}
        self.write_results(out, results)
        return results

    # ----------------------------------------------------------------------------------- stages

    def _start_encoder(self, config: Re2GConfig):
        """The dense retriever to start from: separate towers, the passage tower frozen (it builds the index)."""
        r = config.retrieval
        encoder = BiEncoder.from_pretrained(r.query_encoder, shared=False, query_max_length=r.query_max_length,
                                            passage_max_length=r.passage_max_length)
        encoder.freeze_passage_tower()
        return encoder

    def _dense(self, encoder, corpus, config: Re2GConfig):
        r = config.retrieval
        return DenseRetriever.build(corpus, encoder, batch_size=r.batch_size, dtype=r.dtype, cache=True)

    def _candidates(self, config: Re2GConfig, out: Path) -> dict[str, Any]:
        r = config.retrieval
        d = out / "candidates"
        encoder = self._start_encoder(config)
        info: dict[str, Any] = {}
        for split, queries, corpus in (("train", self.train_queries, self.corpus),
                                       *((("eval", self.eval_ds.queries, self.eval_ds.corpus),)
                                         if self.eval_ds is not None else ())):
            depth = max(r.bm25_depth, r.dense_depth, config.eval.top_k if split == "eval" and config.eval else 0)
            bm25 = bm25_cached(corpus).search(queries, top_k=depth)
            dense = self._dense(encoder, corpus, config).search(queries, top_k=depth)
            merged = union_of_tops([(bm25, r.bm25_depth), (dense, r.dense_depth)])
            merged.write_jsonl(d / f"{split}.jsonl", queries, corpus)
            if split == "eval":
                bm25.write_trec(d / "eval_bm25.trec", tag="bm25")
                dense.write_trec(d / "eval_dense_start.trec", tag="dense-start")
                info["metrics"] = {"bm25": evaluate_retrieval(bm25, self.eval_ds),
                                   "dense_start": evaluate_retrieval(dense, self.eval_ds),
                                   "merged": evaluate_retrieval(merged, self.eval_ds)}
            info[f"{split}_questions"] = len(merged)
            info[f"{split}_mean_candidates"] = sum(len(h) for _, h in merged.items()) / max(len(merged), 1)
        return info

    def _lists(self, path: Path) -> list[CandidateList]:
        lists = []
        for ex in load_fid_examples(path):
            if ex.get("answers") and ex["ctxs"]:
                lists.append(CandidateList(len(lists), str(ex["id"]), ex["question"], list(ex["answers"]),
                                           [str(c["id"]) for c in ex["ctxs"]]))
        return lists

    def _train_ranker(self, config: Re2GConfig, out: Path) -> dict[str, Any]:
        cfg = config.ranker
        if cfg.steps == 0:
            return {"ranker": cfg.model, "trained": False}
        gold = self.gold or {}

        def is_positive(qid: str, pid: str) -> bool:
            if cfg.positives == "gold":
                return pid in gold.get(qid, {})
            return has_answer(answers[qid], self.corpus.texts[self.corpus.index_of[pid]])

        lists = self._lists(out / "candidates" / "train.jsonl")
        answers = {ex.qid: ex.answers for ex in lists}
        examples = labelled_lists(((ex.qid, ex.question, ex.pids) for ex in lists), is_positive)
        if not examples:
            raise InputError(out / "candidates" / "train.jsonl",
                             f"no training question has both a positive ({cfg.positives}) and a negative candidate")
        ranker = CrossEncoder.from_pretrained(cfg.model, max_length=cfg.max_length,
                                              query_max_length=cfg.query_max_length)
        summary = train_ranker(ranker, examples, self.corpus, cfg.list_size, cfg.trainer, out / "ranker",
                               seed=config.seed, resume=config.resume, callbacks=self.callbacks,
                               max_steps=cfg.steps)
        return {"ranker": str(out / "ranker" / FINAL_DIR), "trained": True, "lists": len(examples),
                "train": summary}

    def _ranker_path(self, config: Re2GConfig, out: Path) -> str:
        return str(out / "ranker" / FINAL_DIR) if config.ranker.steps > 0 else config.ranker.model

    def _end_to_end(self, config: Re2GConfig, out: Path) -> dict[str, Any]:
        e = config.e2e
        lists = self._lists(out / "candidates" / "train.jsonl")
        encoder = self._start_encoder(config)
        if e.query_encoder == "frozen":
            encoder.requires_grad_(False)
        scale = e.scale or (20.0 if encoder.settings.normalize else 1.0)
        ranker = CrossEncoder.from_pretrained(self._ranker_path(config, out), max_length=config.ranker.max_length,
                                              query_max_length=config.ranker.query_max_length)
        generator = build_generator(config.generator, e.n_generate, config.seed)
        embeddings = encode_corpus_cached(encoder, self.corpus, config.retrieval.batch_size,
                                          dtype=config.retrieval.dtype)
        # One module (attribute access by key), so one Trainer steps and checkpoints all three parts together.
        # A frozen causal LM stays out of it (nothing of it trains or needs checkpointing).
        parts = {"query_encoder": encoder, "ranker": ranker}
        lr = e.trainer.learning_rate
        groups = [{"params": ranker, "lr": e.ranker_learning_rate or lr}]
        if generator.module is not None:
            parts["generator"] = generator.module
            groups.append({"params": [p for p in generator.module.parameters() if p.requires_grad], "lr": lr})
        model = nn.ModuleDict(parts)
        if e.query_encoder == "distill":
            groups.append({"params": encoder.query_model, "lr": e.query_learning_rate or lr})
        args = TrainingArguments.from_config(e.trainer, output_dir=out / "e2e", seed=config.seed,
                                             resume=config.resume)
        trainer = Trainer(model, args, lists, Re2GCollator(ranker, encoder, self.corpus, embeddings),
                          loss_fn=Re2GStep(lists, self.corpus, generator, e, scale), param_groups=groups,
                          # The generator draws each question's answer: its RNG is checkpointed for exact resumes.
                          callbacks=[CollatorRNGCallback(generator), *self.callbacks])
        summary = trainer.train()
        final = out / FINAL_DIR
        save_on_main((encoder, final / "query_encoder"), (ranker, final / "ranker"), (generator, final / "generator"))
        return {"train": summary, "lists": len(lists), "scale": scale}

    def _evaluate(self, config: Re2GConfig, out: Path) -> dict[str, Any]:
        r, ev, e = config.retrieval, config.eval, config.e2e
        final, d, ds = out / FINAL_DIR, out / "candidates", self.eval_ds
        encoder = BiEncoder.from_pretrained(final / "query_encoder")
        dense = self._dense(encoder, ds.corpus, config).search(ds.queries, top_k=max(ev.top_k, r.dense_depth))
        bm25 = bm25_cached(ds.corpus).search(ds.queries, top_k=r.bm25_depth)
        merged = union_of_tops([(bm25, r.bm25_depth), (dense, r.dense_depth)])
        depth = r.bm25_depth + r.dense_depth
        reranked = self._load_ranker(final / "ranker", ev).rerank(merged, ds.queries, ds.corpus, top_k=depth,
                                                                  batch_size=64, show_progress=True)
        reranked.write_trec(out / "eval" / "reranked.trec", tag="re2g")
        metrics: dict[str, Any] = {"dense_trained": evaluate_retrieval(dense, ds),
                                   "merged_trained": evaluate_retrieval(merged, ds),
                                   "reranked": evaluate_retrieval(reranked, ds)}
        systems = {"reranked": reranked}
        if ev.generator_baselines:  # the pipeline without end-to-end training, read by the same generator
            start = self._load_ranker(self._ranker_path(config, out), ev).rerank(
                Run.read_jsonl(d / "eval.jsonl"), ds.queries, ds.corpus, top_k=depth, batch_size=64, show_progress=True)
            metrics["reranked_start"] = evaluate_retrieval(start, ds)
            systems.update(bm25=Run.read_trec(d / "eval_bm25.trec"), dense_start=Run.read_trec(d / "eval_dense_start.trec"),
                           reranked_start=start)
        qids = [q for q in ds.queries.ids if reranked.get(q)][: ev.reader_max_queries]
        examples = {name: [{"id": qid, "question": ds.queries.texts[ds.queries.index_of[qid]],
                            "ctxs": [{**ds.corpus.passage(pid), "score": score} for pid, score in run[qid][: e.n_generate]]}
                           for qid in qids if run.get(qid)] for name, run in systems.items()}
        generator = load_generator(final / "generator", config.generator, e.n_generate, config.seed)
        predictions = generate_logged(generator, examples, out / "eval" / "generations.jsonl", ev.batch_size)
        write_json(out / "eval" / "predictions.json", predictions["reranked"])
        for name in systems:
            key = "generator" if name == "reranked" else f"generator_{name}"
            metrics[key] = evaluate_answers(predictions[name], ds.queries.subset(qids))
        start_metrics = (read_json(out / STAGES_DIR / "candidates.json") or {}).get("metrics", {})
        return {"metrics": {**start_metrics, **metrics}}

    @staticmethod
    def _load_ranker(path, ev: Re2GEval) -> CrossEncoder:
        return CrossEncoder.from_pretrained(path).with_inference_dtype(ev.ranker_dtype)


__all__ = ["CandidateList", "Re2GCollator", "Re2GConfig", "Re2GRecipe", "Re2GStep"]
