"""FiD-KD: distil a Fusion-in-Decoder reader's cross-attention into a dense retriever, without relevance labels.

Izacard & Grave (2021), "Distilling Knowledge from Reader to Retriever for Question Answering" (ICLR;
facebookresearch/FiD). The only supervision is question-answer pairs and a corpus: a reader learns to answer
from a retriever's top-n passages, the passages it attends to become the teacher scores T(q, p), and a
bi-encoder learns to reproduce T over each question's list. Iterating improves both.

Round k (directory `output_dir/round-k/`), each stage resumable on its own:

  retrieve     the current retriever (round 1: `start`, BM25 or a dense model; later: round k-1's distilled
               retriever over its re-embedded corpus, `round-(k-1)/index/`) fetches the top-n of every training
               question and the top-`eval.top_k` of every eval question -> `retrieve/{train,eval}.trec` and the
               reader's ctxs JSONL `retrieve/{train,eval}.jsonl`; eval metrics of that retriever.
  reader       train the FiD reader on the training questions' top-n (its own Trainer in `reader/`;
               round k > 1 continues round k-1's reader when `reader.warm_start_next_round`) -> `reader/final/`.
  reader_eval  the reader's answers for the eval questions' top-n -> `reader/predictions.json`; EM / F1.
  teacher      teacher scores for every training question's top-n (`score_with_reader`, the configured
               aggregation) -> `teacher/scores.jsonl` (the teacher-score JSONL format of `distillir.teachers`).
  retriever    train the bi-encoder on the lists: for each question, S_i = similarity(q, p_i) over its own n
               passages (not in-batch), loss(S, T) with KL (temperature), MSE or max-margin (its own Trainer in
               `retriever/`) -> `retriever/final/`; the student's agreement with the teacher before and after.
               T is the raw score (the paper) or, with `teacher.normalize: zscore`, standardised per question.
  index        re-embed the corpus with the trained encoder -> `index/` (a saved `DenseRetriever`), retrieve for
               the eval questions -> `eval/retriever.trec`; eval metrics. Round k+1 retrieves from this index.

Every stage writes its outputs atomically and then its marker `stages/<stage>.json` (wall time, results), so
a resumed run (`resume: true`) skips finished stages and an interrupted Trainer continues from its last
checkpoint. `round-k/metrics.json` gathers a round; `results.json` all rounds.

`teacher_scores: PATH` distils from a score file produced elsewhere (the same JSONL format): the reader
stages are skipped and only one round runs.

No relevance labels are read for training: the training split is reduced to question ids, texts and answers.
Gold passages (qrels) are used only to *evaluate* on the eval split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distillir.errors import ConfigError, InputError
from distillir.models import DEFAULT_ENCODER
from distillir.recipes.base import FINAL_DIR, METRICS_FILE, Recipe, seed_everything
from distillir.training.trainer import TrainConfig, TrainerCallback
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

STAGES = ("retrieve", "reader", "reader_eval", "teacher", "retriever", "index")
STAGES_DIR = "stages"
SCORES_FILE = "scores.jsonl"
PREDICTIONS_FILE = "predictions.json"
AGREEMENT_BEFORE_FILE = "agreement_before.json"
RNG_STATE_FILE = "collator_rng.json"


# ------------------------------------------------------------------------------------------- config


@dataclass
class FiDKDEval:
    """Evaluation after every stage that changes a model: retriever answer recall (Top-k), gold MRR@10 and
    recall (from the eval split's qrels, used for evaluation only), and reader EM / F1."""

    dataset: str | None = None  # None: the training dataset (same corpus: one index serves both)
    split: str = "dev"
    max_queries: int | None = 1000  # a seeded sample; null: every question of the split
    top_k: int = 100  # retrieval depth evaluated (Top-1/5/20/100)
    start_retriever: bool = True  # also evaluate the retriever round 1 starts from (BM25 / `start`)
    reader: bool = True  # reader EM / F1 on the eval questions' top-n
    reader_max_queries: int | None = None  # read only the first N sampled eval questions (generation is slow)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")


@dataclass
class FiDKDReader:
    """The FiD reader: how it is built, its input lengths, and how it is trained and run."""

    # encoder-decoder: EncoderDecoderModel warm-started from the BERT-like encoder `model` (cross-attention new);
    # pretrained: any HF seq2seq model id or path (t5-base, bart-base, a saved FiDReader);
    # t5-config: a randomly initialised T5 sized by `t5` with `model`'s tokenizer.
    init: Literal["encoder-decoder", "pretrained", "t5-config"] = "encoder-decoder"
    model: str = DEFAULT_ENCODER
    num_layers: int | None = None  # encoder-decoder: keep only the first N layers (encoder and decoder)
    t5: dict[str, Any] = field(default_factory=dict)  # t5-config: T5Config fields (d_model, num_layers, ...)
    passage_max_length: int = 200  # tokens of "question: q title: t context: p" (paper: 200-250)
    answer_max_length: int = 32
    answer_choice: Literal["first", "random"] = "random"  # training target among several answers (FiD: random)
    capture: Literal["logits", "eager"] = "logits"  # how teacher attention is read (see FiDReader)
    gradient_checkpointing: bool = False
    warm_start_next_round: bool = True  # round k > 1 continues round k-1's reader
    batch_size: int = 8  # questions per batch when predicting answers and scoring passages
    num_beams: int = 1
    inference_dtype: Literal["float32", "bfloat16"] = "float32"  # autocast for prediction and scoring (GPU)
    trainer: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=1e-4, weight_decay=0.01, warmup_ratio=0.05,
                                            per_device_batch_size=4)
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_beams < 1:
            raise ConfigError("batch_size and num_beams must be at least 1")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"num_layers must be at least 1 (or null), got {self.num_layers}")


