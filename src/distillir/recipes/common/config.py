"""Config blocks recipes share: the training split, evaluation sections, the reader, the ranker warm-up.

Each is a dataclass section of a recipe's config (`load_config` checks its keys and types); a recipe with
other defaults subclasses or declares its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distillir.data.datasets import load_dataset
from distillir.data.negatives import positives_from_dataset
from distillir.errors import ConfigError
from distillir.models import DEFAULT_ENCODER
from distillir.readers.prompts import DEFAULT_READER_LM, PromptTemplate
from distillir.training.arguments import TrainConfig, check_max_grad_norm


@dataclass
class TrainSplit:
    """The labelled split to train on."""

    dataset: str = "scifact"  # a known name or a dataset directory (BEIR or squad-open layout)
    split: str = "train"
    max_train_queries: int | None = None  # a seeded sample of the split's queries

    def load(self, seed: int):
        """The split as a `Dataset` (its queries a seeded sample when `max_train_queries` is set)."""
        return load_dataset(self.dataset, self.split, max_queries=self.max_train_queries, seed=seed)

    def labelled(self, seed: int):
        """(the split, each query's known positives, the queries that have one)."""
        dataset = self.load(seed)
        positives = positives_from_dataset(dataset)
        return dataset, positives, dataset.queries.subset([q for q in dataset.queries.ids if q in positives])


@dataclass
class RerankEvalConfig:
    """Re-rank a first stage's top-k on a labelled split and report both runs' metrics."""

    dataset: str
    split: str = "test"
    max_queries: int | None = None  # a seeded sample, for quick looks
    first_stage: str = "bm25"  # "bm25", or a run file (TREC or JSONL) over the split's queries
    depth: int = 100  # first-stage depth evaluated (and re-ranked passages kept ahead of the rest)
    top_k: int = 100  # passages re-ranked per query
    batch_size: int = 64
    # Scoring precision: auto = bf16 autocast where the CPU has it natively (1.8x float32 here, Spearman 0.999 per
    # list, same top-1 on 40 lists of a trained ranker), float32 elsewhere (bf16 is 5-6x slower on AVX2 CPUs).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


def check_head_learning_rate(head_learning_rate: float | None) -> None:
    if head_learning_rate is not None and head_learning_rate <= 0:
        raise ConfigError(f"head_learning_rate must be positive, got {head_learning_rate}")


def check_temperature(temperature: float | None) -> None:
    if temperature is not None and temperature <= 0:
        raise ConfigError(f"temperature must be positive (or null for the default), got {temperature}")


def check_list_size(list_size: int) -> None:
    if list_size < 2:
        raise ConfigError(f"list_size must be at least 2 (a positive and a negative), got {list_size}")


@dataclass
class EvalConfig:
    """Evaluate the trained retriever on a labelled split (dense index over the split's corpus)."""

    dataset: str
    split: str = "test"
    max_queries: int | None = None  # a seeded sample, for quick looks
    top_k: int = 100
    batch_size: int = 64  # encoding batch size
    baseline: bool = False  # also evaluate the model before training, for the side-by-side every paper shows


@dataclass
class QAEvalConfig:
    """Evaluate on a QA split (question + answers, gold passage ids for evaluation only): retriever answer recall
    (Top-k), gold MRR@10 and recall, and a reader's or generator's EM / F1 (FiD-KD, Re2G)."""

    dataset: str | None = None  # None: the training dataset (same corpus: one index serves both)
    split: str = "dev"
    max_queries: int | None = 1000  # a seeded sample; null: every question of the split
    top_k: int = 100  # retrieval depth evaluated (Top-1/5/20/100)
    reader_max_queries: int | None = None  # read only the first N sampled eval questions (generation is slow)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {self.top_k}")


@dataclass
class PipelineEvalConfig(EvalConfig):
    """Evaluate the retriever (dense index over the split's corpus); with `rerank_top_k`, also the re-ranker
    re-ranking the retriever's top-k."""

    rerank_top_k: int = 0  # 0: evaluate the retriever only


@dataclass
class RankerWarmup:
    """Train the re-ranker alone on the undenoised lists before it denoises and teaches (0 steps: skip)."""

    steps: int = 0
    learning_rate: float = 2e-5
    head_learning_rate: float | None = None  # a fresh classifier head's peak rate (None: learning_rate)
    # The ranker trains alone here, so clipping cannot shrink a retriever's steps (as it would in joint
    # training); a fresh head at a high rate is trained clipped, as in the cross-encoder recipe.
    max_grad_norm: float | None = 1.0  # None: no clipping

    def __post_init__(self) -> None:
        if self.steps < 0 or self.learning_rate <= 0:
            raise ConfigError(f"need steps >= 0 and learning_rate > 0, got {self.steps}, {self.learning_rate}")
        check_max_grad_norm(self.max_grad_norm)
        check_head_learning_rate(self.head_learning_rate)


@dataclass
class CausalLMConfig:
    """A causal-LM reader (`reader.kind: causal-lm`): used as it is (no training), it reads each candidate alone
    and scores it (the LM teachers: `teacher.aggregation: pdist | question_likelihood`)."""

    # auto: bfloat16 where it is native (a GPU, or a CPU with avx512_bf16 / AMX), float32 elsewhere (on an
    # AVX2-only CPU bf16 is 5-6x slower). int8: dynamic quantisation of the Linear layers (CPU; its agreement with
    # float32 is measured in bench/lm_teacher.py).
    dtype: Literal["auto", "float32", "bfloat16", "int8"] = "auto"
    prompts: PromptTemplate = field(default_factory=PromptTemplate)
    reduce: Literal["mean", "sum"] = "mean"  # over the target's tokens
    answers: Literal["max", "mean"] = "max"  # pdist over several gold answers
    read_passages: int = 1  # passages joined as the context when answering (reader_eval)
    cache: bool = True  # scores cached by (model, prompt, target) under $DISTILLIR_CACHE: resumable, reusable
    # Re2G's generator: train the last N decoder layers (and the final norm) end to end; 0 keeps the LM frozen, so
    # only the re-ranker learns from its likelihood (the CPU choice: a step is one forward, no LM backward).
    train_layers: int = 0

    def __post_init__(self) -> None:
        if self.read_passages < 1:
            raise ConfigError(f"read_passages must be at least 1, got {self.read_passages}")
        if self.train_layers < 0:
            raise ConfigError(f"train_layers must not be negative, got {self.train_layers}")


@dataclass
class ReaderConfig:
    """A seq2seq reader (FiD-KD's reader, Re2G's generator, DGR's identifier generator): how it is built, its
    input lengths, and how it is trained and run."""

    # fid: a seq2seq reader trained on the lists (FiD); causal-lm: a decoder-only LM (hub id, directory or GGUF
    # file; `model` defaults to SmolLM2-135M-Instruct) used as it is, its settings in `lm`.
    kind: Literal["fid", "causal-lm"] = "fid"
    lm: CausalLMConfig = field(default_factory=CausalLMConfig)
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
        if self.kind == "causal-lm" and self.model == DEFAULT_ENCODER:
            self.model = DEFAULT_READER_LM
        if self.batch_size < 1 or self.num_beams < 1:
            raise ConfigError("batch_size and num_beams must be at least 1")
        if self.num_layers is not None and self.num_layers < 1:
            raise ConfigError(f"num_layers must be at least 1 (or null), got {self.num_layers}")


PROBABILITY_LOSSES = ("kl", "emdr2")  # losses where a teacher score of -inf means probability 0


@dataclass
class StudentConfig:
    """The student bi-encoder of list distillation and its loss (FiD-KD's `retriever:` section)."""

    model: str = DEFAULT_ENCODER  # the student's initial weights (hub id or path)
    # emdr2: -log sum_i exp(T_i) softmax(S / tau)_i (Atlas' EMDR²; T must be log-likelihoods: teacher.normalize
    # none, pdist with reduce: sum).
    loss: Literal["kl", "mse", "margin", "emdr2"] = "kl"
    temperature: float = 1.0  # KL: softmax(T / tau) vs softmax(S / tau) (FiD: 1; Atlas: 0.01); emdr2: on S
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
    # The defaults below are the student side measured by bench/distill_student.py (README, "The student side of
    # distillation"): each list alone loses what MiniLM knows; these keep it and add the teacher's.
    # true: the batch's other lists are negatives too (teacher probability 0; losses.InBatchListLoss): +0.067
    # Top-5 alone, the largest single change. false: each question's own list only (the FiD-KD paper).
    in_batch_negatives: bool = True
    # Random corpus passages added to each list at teacher probability 0 (fresh draws every step; KL only): the
    # student also learns that passages unlike any candidate are wrong, which a list of near-misses never shows.
    # null: 16 with loss kl or emdr2 (KL: measured +0.027 Top-5 alone), 0 otherwise (mse and margin have no
    # probability 0).
    random_negatives: int | None = None
    agreement_sample: int = 256  # training lists on which student-teacher agreement is measured (0: skip)
    # Fraction of the lists held out of training, on which the agreement is measured instead (the label-free
    # check of a round, `round_verdict`: does the student follow the teacher on lists it did not train on?).
    # 0: the sample is drawn from the training lists (and the round guard only sees collapse).
    agreement_holdout: float = 0.1
    trainer: TrainConfig = field(
        default_factory=lambda: TrainConfig(learning_rate=3e-5, warmup_ratio=0.05, per_device_batch_size=16)
    )

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.scale is not None and self.scale <= 0:
            raise ConfigError(f"scale must be positive (or null for the default), got {self.scale}")
        if self.agreement_sample < 0:
            raise ConfigError(f"agreement_sample must not be negative, got {self.agreement_sample}")
        if not 0.0 <= self.agreement_holdout < 1.0:
            raise ConfigError(f"agreement_holdout must be in [0, 1), got {self.agreement_holdout}")
        if self.random_negatives is None:
            self.random_negatives = 16 if self.loss in PROBABILITY_LOSSES else 0
        if self.random_negatives < 0 or (self.random_negatives and self.loss not in PROBABILITY_LOSSES):
            raise ConfigError(f"random_negatives must be >= 0, and needs loss: kl or emdr2 (teacher probability 0), "
                              f"got {self.random_negatives} with loss {self.loss!r}")
        if not self.train_passages and self.shared:
            self.shared = False  # a frozen passage tower beside a trained query tower: two towers


@dataclass
class EncodeConfig:
    """Corpus (re-)embedding and query encoding for dense retrieval."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16: fast on GPUs and AMX CPUs
    batch_size: int = 64


@dataclass
class FiDKDTeacher:
    """fid-kd's `teacher` section: how each list is scored and how the scores become the student's targets."""

    # A FiD reader's attention or likelihood aggregations; with `reader.kind: causal-lm`: pdist (log p(answer |
    # passage, question)), question_likelihood (log p(question | passage): no answers needed), attention (the
    # answer's attention over each passage of the concatenated context: `teachers.lm_attention`) or loop (the
    # answer's loss rise without each passage of that context: `teachers.lm_loop`).
    aggregation: Literal["fid", "post_softmax", "all_tokens", "max", "adist", "pdist", "loop",
                         "question_likelihood", "attention"] = "fid"
    layers: list[int] | None = None  # decoder layers for attention aggregations (negative from the end); null: all
    # How the raw scores become the distillation target T, per question, before the loss (the score file keeps
    # the raw scores). none: as they are (the paper). zscore: (T - mean) / std over the question's list, which
    # makes the target's sharpness independent of the reader's attention scale (a barely trained or BERT-style
    # reader's mean attention logits differ by ~0.01 across passages: softmax(T) would be uniform).
    # zscore is the default: raw 0/1 answer targets collapse the student (bench/distill_student.py).
    normalize: Literal["none", "zscore"] = "zscore"
    # Multiplies the (normalised) scores: an inverse temperature on the teacher side only. 5: z-scores at
    # temperature 1 are far softer than the student's cosine x 20 (measured +0.072 Top-5 alone; the paper: 1).
    scale: float = 5.0
    # Leave out lists whose teacher scores are all equal (no signal; an answer teacher's list without an answer).
    skip_uniform: bool = True
    # Keep this fraction of the lists, those where the teacher's first passage leads its second by the most
    # (z-scored); null: all. A teacher is right more often where it is sure, but those lists are the easy ones
    # (measured on SciFact: no gain; teachers.scores.most_confident).
    keep_confident: float | None = None
    ranker: str | None = None  # teacher_scores: ranker -- the cross-encoder (hub id or path) scoring each list
    ranker_max_length: int = 256
    ranker_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 where the CPU has it natively

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ConfigError(f"teacher.scale must be positive, got {self.scale}")
        if self.keep_confident is not None and not 0 < self.keep_confident <= 1:
            raise ConfigError(f"teacher.keep_confident must be in (0, 1] (or null), got {self.keep_confident}")


__all__ = [
    "CausalLMConfig",
    "EncodeConfig",
    "EvalConfig",
    "FiDKDTeacher",
    "PipelineEvalConfig",
    "RankerWarmup",
    "ReaderConfig",
    "RerankEvalConfig",
    "StudentConfig",
    "TrainSplit",
    "check_head_learning_rate",
    "check_list_size",
]
