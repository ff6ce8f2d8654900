"""The reader side of the recipes that train or run a seq2seq model (FiD-KD's reader, Re2G's generator, DGR's
identifier generator), and the question-answering data they read: building the model from a `ReaderConfig`,
its loss, the collator's RNG across resumes, inference precision, devices; QA questions and their evaluation.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distillir.data.datasets import load_dataset
from distillir.data.types import Queries
from distillir.errors import ConfigError
from distillir.evaluation import diagnostics, evaluate_run
from distillir.models import resolve_model
from distillir.readers.fid import FiDReader
from distillir.recipes.common.config import ReaderConfig
from distillir.recipes.common.run import seed_everything
from distillir.teachers.scores import score_with_reader
from distillir.training.state import TrainerCallback
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

RNG_STATE_FILE = "collator_rng.json"


class CollatorRNGCallback(TrainerCallback):
    """Checkpoints the reader collator's own answer-sampling RNG, so a resumed run draws the same answers."""

    def __init__(self, collator):
        self.collator = collator

    def on_save(self, trainer, checkpoint_dir: Path) -> None:
        version, state, gauss = self.collator._rng.getstate()
        write_json(Path(checkpoint_dir) / RNG_STATE_FILE, {"version": version, "state": list(state), "gauss": gauss})

    def on_resume(self, trainer, checkpoint_dir: Path) -> None:
        path = Path(checkpoint_dir) / RNG_STATE_FILE
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.collator._rng.setstate((saved["version"], tuple(saved["state"]), saved["gauss"]))


def reader_loss(model, batch):
    """Trainer `loss_fn` for the FiD reader: token cross-entropy of the answer."""
    return model(**batch.model_inputs()).loss


def torch_device(cpu: bool = False) -> str:
    return "cuda" if torch.cuda.is_available() and not cpu else "cpu"


def inference_autocast(dtype: str, device: str):
    """bf16 autocast for reader inference on a GPU; nothing otherwise."""
    if dtype == "bfloat16" and device != "cpu":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_reader(cfg: ReaderConfig, n_passages: int, seed: int, warm_start: str | Path | None = None):
    """A FiD reader from the config (seeded, so its new weights are the same in every run), or the saved
    reader at `warm_start`."""
    settings = {"n_passages": n_passages, "passage_max_length": cfg.passage_max_length,
                "answer_max_length": cfg.answer_max_length}
    seed_everything(seed)
    if warm_start is not None:
        reader = FiDReader.from_pretrained(warm_start, capture=cfg.capture, **settings)
    elif cfg.init == "encoder-decoder":
        kwargs = {}
        if cfg.num_layers is not None:
            kwargs = {"encoder_num_hidden_layers": cfg.num_layers, "decoder_num_hidden_layers": cfg.num_layers}
        reader = FiDReader.from_encoder(resolve_model(cfg.model), capture=cfg.capture, model_kwargs=kwargs,
                                        **settings)
    elif cfg.init == "pretrained":
        reader = FiDReader.from_pretrained(resolve_model(cfg.model), capture=cfg.capture, **settings)
    else:
        reader = FiDReader.from_config(resolve_model(cfg.model), capture=cfg.capture, settings=settings, **cfg.t5)
    if cfg.gradient_checkpointing:
        reader.model.gradient_checkpointing_enable()
    return reader


def score_teacher(reader, examples: Sequence[dict], aggregation: str = "fid", *, layers=None, n_passages=None,
                  batch_size: int = 8, dtype: str = "float32"):
    """Teacher scores (`TeacherScores`) for reader examples with a trained reader, under bf16 autocast on a GPU
    when `dtype` says so (the recipe's teacher stage; also used by the aggregation ablation)."""
    device = str(reader.device)
    with inference_autocast(dtype, device):
        return score_with_reader(reader, examples, aggregation, batch_size=batch_size, n_passages=n_passages,
                                 layers=layers)


def evaluate_retrieval(run, dataset) -> dict[str, Any]:
    """Answer recall (Top-k), and gold MRR@10 / recall from the eval split's qrels, for a run."""
    return evaluate_run(run, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)


def collapse_check(run, label: str) -> dict[str, Any]:
    """top1_concentration of a run, with a warning when one passage comes first for most queries."""
    found = diagnostics.top1_concentration(run)
    if found["collapsed"]:
        logger.warning("%s collapsed: passage %s is ranked first for %.0f%% of %d questions (%d distinct first "
                       "passages): it no longer depends on the query; check the teacher's answer_hits and the "
                       "retriever's learning rate",
                       label, found["top1_max_pid"], 100 * found["top1_max_share"], found["queries"],
                       found["distinct_top1"])
    return found


def qa_queries(queries):
    """The training questions reduced to what FiD-KD may use: ids, texts and answers (no gold passages);
    questions without an answer are left out (the reader needs one to learn from)."""
    keep = [i for i, a in enumerate(queries.answers) if a]
    return Queries([queries.ids[i] for i in keep], [queries.texts[i] for i in keep],
                   [list(queries.answers[i]) for i in keep], source=queries.source)


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_eval_split(dataset: str, split: str, max_queries, seed: int, train_corpus):
    """The eval split, sharing the training corpus object when it is the same corpus (one BM25 index, one
    dense index serve both)."""
    eval_ds = load_dataset(dataset, split, max_queries=max_queries, seed=seed)
    if eval_ds.corpus.fingerprint() == train_corpus.fingerprint():
        eval_ds.corpus = train_corpus
    return eval_ds


def qa_training_split(dataset: str, split: str, max_queries, seed: int):
    """(the training split, its questions reduced to ids, texts and answers: `qa_queries`); a ConfigError when no
    question has an answer to learn from."""
    train = load_dataset(dataset, split, max_queries=max_queries, seed=seed)
    queries = qa_queries(train.queries)
    if not len(queries):
        raise ConfigError(f"{dataset}/{split}: no question has an answer to learn from")
    return train, queries


__all__ = [
    "CollatorRNGCallback",
    "build_reader",
    "collapse_check",
    "evaluate_retrieval",
    "free_accelerator_memory",
    "inference_autocast",
    "load_eval_split",
    "qa_queries",
    "qa_training_split",
    "reader_loss",
    "score_teacher",
    "torch_device",
]