@dataclass
class FiDKDTeacher:
    aggregation: Literal["fid", "post_softmax", "all_tokens", "max", "adist", "pdist", "loop"] = "fid"
    layers: list[int] | None = None  # decoder layers for attention aggregations (negative from the end); null: all
    # How the raw scores become the distillation target T, per question, before the loss (the score file keeps
    # the raw scores). none: as they are (the paper). zscore: (T - mean) / std over the question's list, which
    # makes the target's sharpness independent of the reader's attention scale (a barely trained or BERT-style
    # reader's mean attention logits differ by ~0.01 across passages: softmax(T) would be uniform).
    normalize: Literal["none", "zscore"] = "none"
    scale: float = 1.0  # multiplies the (normalised) scores: an inverse temperature on the teacher side only

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"teacher.scale must be positive, got {self.scale}")


@dataclass
class FiDKDRetriever:
    """The student bi-encoder and its distillation loss."""

    model: str = DEFAULT_ENCODER  # the student's initial weights (hub id or path)
    loss: Literal["kl", "mse", "margin"] = "kl"
    temperature: float = 1.0  # KL: softmax(T / tau) vs softmax(S / tau) (FiD: 1; Atlas: 0.01)
    margin: float = 1.0  # max-margin: gamma, on the student's score scale
    # S = scale * q.p. null: a distillir encoder's own; else 20 (a 0.05 temperature) for unit-length embeddings,
    # 1/sqrt(dim) otherwise (FiD's code).
    scale: float | None = None
    normalize: bool | None = None  # unit-length embeddings; null: as the model's files say (MiniLM: yes)
    shared: bool = True  # one tower for questions and passages (FiD-KD)
    # false: query-side fine-tuning (as in Atlas): the passage tower stays `model`'s weights, frozen, so the
    # corpus is embedded once (and cached) instead of every round, and training reads those embeddings
    # instead of encoding passages. Implies separate towers. true: the paper's full fine-tuning.
    train_passages: bool = True
    query_max_length: int = 40
    passage_max_length: int = 200
    continue_training: bool = True  # round k > 1 starts from round k-1's retriever (else from `model` again)
    # true: the batch's other lists are negatives too (teacher probability 0; losses.InBatchListLoss). The
    # paper distils over each question's own list only (false).
    in_batch_negatives: bool = False
    agreement_sample: int = 256  # training lists on which student-teacher agreement is measured (0: skip)
    trainer: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=5e-5, warmup_ratio=0.05, per_device_batch_size=8)
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"scale must be positive (or null for the default), got {self.scale}")
        if self.agreement_sample < 0:
            raise ConfigError(f"agreement_sample must not be negative, got {self.agreement_sample}")
        if not self.train_passages and self.shared:
            self.shared = False  # a frozen passage tower beside a trained query tower: two towers


@dataclass
class FiDKDEncode:
    """Corpus (re-)embedding and query encoding for dense retrieval."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16: fast on GPUs and AMX CPUs
    batch_size: int = 64


@dataclass
class FiDKDConfig:
    output_dir: str = "runs/fid-kd"
    seed: int = 42
    resume: bool = False
    dataset: str = "squad-open"  # a known name or a QA dataset directory (question + answers per line)
    train_split: str = "train"
    max_train_queries: int | None = 1000  # a seeded sample of the training questions; null: all
    start: str = "bm25"  # the first round's retriever: "bm25", or a dense model id / path
    rounds: int = 2
    n_passages: int = 10  # passages per question read by the reader and distilled into the retriever
    teacher_scores: str | None = None  # distil from this score file (reader stages skipped; one round)
    # A round whose retriever ranks one passage first for most questions (evaluation.top1_concentration):
    # "warn" logs it and goes on; "stop" ends the run there (the next round's reader would read noise).
    on_collapse: str = "warn"
    reader: FiDKDReader = field(default_factory=FiDKDReader)
    teacher: FiDKDTeacher = field(default_factory=FiDKDTeacher)
    retriever: FiDKDRetriever = field(default_factory=FiDKDRetriever)
    encode: FiDKDEncode = field(default_factory=FiDKDEncode)
    eval: FiDKDEval | None = field(default_factory=FiDKDEval)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.n_passages < 1:
            raise ConfigError(f"n_passages must be at least 1, got {self.n_passages}")
        if self.teacher_scores is not None and self.rounds != 1:
            raise ConfigError("teacher_scores gives the scores of one round; set rounds: 1 (later rounds need the "
                              "reader to score the new retriever's passages)")
        if self.max_train_queries is not None and self.max_train_queries < 1:
            raise ConfigError(f"max_train_queries must be at least 1 (or null), got {self.max_train_queries}")
        if self.on_collapse not in ("warn", "stop"):
            raise ConfigError(f"on_collapse must be 'warn' or 'stop', got {self.on_collapse!r}")


# ------------------------------------------------------------------------------------------- pieces


@dataclass
class ListExample:
    """One question's candidate list and its teacher scores: what the retriever is distilled on."""

    qid: str
    query: str
    pids: list[str]
    scores: list[float]


