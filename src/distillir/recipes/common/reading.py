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
from distillir.teachers.across_processes import score_across_processes
from distillir.teachers.answers import answer_match_scores
from distillir.teachers.quality import answer_hits
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


def train_fid_reader(cfg: ReaderConfig, examples: Sequence[dict], n_passages: int, seed: int, out_dir: Path, *,
                     run_seed: int, warm_start: Path | None = None, resume: bool = False, callbacks=()):
    """A FiD reader trained on reader examples (`seed` draws its initialisation and answers, `run_seed` the
    Trainer's order), saved to `out_dir/final` by the main process."""
    from distillir.recipes.common.run import FINAL_DIR, save_on_main
    from distillir.training.arguments import TrainingArguments
    from distillir.training.trainer import Trainer

    reader = build_reader(cfg, n_passages, seed, warm_start=warm_start)
    collate = reader.collator(n_passages, answer_choice=cfg.answer_choice, seed=seed, labels=True)
    args = TrainingArguments.from_config(cfg.trainer, output_dir=out_dir, seed=run_seed, resume=resume)
    trainer = Trainer(reader, args, examples, collate, loss_fn=reader_loss,
                      callbacks=[CollatorRNGCallback(collate), *callbacks])
    summary = trainer.train()
    save_on_main((reader, out_dir / FINAL_DIR))
    return reader, summary


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


def qa_queries(queries, keep_unanswered: bool = False):
    """The training questions reduced to what FiD-KD may use: ids, texts and answers (no gold passages);
    questions without an answer are left out (the reader needs one to learn from) unless `keep_unanswered`."""
    answers = queries.answers or [[] for _ in queries.ids]
    keep = [i for i, a in enumerate(answers) if a or keep_unanswered]
    return Queries([queries.ids[i] for i in keep], [queries.texts[i] for i in keep],
                   [list(answers[i] or []) for i in keep], source=queries.source)


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


def qa_training_split(dataset: str, split: str, max_queries, seed: int, need_answers: bool = True):
    """(the training split, its questions reduced to ids, texts and answers: `qa_queries`); a ConfigError when no
    question has an answer to learn from. `need_answers=False` (a questions-only teacher) keeps every question."""
    train = load_dataset(dataset, split, max_queries=max_queries, seed=seed)
    queries = qa_queries(train.queries, keep_unanswered=not need_answers)
    if not len(queries):
        raise ConfigError(f"{dataset}/{split}: no question has an answer to learn from")
    return train, queries


def build_lm_reader(cfg: ReaderConfig, aggregation: str = "pdist"):
    """The causal-LM reader of `reader.kind: causal-lm`, in the configured precision ("auto": bf16 where native);
    eager attention for the attention teacher (fused kernels hide the weights)."""
    from distillir.readers.causal_lm import CausalLMReader

    reader = CausalLMReader.from_pretrained(cfg.model, prompts=cfg.lm.prompts, dtype=cfg.lm.dtype,
                                            passage_max_tokens=cfg.passage_max_length,
                                            attn_implementation="eager" if aggregation == "attention" else None)
    reader.model.to(torch_device(cfg.trainer.cpu))
    return reader


LM_TEACHERS = ("pdist", "question_likelihood", "attention", "loop")


def check_reader_teacher(cfg: ReaderConfig, aggregation: str) -> None:
    """A causal LM scores with the LM teachers only; question likelihood needs a causal LM."""
    if cfg.kind == "causal-lm" and aggregation not in LM_TEACHERS:
        raise ConfigError(f"reader.kind: causal-lm scores with teacher.aggregation {' or '.join(LM_TEACHERS)}, "
                          f"got {aggregation!r}")
    if cfg.kind == "fid" and aggregation in ("question_likelihood", "attention"):
        raise ConfigError(f"teacher.aggregation: {aggregation} needs reader.kind: causal-lm (a FiD reader's "
                          f"attention aggregations are fid, post_softmax, all_tokens, max, adist)")


