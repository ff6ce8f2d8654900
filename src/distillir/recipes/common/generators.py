"""Re2G's generator behind one small interface, so the recipe does not branch on its kind:

- `Seq2SeqGenerator`: a FiD reader (any HF encoder-decoder) encoding each passage alone (`readers.rag`), trained;
- `CausalLMGenerator`: a decoder-only LM reading each (question, passage) prompt alone (`readers.rag_lm`), frozen
  or with its last `generator.lm.train_layers` layers trained.

Both give the answer's likelihood marginalised over passages with given log-weights (the re-ranker's, so its
loss trains the re-ranker), answer by RAG-token greedy decoding, and save themselves.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from distillir.models.seq2seq import IGNORE_INDEX
from distillir.recipes.common.config import ReaderConfig
from distillir.utils.io import atomic_write, write_json

LM_POINTER = "generator.json"  # a frozen causal LM is saved as the model it is, not as a copy of its weights


class Seq2SeqGenerator:
    def __init__(self, reader, cfg: ReaderConfig, n: int, seed: int):
        self.reader, self.cfg, self.n = reader, cfg, n
        self.module = reader  # what trains (in the recipe's ModuleDict)
        self.collate = reader.collator(n, answer_choice=cfg.answer_choice, seed=seed, labels=True)

    @property
    def _rng(self) -> random.Random:  # the answer-sampling RNG that CollatorRNGCallback checkpoints
        return self.collate._rng

    def log_likelihood(self, examples: Sequence[dict], log_weights, style: str):
        from distillir.readers.rag import marginal_log_likelihood

        batch = self.collate(examples).to(log_weights.device)
        return (marginal_log_likelihood(self.reader, batch, log_weights, style),
                (batch.labels != IGNORE_INDEX).sum(dim=-1))

    def predict(self, examples: Sequence[dict], batch_size: int) -> dict[str, str]:
        from distillir.readers.rag import predict_marginal

        return predict_marginal(self.reader, examples, batch_size=batch_size, n_passages=self.n,
                                max_new_tokens=self.cfg.answer_max_length)

    def predict_systems(self, systems: dict[str, Sequence[dict]], batch_size: int, done) -> None:
        for name, examples in systems.items():
            for qid, answer in self.predict(examples, batch_size).items():
                done(name, qid, answer)

    def save_pretrained(self, path: Path) -> None:
        self.reader.save_pretrained(path)

    @classmethod
    def load(cls, path: Path, cfg: ReaderConfig, n: int, seed: int) -> Seq2SeqGenerator:
        from distillir.readers.fid import FiDReader

        reader = FiDReader.from_pretrained(path, n_passages=n, passage_max_length=cfg.passage_max_length,
                                           answer_max_length=cfg.answer_max_length)
        return cls(reader, cfg, n, seed)


class CausalLMGenerator:
    def __init__(self, reader, cfg: ReaderConfig, n: int, seed: int):
        from distillir.readers.rag_lm import train_last_layers

        self.reader, self.cfg, self.n = reader, cfg, n
        self.trainable = train_last_layers(reader, cfg.lm.train_layers)
        self.module = reader.model if self.trainable else None  # a frozen LM stays out of checkpoints
        self._rng = random.Random(seed)

    def _answer(self, answers: Sequence[str]) -> str:
        return answers[0] if self.cfg.answer_choice == "first" else self._rng.choice(list(answers))

    def log_likelihood(self, examples: Sequence[dict], log_weights, style: str):
        from distillir.readers.rag_lm import marginal_log_likelihood

        return marginal_log_likelihood(self.reader, [ex["question"] for ex in examples],
                                       [ex["ctxs"] for ex in examples],
                                       [self._answer(ex["answers"]) for ex in examples], log_weights, style)

    def predict(self, examples: Sequence[dict], batch_size: int) -> dict[str, str]:
        from distillir.readers.rag_lm import predict_marginal

        return predict_marginal(self.reader, examples, n_passages=self.n, batch_size=batch_size,
                                max_new_tokens=self.cfg.answer_max_length)

    def predict_systems(self, systems: dict[str, Sequence[dict]], batch_size: int, done) -> None:
        from distillir.readers.rag_lm import predict_systems

        predict_systems(self.reader, systems, n_passages=self.n, batch_size=batch_size,
                        max_new_tokens=self.cfg.answer_max_length, done=done)

    def save_pretrained(self, path: Path) -> None:
        path = Path(path)
        if self.trainable:
            self.reader.model.save_pretrained(path)
            self.reader.tokenizer.save_pretrained(path)
        write_json(path / LM_POINTER, {"model": str(self.cfg.model), "trained": bool(self.trainable),
                                       "train_layers": self.cfg.lm.train_layers,
                                       "prompts_fingerprint": self.reader.prompts.fingerprint()})

    @classmethod
    def load(cls, path: Path, cfg: ReaderConfig, n: int, seed: int) -> CausalLMGenerator:
        from dataclasses import replace

        from distillir.recipes.common.reading import build_lm_reader

        saved = json.loads((Path(path) / LM_POINTER).read_text(encoding="utf-8"))
        model = str(path) if saved.get("trained") else saved["model"]  # trained: the weights saved beside it
        lm = replace(cfg.lm, train_layers=0, dtype="float32" if saved.get("trained") and cfg.lm.dtype == "auto"
                     else cfg.lm.dtype)
        loaded = replace(cfg, model=model, lm=lm)
        return cls(build_lm_reader(loaded), loaded, n, seed)


def generate_logged(generator, systems: dict[str, Sequence[dict]], log: Path, batch_size: int):
    """{system: {qid: answer}} for several systems' reader examples, each answer appended to `log` (JSONL) as it
    comes: a killed evaluation resumes where it stopped (a torn last line is read again)."""
    from distillir.utils.io import append_jsonl

    done: dict[str, dict[str, str]] = {name: {} for name in systems}
    log = Path(log)
    if log.is_file():
        text = log.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # killed mid-line: keep the whole lines, so appends start clean
            text = text[: text.rfind("\n") + 1]
            with atomic_write(log) as f:
                f.write(text)
        for line in text.splitlines():
            row = json.loads(line)
            if row.get("system") in done:
                done[row["system"]][row["id"]] = row["answer"]
    todo = {name: [ex for ex in examples if str(ex["id"]) not in done[name]] for name, examples in systems.items()}
    generator.predict_systems({k: v for k, v in todo.items() if v}, batch_size,
                              lambda name, qid, answer: (done[name].__setitem__(qid, answer),
                                                         append_jsonl(log, {"system": name, "id": qid,
                                                                                 "answer": answer})))
    return done


def build_generator(cfg: ReaderConfig, n: int, seed: int):
    """Re2G's generator from its config: a new (seeded) seq2seq reader, or the causal LM as it is."""
    if cfg.kind == "causal-lm":
        from dataclasses import replace

        from distillir.recipes.common.reading import build_lm_reader

        if cfg.lm.train_layers and cfg.lm.dtype == "auto":  # trained weights and AdamW in float32
            cfg = replace(cfg, lm=replace(cfg.lm, dtype="float32"))
        return CausalLMGenerator(build_lm_reader(cfg), cfg, n, seed)
    from distillir.recipes.common.reading import build_reader

    return Seq2SeqGenerator(build_reader(cfg, n, seed), cfg, n, seed)


def load_generator(path: Path, cfg: ReaderConfig, n: int, seed: int):
    return (CausalLMGenerator if (Path(path) / LM_POINTER).is_file() else Seq2SeqGenerator).load(path, cfg, n, seed)


__all__ = ["CausalLMGenerator", "Seq2SeqGenerator", "build_generator", "load_generator"]