def teacher_targets(values: Sequence[float], normalize: str = "none", scale: float = 1.0) -> list[float]:
    """One question's distillation targets from its raw teacher scores (see `FiDKDTeacher.normalize`)."""
    values = [float(v) for v in values]
    if normalize == "zscore" and values:
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        values = [(v - mean) / std if std > 0 else 0.0 for v in values]
    elif normalize not in ("none", "zscore"):
        raise ConfigError(f"unknown teacher score normalization {normalize!r}; choose none or zscore")
    return [scale * v for v in values]


def list_examples(scores, queries=None, corpus=None, source: str | Path | None = None, *, normalize: str = "none",
                  scale: float = 1.0) -> list[ListExample]:
    """`ListExample`s from `TeacherScores`, in file order, with targets from `teacher_targets`. The question
    text comes from the score file's `query` field, else from `queries` (by qid); every pid must be in
    `corpus` when given."""
    examples = []
    for qid, (pids, values) in scores.items():
        text = scores.queries.get(qid)
        if text is None and queries is not None and qid in queries.index_of:
            text = queries.texts[queries.index_of[qid]]
        if text is None:
            raise InputError(source, f"question {qid!r} has no query text in the file nor in the training split",
                             field="query")
        if corpus is not None:
            unknown = [p for p in pids if p not in corpus]
            if unknown:
                raise InputError(source, f"question {qid!r}: passages not in the corpus: {unknown[:3]}", field="pids")
        if pids:
            examples.append(ListExample(qid, text, list(pids), teacher_targets(values, normalize, scale)))
    return examples


class ListCollator:
    """ListExamples -> {"query", "passage", "teacher", "mask"}.

    Passages are the lists concatenated, each padded to the batch's longest list with empty passages (masked
    out), so `encode_passage(batch["passage"])` reshapes to (B, n, dim). teacher, mask: (B, n).
    """

    def __init__(self, encoder, corpus, passage_embeddings=None):
        """`passage_embeddings` (len(corpus), dim), in corpus order: give them (a frozen passage tower) and
        batches carry "passage_embeddings" (B, n, dim) instead of passage tokens."""
        self.encoder = encoder
        self.corpus = corpus
        self.passage_embeddings = passage_embeddings

    def __call__(self, examples: Sequence[ListExample]) -> dict[str, Any]:
        import torch

        width = max(len(ex.pids) for ex in examples)
        if self.passage_embeddings is not None:
            emb = self.passage_embeddings
            rows = torch.zeros(len(examples), width, dtype=torch.long)
            mask = torch.zeros(len(examples), width, dtype=torch.bool)
            teacher = torch.zeros(len(examples), width, dtype=torch.float32)
            for i, ex in enumerate(examples):
                n = len(ex.pids)
                rows[i, :n] = torch.tensor([self.corpus.index_of[pid] for pid in ex.pids])
                mask[i, :n] = True
                teacher[i, :n] = torch.tensor(list(ex.scores), dtype=torch.float32)
            return {
                "query": self.encoder.tokenize_queries([ex.query for ex in examples]),
                "passage_embeddings": emb[rows] * mask.unsqueeze(-1),
                "teacher": teacher,
                "mask": mask,
            }
        titles, texts, teacher, mask = [], [], [], []
        for ex in examples:
            for pid in ex.pids:
                row = self.corpus.index_of[pid]
                titles.append(self.corpus.titles[row])
                texts.append(self.corpus.texts[row])
            pad = width - len(ex.pids)
            titles += [""] * pad
            texts += [""] * pad
            teacher.append(list(ex.scores) + [0.0] * pad)
            mask.append([True] * len(ex.pids) + [False] * pad)
        return {
            "query": self.encoder.tokenize_queries([ex.query for ex in examples]),
            "passage": self.encoder.tokenize_passages(titles, texts),
            "teacher": torch.tensor(teacher, dtype=torch.float32),
            "mask": torch.tensor(mask, dtype=torch.bool),
        }