def reader_teacher(reader, examples: Sequence[dict], cfg: ReaderConfig, aggregation: str, n_passages: int, *,
                   layers=None):
    """Teacher scores for the lists from either reader: a causal LM through the LM teachers (and their score
    cache), a FiD reader through `score_teacher`."""
    if cfg.kind == "causal-lm" and aggregation == "attention":
        from distillir.teachers.lm_attention import lm_attention_scores

        return lm_attention_scores(reader, examples, n_passages=n_passages, layers=layers)
    if cfg.kind == "causal-lm" and aggregation == "loop":
        from distillir.teachers.lm_likelihood import default_cache
        from distillir.teachers.lm_loop import lm_loop_scores

        return lm_loop_scores(reader, examples, n_passages=n_passages, reduce=cfg.lm.reduce,
                              batch_size=max(1, cfg.batch_size // 2), cache=default_cache(reader) if cfg.lm.cache else None)
    if cfg.kind == "causal-lm":
        from distillir.teachers.lm_likelihood import default_cache, lm_teacher_scores

        return lm_teacher_scores(reader, examples, aggregation, reduce=cfg.lm.reduce, answers=cfg.lm.answers,
                                 n_passages=n_passages, batch_size=cfg.batch_size,
                                 cache=default_cache(reader) if cfg.lm.cache else None)
    return score_teacher(reader, examples, aggregation, layers=layers, n_passages=n_passages,
                         batch_size=cfg.batch_size, dtype=cfg.inference_dtype)


def score_lists(reader, examples: Sequence[dict], cfg: ReaderConfig, aggregation: str, n_passages: int,
                path: Path, *, layers=None, label: str = "") -> dict[str, Any]:
    """A teacher stage: `reader_teacher` over the lists (under torchrun each process scores its share), the
    scores written to `path`, and what the teacher knows (`answer_hits`), warned about when it knows less
    than the retriever that built the lists."""
    before = (getattr(reader, "passages_read", 0), getattr(reader, "passages_cut", 0))
    scores = score_across_processes(
        lambda part: reader_teacher(reader, part, cfg, aggregation, n_passages, layers=layers), examples)
    scores.write(path)
    window = passage_window(reader, before, label)
    hits = answer_hits(scores, examples)
    if hits["answer_lists"] and hits["teacher_hit@1"] <= hits["retriever_hit@1"]:
        logger.warning("%s: the teacher's top passage holds an answer in %.1f%% of lists, the retriever's own "
                       "first passage in %.1f%%: this teacher knows less than the retriever it teaches (train "
                       "the reader longer, or use another aggregation)", label, 100 * hits["teacher_hit@1"],
                       100 * hits["retriever_hit@1"])
    return {"teacher": scores.teacher, "questions": len(scores), "file": str(path), "answer_hits": hits,
            **({"passage_window": window} if window else {})}


def passage_window(reader, before: tuple[int, int], label: str = "") -> dict[str, Any] | None:
    """How many passages a causal-LM reader read since `before` (its counts then) and how many of them its
    window (reader.passage_max_length) cut; warned about when most were cut. None for a reader without counts."""
    if not hasattr(reader, "passages_read"):
        return None
    read, cut = reader.passages_read - before[0], reader.passages_cut - before[1]
    if not read:
        return None
    if cut / read > 0.5:
        logger.warning("%s: %d of %d passages (%.0f%%) were cut to %d tokens before the LM read them: it scores "
                       "from their beginnings only; reader.passage_max_length raises the window (cost grows with it)",
                       label, cut, read, 100 * cut / read, reader.passage_max_tokens)
    return {"passages": read, "cut": cut, "max_tokens": reader.passage_max_tokens}


def list_teacher(kind: str, examples: Sequence[dict], path: Path, *, ranker: str | None = None,
                 ranker_max_length: int = 256, ranker_dtype: str = "auto", batch_size: int = 64) -> dict[str, Any]:
    """A teacher stage without a reader: "answers" (1 where a passage holds an answer string) or "ranker" (a
    cross-encoder's logits; under torchrun each process scores its share), written to `path`, with what it
    knows about the lists (`answer_hits`) where they have answers."""
    if kind == "answers":
        scores = answer_match_scores(examples)
    else:
        from distillir.rankers.cross_encoder import CrossEncoder
        from distillir.teachers.ranker import ranker_scores

        model = CrossEncoder.from_pretrained(ranker, max_length=ranker_max_length).eval()
        model.with_inference_dtype(ranker_dtype)
        scores = score_across_processes(lambda part: ranker_scores(model, part, batch_size, name=str(ranker)),
                                        examples)
    scores.write(path)
    record = {"teacher": scores.teacher, "questions": len(scores), "file": str(path),
              "with_an_answer": sum(1 for q in scores if max(scores[q][1], default=0) > 0) if kind == "answers" else None}
    if kind != "answers" and any(ex.get("answers") for ex in examples):
        record["answer_hits"] = answer_hits(scores, examples)
    return record


def read_answers(reader, examples: Sequence[dict], cfg: ReaderConfig, n_passages: int) -> dict[str, str]:
    """{question id: answer} from either reader (a causal LM reads its first `lm.read_passages` joined)."""
    if cfg.kind == "causal-lm":
        return reader.read(examples, n_passages=cfg.lm.read_passages, max_new_tokens=cfg.answer_max_length,
                           batch_size=cfg.batch_size)
    with inference_autocast(cfg.inference_dtype, str(reader.device)):
        return reader.predict(examples, batch_size=cfg.batch_size, n_passages=n_passages,
                              max_new_tokens=cfg.answer_max_length, num_beams=cfg.num_beams)


__all__ = [
    "CollatorRNGCallback",
    "build_lm_reader",
    "build_reader",
    "check_reader_teacher",
    "collapse_check",
    "evaluate_retrieval",
    "free_accelerator_memory",
    "inference_autocast",
    "list_teacher",
    "load_eval_split",
    "passage_window",
    "qa_queries",
    "qa_training_split",
    "read_answers",
    "reader_loss",
    "reader_teacher",
    "score_lists",
    "score_teacher",
    "torch_device",
]