def list_scores(encoder, batch: dict[str, Any], *, cross: bool = False):
    """(B, n) student scores S_i = similarity(q, p_i) of each question with the passages of its own list;
    `cross`: (B, B, n), question b with every list c of the batch (c = b: its own)."""
    import torch

    q = encoder.encode_query(batch["query"])
    if "passage_embeddings" in batch:  # a frozen passage tower's precomputed embeddings
        p = batch["passage_embeddings"].to(q.device)
    else:
        p = encoder.encode_passage(batch["passage"])
        p = p.view(q.shape[0], -1, p.shape[-1])
    # In float32 even under mixed precision: scaled scores (x20) lose too many digits in bf16.
    with torch.autocast(device_type=q.device.type, enabled=False):
        pattern = "bd,cnd->bcn" if cross else "bd,bnd->bn"
        return torch.einsum(pattern, q.float(), p.float()) * encoder.settings.scale  # = similarity, per row


def distillation_loss(name: str, temperature: float = 1.0, margin: float = 1.0):
    """The FiD-KD objectives: "kl" (the paper's best), "mse", "margin"; each takes (S, T, mask)."""
    from distillir.losses import KLDivergenceLoss, MaxMarginDistillLoss, MSEDistillLoss

    if name == "kl":
        return KLDivergenceLoss(temperature=temperature)
    if name == "mse":
        return MSEDistillLoss()
    if name == "margin":
        return MaxMarginDistillLoss(margin=margin)
    raise ConfigError(f"unknown distillation loss {name!r}; choose kl, mse or margin")


class ListDistillLoss:
    """Trainer `loss_fn`: loss(S, T, mask) over each question's own list, plus, given `in_batch` (an
    `InBatchListLoss`), the other lists of the batch as negatives."""

    def __init__(self, loss, in_batch=None):
        self.loss = loss
        self.in_batch = in_batch

    def __call__(self, model, batch):
        import torch

        if self.in_batch is None:
            return self.loss(list_scores(model, batch), batch["teacher"], batch["mask"])
        cross = list_scores(model, batch, cross=True)
        own = torch.diagonal(cross, dim1=0, dim2=1).transpose(0, 1)
        return self.loss(own, batch["teacher"], batch["mask"]) + self.in_batch(cross, batch["mask"])


def _ranks(values):
    import torch

    return torch.argsort(torch.argsort(values)).float()


def teacher_agreement(encoder, examples: Sequence[ListExample], corpus, *, temperature: float = 1.0,
                      batch_size: int = 16, passage_embeddings=None) -> dict[str, float]:
    """How closely the student's scores follow the teacher's over each list (no gradient, eval mode):

    kl: mean KL(softmax(T / tau) || softmax(S / tau)) (lower is better); spearman: mean rank correlation of S
    and T (lists of 2+ passages); top1: fraction of lists where the student's best passage is the teacher's.
    """
    import torch

    if not examples:
        return {"lists": 0, "kl": float("nan"), "spearman": float("nan"), "top1": float("nan")}
    collate = ListCollator(encoder, corpus, passage_embeddings)
    was_training = encoder.training
    encoder.eval()
    device = encoder.inference_device()
    encoder.to(device)
    kl_sum = rho_sum = top1 = 0.0
    rho_count = 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                chunk = examples[start:start + batch_size]
                batch = collate(chunk)
                student = list_scores(encoder, batch).float().cpu()
                for i, ex in enumerate(chunk):
                    n = len(ex.pids)
                    s, t = student[i, :n], torch.tensor(ex.scores, dtype=torch.float32)
                    log_p_t = torch.log_softmax(t / temperature, -1)
                    log_p_s = torch.log_softmax(s / temperature, -1)
                    kl_sum += float((log_p_t.exp() * (log_p_t - log_p_s)).sum())
                    top1 += float(int(s.argmax()) == int(t.argmax()))
                    if n > 1:
                        rs, rt = _ranks(s), _ranks(t)
                        rs, rt = rs - rs.mean(), rt - rt.mean()
                        denom = float(rs.norm() * rt.norm())
                        if denom > 0:
                            rho_sum += float((rs * rt).sum()) / denom
                            rho_count += 1
    finally:
        encoder.train(was_training)
    n = len(examples)
    return {"lists": n, "kl": kl_sum / n, "spearman": rho_sum / rho_count if rho_count else float("nan"),
            "top1": top1 / n}


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


def _torch_device(cpu: bool = False) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and not cpu else "cpu"


def inference_autocast(dtype: str, device: str):
    """bf16 autocast for reader inference on a GPU; nothing otherwise."""
    import torch

    if dtype == "bfloat16" and device != "cpu":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_reader(cfg: FiDKDReader, n_passages: int, seed: int, warm_start: str | Path | None = None):
    """A FiD reader from the config (seeded, so its new weights are the same in every run), or the saved
    reader at `warm_start`."""
    from distillir.models import resolve_model
    from distillir.readers.fid import FiDReader

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


def build_student(cfg: FiDKDRetriever, path: str | Path | None = None):
    """The bi-encoder to distil into: `cfg.model` with the configured settings, or a saved student at `path`."""
    from distillir.retrievers.dense.encoder import BiEncoder

    if path is not None:
        encoder = BiEncoder.from_pretrained(path)
        if not cfg.train_passages:
            encoder.freeze_passage_tower()
        return encoder
    encoder = BiEncoder.from_pretrained(cfg.model, shared=cfg.shared, normalize=cfg.normalize, scale=cfg.scale,
                                        query_max_length=cfg.query_max_length,
                                        passage_max_length=cfg.passage_max_length)
    if not cfg.train_passages:
        encoder.freeze_passage_tower()
    from distillir.models import local_model_dir
    from distillir.retrievers.dense.encoder import SETTINGS_FILE

    # The default scale, unless the model is a distillir encoder that already records its own.
    if cfg.scale is None and not (local_model_dir(cfg.model) / SETTINGS_FILE).is_file():
        scale = 20.0 if encoder.settings.normalize else 1.0 / math.sqrt(encoder.dim)
        encoder.settings = dataclasses.replace(encoder.settings, scale=scale)
    return encoder


def score_teacher(reader, examples: Sequence[dict], aggregation: str = "fid", *, layers=None, n_passages=None,
                  batch_size: int = 8, dtype: str = "float32"):
    """Teacher scores (`TeacherScores`) for reader examples with a trained reader, under bf16 autocast on a GPU
    when `dtype` says so (the recipe's teacher stage; also used by the aggregation ablation)."""
    from distillir.teachers.scores import score_with_reader

    device = str(reader.device)
    with inference_autocast(dtype, device):
        return score_with_reader(reader, examples, aggregation, batch_size=batch_size, n_passages=n_passages,
                                 layers=layers)


def evaluate_retrieval(run, dataset) -> dict[str, Any]:
    """Answer recall (Top-k), and gold MRR@10 / recall from the eval split's qrels, for a run."""
    from distillir.evaluation import evaluate_run

    return evaluate_run(run, qrels=dataset.qrels, queries=dataset.queries, corpus=dataset.corpus)


def collapse_check(run, label: str) -> dict[str, Any]:
    """top1_concentration of a run, with a warning when one passage comes first for most queries."""
    from distillir.evaluation.diagnostics import top1_concentration

    found = top1_concentration(run)
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
    from distillir.data.types import Queries

    keep = [i for i, a in enumerate(queries.answers) if a]
    return Queries([queries.ids[i] for i in keep], [queries.texts[i] for i in keep],
                   [list(queries.answers[i]) for i in keep], source=queries.source)


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- recipe


StageHook = Callable[[int, str, dict], None]


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
        from distillir.data.datasets import load_dataset
        from distillir.training.trainer import process_state

        if process_state().num_processes > 1:
            raise ConfigError("fid-kd runs in a single process (one GPU or the CPU); launch it without torchrun")
        out = Path(config.output_dir)
        previous = sorted(p.name for p in out.glob("round-*")) if out.is_dir() else []
        if previous and not config.resume:
            raise ConfigError(f"{out} already holds a run ({', '.join(previous)}); continue it with resume=true "
                              "(distillir train --resume), or choose another output_dir")
        out = self.prepare_output_dir(config)
        self._models = {}
        self.callbacks = list(callbacks)

        train = load_dataset(config.dataset, config.train_split, max_queries=config.max_train_queries,
                             seed=config.seed)
        self.corpus = train.corpus
        self.train_queries = qa_queries(train.queries)  # no qrels, no gold passages past this line
        del train
        if not len(self.train_queries):
            raise ConfigError(f"{config.dataset}/{config.train_split}: no question has an answer to learn from")
        self.eval_ds = None
        if config.eval is not None:
            self.eval_ds = load_dataset(config.eval.dataset or config.dataset, config.eval.split,
                                        max_queries=config.eval.max_queries, seed=config.seed)
            if self.eval_ds.corpus.fingerprint() == self.corpus.fingerprint():
                self.eval_ds.corpus = self.corpus  # one corpus object: one BM25 index, one dense index
        logger.info("fid-kd: %d training questions (%s/%s), %s eval questions, start %s, %d round(s), n=%d",
                    len(self.train_queries), config.dataset, config.train_split,
                    len(self.eval_ds.queries) if self.eval_ds else 0, config.start, config.rounds, config.n_passages)

        rounds: list[dict[str, Any]] = []
        stopped = None
        for k in range(1, config.rounds + 1):
            rounds.append(self.run_round(config, out, k))
            diagnostics = (rounds[-1].get("index") or {}).get("diagnostics") or {}
            if config.on_collapse == "stop" and diagnostics.get("collapsed") and k < config.rounds:
                stopped = {"after_round": k, "reason": "collapsed", "diagnostics": diagnostics}
                logger.warning("round %d collapsed: stopping before round %d (on_collapse: stop)", k, k + 1)
                break
            self.write_results(out, self._results(config, out, rounds, partial=k < config.rounds))
        self._models = {}
        results = self._results(config, out, rounds, partial=False)
        results["stopped"] = stopped
        self.write_results(out, results)
        return results

    def _results(self, config: FiDKDConfig, out: Path, rounds: list[dict], partial: bool) -> dict[str, Any]:
        last = out / f"round-{len(rounds)}"
        first = rounds[0] if rounds else {}
        return {
            "recipe": self.name,
            "output_dir": str(out),
            "complete": not partial,
            "train_questions": len(self.train_queries),
            "eval_questions": len(self.eval_ds.queries) if self.eval_ds is not None else 0,
            "start": config.start,
            "n_passages": config.n_passages,
            "loss": config.retriever.loss,
            "aggregation": None if config.teacher_scores else config.teacher.aggregation,
            "teacher_scores": config.teacher_scores,
            "final_retriever": str(last / "retriever" / FINAL_DIR),
            "final_reader": None if config.teacher_scores else str(last / "reader" / FINAL_DIR),
            "start_metrics": (first.get("retrieve") or {}).get("metrics"),
            "metrics": (rounds[-1].get("index") or {}).get("metrics") if rounds else None,
            "rounds": rounds,
        }

    # ----------------------------------------------------------------------------------- stages

    def run_round(self, config: FiDKDConfig, out: Path, k: int) -> dict[str, Any]:
        rd = out / f"round-{k}"
        record: dict[str, Any] = {"round": k}
        record["retrieve"] = self._stage(config, rd, k, "retrieve", lambda: self._retrieve(config, out, rd, k))
        if config.teacher_scores is None:
            record["reader"] = self._stage(config, rd, k, "reader", lambda: self._train_reader(config, out, rd, k))
            if config.eval is not None and config.eval.reader:
                record["reader_eval"] = self._stage(config, rd, k, "reader_eval",
                                                    lambda: self._evaluate_reader(config, rd))
            record["teacher"] = self._stage(config, rd, k, "teacher", lambda: self._score(config, rd))
            self._models.pop("reader", None)
            _free_accelerator_memory()
        record["retriever"] = self._stage(config, rd, k, "retriever",
                                          lambda: self._train_retriever(config, out, rd, k))
        record["index"] = self._stage(config, rd, k, "index", lambda: self._index(config, rd))
        self._models.pop("student", None)
        _free_accelerator_memory()
        record["wall_s"] = {name: record[name]["wall_s"] for name in STAGES if name in record}
        record["wall_s"]["round"] = round(sum(record["wall_s"].values()), 3)
        write_json(rd / METRICS_FILE, record)
        return record

    def _stage(self, config: FiDKDConfig, rd: Path, k: int, name: str, fn: Callable[[], dict]) -> dict[str, Any]:
        """Run a stage unless its marker says it finished; then write the marker (last, atomically)."""
        marker = rd / STAGES_DIR / f"{name}.json"
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8"))
            logger.info("round %d: %s already done (%.1f s): skipping", k, name, info.get("wall_s", 0.0))
            info["skipped"] = True
        else:
            logger.info("round %d: %s", k, name)
            start = time.perf_counter()
            info = fn()
            info["wall_s"] = round(time.perf_counter() - start, 3)
            write_json(marker, info)
            info["skipped"] = False
        if self.on_stage is not None:
            self.on_stage(k, name, info)
        return info

    def _retrieve(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        """The current retriever's top-n for the training questions and top-k for the eval questions."""
        from distillir.data.run import Run
        from distillir.retrievers.bm25 import bm25_cached
        from distillir.retrievers.dense.retriever import DenseRetriever

        d = rd / "retrieve"
        n = config.n_passages
        needs_train = config.teacher_scores is None
        # Round 1's eval retrieval: the start retriever's metrics, and the eval questions' passages for the reader.
        needs_eval = self.eval_ds is not None and (
            k > 1 or config.eval.start_retriever or (config.teacher_scores is None and config.eval.reader))
        built: dict[str, Any] = {}

        def start_retriever(corpus):
            """BM25 or the `start` dense model over `corpus` (built once per corpus)."""
            key = corpus.fingerprint()
            if key not in built:
                built[key] = bm25_cached(corpus) if config.start == "bm25" else DenseRetriever.build(
                    corpus, config.start, batch_size=config.encode.batch_size, dtype=config.encode.dtype, cache=True)
            return built[key]

        info: dict[str, Any] = {"retriever": config.start if k == 1 else f"round-{k - 1} retriever"}
        if needs_train:
            if k == 1:
                retriever = start_retriever(self.corpus)
            else:
                retriever = DenseRetriever.load(out / f"round-{k - 1}" / "index", corpus=self.corpus)
            train_run = retriever.search(self.train_queries, top_k=n)
            train_run.write_trec(d / "train.trec", tag=f"round-{k}")
            # A question with no hit (BM25: no known term) has nothing to read or to distil.
            read = Run({q: hits for q, hits in train_run.items() if hits}, name=train_run.name)
            read.write_jsonl(d / "train.jsonl", self.train_queries, self.corpus)
            info["train_questions"] = len(read)
            info["train_questions_without_passages"] = len(train_run) - len(read)
        if needs_eval:
            if k == 1:
                eval_run = start_retriever(self.eval_ds.corpus).search(self.eval_ds.queries, top_k=config.eval.top_k)
            else:  # the previous round evaluated this very retriever on these questions
                eval_run = Run.read_trec(out / f"round-{k - 1}" / "eval" / "retriever.trec")
            eval_run.write_trec(d / "eval.trec", tag=f"round-{k}")
            eval_run.top(n).write_jsonl(d / "eval.jsonl", self.eval_ds.queries, self.eval_ds.corpus)
            info["metrics"] = evaluate_retrieval(eval_run, self.eval_ds)
        return info

    def _reader(self, config: FiDKDConfig, path: Path):
        """The reader saved at `path`, kept in memory between the stages of a round."""
        cached = self._models.get("reader")
        if cached is not None and cached[0] == path:
            return cached[1]
        reader = build_reader(config.reader, config.n_passages, config.seed, warm_start=path)
        reader.to(_torch_device(config.reader.trainer.cpu))
        self._models["reader"] = (path, reader)
        return reader

    def _train_reader(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        from distillir.readers.fid import load_fid_examples
        from distillir.training.trainer import Trainer, TrainingArguments

        d = rd / "reader"
        examples = load_fid_examples(rd / "retrieve" / "train.jsonl")
        warm = None
        if k > 1 and config.reader.warm_start_next_round:
            warm = out / f"round-{k - 1}" / "reader" / FINAL_DIR
        reader = build_reader(config.reader, config.n_passages, config.seed + k - 1, warm_start=warm)
        collate = reader.collator(config.n_passages, answer_choice=config.reader.answer_choice,
                                  seed=config.seed + k - 1, labels=True)
        args = TrainingArguments.from_config(config.reader.trainer, output_dir=d, seed=config.seed,
                                             resume=config.resume)
        trainer = Trainer(reader, args, examples, collate, loss_fn=reader_loss,
                          callbacks=[CollatorRNGCallback(collate), *self.callbacks])
        summary = trainer.train()
        reader.save_pretrained(d / FINAL_DIR)
        self._models["reader"] = (d / FINAL_DIR, reader)
        return {"train": summary, "examples": len(examples), "warm_start": str(warm) if warm else None,
                "final": str(d / FINAL_DIR)}

    def _evaluate_reader(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        from distillir.evaluation.qa import evaluate_answers
        from distillir.readers.fid import load_fid_examples

        reader = self._reader(config, rd / "reader" / FINAL_DIR)
        examples = load_fid_examples(rd / "retrieve" / "eval.jsonl")  # in the eval questions' order
        if config.eval.reader_max_queries is not None:
            examples = examples[: config.eval.reader_max_queries]
        queries = self.eval_ds.queries.subset([str(ex["id"]) for ex in examples])
        examples = [ex for ex in examples if ex["ctxs"]]  # nothing retrieved: no answer (scored 0)
        with inference_autocast(config.reader.inference_dtype, str(reader.device)):
            predictions = reader.predict(examples, batch_size=config.reader.batch_size, n_passages=config.n_passages,
                                         max_new_tokens=config.reader.answer_max_length,
                                         num_beams=config.reader.num_beams)
        write_json(rd / "reader" / PREDICTIONS_FILE, predictions)
        return {"metrics": evaluate_answers(predictions, queries)}

    def _score(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        from distillir.readers.fid import load_fid_examples
        from distillir.teachers.quality import answer_hits

        reader = self._reader(config, rd / "reader" / FINAL_DIR)
        examples = load_fid_examples(rd / "retrieve" / "train.jsonl")
        scores = score_teacher(reader, examples, config.teacher.aggregation, layers=config.teacher.layers,
                               n_passages=config.n_passages, batch_size=config.reader.batch_size,
                               dtype=config.reader.inference_dtype)
        scores.write(rd / "teacher" / SCORES_FILE)
        hits = answer_hits(scores, examples)
        if hits["answer_lists"] and hits["teacher_hit@1"] <= hits["retriever_hit@1"]:
            logger.warning("%s: the teacher's top passage holds an answer in %.1f%% of lists, the retriever's "
                           "own first passage in %.1f%%: this teacher knows less than the retriever it teaches "
                           "(train the reader longer, or use another aggregation)", rd.name,
                           100 * hits["teacher_hit@1"], 100 * hits["retriever_hit@1"])
        return {"teacher": scores.teacher, "questions": len(scores), "file": str(rd / "teacher" / SCORES_FILE),
                "answer_hits": hits}

    def _train_retriever(self, config: FiDKDConfig, out: Path, rd: Path, k: int) -> dict[str, Any]:
        from distillir.teachers.scores import read_teacher_scores
        from distillir.training.trainer import Trainer, TrainingArguments

        cfg = config.retriever
        d = rd / "retriever"
        source = Path(config.teacher_scores) if config.teacher_scores else rd / "teacher" / SCORES_FILE
        examples = list_examples(read_teacher_scores(source, corpus=self.corpus), self.train_queries, self.corpus,
                                 source, normalize=config.teacher.normalize, scale=config.teacher.scale)
        if not examples:
            raise InputError(source, "no question with passages to distil from")
        start_from = None
        if k > 1 and cfg.continue_training:
            start_from = out / f"round-{k - 1}" / "retriever" / FINAL_DIR
        student = build_student(cfg, start_from)
        passage_embeddings = None
        if not cfg.train_passages:  # embedded once (cache keyed by the frozen weights), read at every step
            from distillir.retrievers.dense.encoder import encode_corpus_cached

            passage_embeddings = encode_corpus_cached(student, self.corpus, config.encode.batch_size,
                                                      dtype=config.encode.dtype)
        sample = examples
        if cfg.agreement_sample and len(examples) > cfg.agreement_sample:
            rows = sorted(random.Random(config.seed).sample(range(len(examples)), cfg.agreement_sample))
            sample = [examples[i] for i in rows]
        before_file = d / AGREEMENT_BEFORE_FILE
        before = None
        if cfg.agreement_sample:
            if config.resume and before_file.is_file():
                before = json.loads(before_file.read_text(encoding="utf-8"))
            else:
                before = teacher_agreement(student, sample, self.corpus, temperature=cfg.temperature,
                                           passage_embeddings=passage_embeddings)
                write_json(before_file, before)

        from distillir.losses import InBatchListLoss

        loss = distillation_loss(cfg.loss, cfg.temperature, cfg.margin)
        in_batch = InBatchListLoss(cfg.temperature) if cfg.in_batch_negatives else None
        args = TrainingArguments.from_config(cfg.trainer, output_dir=d, seed=config.seed, resume=config.resume)
        trainer = Trainer(student, args, examples, ListCollator(student, self.corpus, passage_embeddings),
                          loss_fn=ListDistillLoss(loss, in_batch), callbacks=self.callbacks)
        summary = trainer.train()
        student.save_pretrained(d / FINAL_DIR)
        self._models["student"] = (d / FINAL_DIR, student)
        after = None
        if before:
            after = teacher_agreement(student, sample, self.corpus, temperature=cfg.temperature,
                                      passage_embeddings=passage_embeddings)
        return {"train": summary, "lists": len(examples), "teacher_scores": str(source), "loss": cfg.loss,
                "start_from": str(start_from) if start_from else cfg.model, "scale": student.settings.scale,
                "agreement_before": before, "agreement_after": after, "final": str(d / FINAL_DIR)}

    def _index(self, config: FiDKDConfig, rd: Path) -> dict[str, Any]:
        """Re-embed the corpus with the trained retriever, save the index, evaluate it."""
        from distillir.retrievers.dense.retriever import DenseRetriever

        path = rd / "retriever" / FINAL_DIR
        cached = self._models.get("student")
        student = cached[1] if cached is not None and cached[0] == path else build_student(config.retriever, path)
        enc = config.encode
        # A frozen passage tower has the start model's embeddings: read them from the cache, not re-embed.
        reuse = not config.retriever.train_passages
        start = time.perf_counter()
        dense = DenseRetriever.build(self.corpus, student, batch_size=enc.batch_size, dtype=enc.dtype, cache=reuse)
        embed_s = time.perf_counter() - start
        dense.save(rd / "index")
        info: dict[str, Any] = {"index": str(rd / "index"), "passages": len(self.corpus),
                                "embed_s": round(embed_s, 3), "dtype": enc.dtype}
        if self.eval_ds is not None:
            eval_dense = dense
            if self.eval_ds.corpus is not self.corpus:
                eval_dense = DenseRetriever.build(self.eval_ds.corpus, student, batch_size=enc.batch_size,
                                                  dtype=enc.dtype, cache=reuse)
            run = eval_dense.search(self.eval_ds.queries, top_k=config.eval.top_k)
            run.write_trec(rd / "eval" / "retriever.trec", tag=rd.name)
            info["metrics"] = evaluate_retrieval(run, self.eval_ds)
            questions = "eval"
        else:  # no eval split: the check needs no labels, so the training questions serve
            run = dense.search(self.train_queries, top_k=1)
            questions = "train"
        info["diagnostics"] = {"questions": questions,
                               **collapse_check(run, f"round {rd.name.split('-')[-1]}'s retriever")}
        return info


__all__ = [
    "FiDKDConfig",
    "FiDKDEncode",
    "FiDKDEval",
    "FiDKDReader",
    "FiDKDRecipe",
    "FiDKDRetriever",
    "FiDKDTeacher",
    "ListCollator",
    "ListDistillLoss",
    "ListExample",
    "build_reader",
    "build_student",
    "collapse_check",
    "distillation_loss",
    "list_examples",
    "list_scores",
    "qa_queries",
    "score_teacher",
    "teacher_agreement",
    "teacher_targets",
]
