"""Train a cross-encoder re-ranker, and the candidate-list machinery the joint recipes share.

The re-ranker every distillation recipe here leans on (the teacher of RocketQAv2 and AR2, the denoiser
of RocketQA) reads [query; title: passage] and gives one logit. It is trained as RocketQAv2 trains its
re-ranker (Ren et al., 2021, L_sup) and AR2 its ranker (Zhang et al., 2022): listwise softmax
cross-entropy over a list of one positive followed by mined hard negatives,

    L = - log softmax(s_ce(q, [p+, n_1 .. n_k]))[p+]

Steps: load the training split (positives from its qrels, else its gold passage ids; `positives: answer`: the
first stage's best-ranked passage holding an answer string, no labels read) -> BM25 (or a given
run) over its corpus -> mine negatives from the top-N, excluding positives and answer-containing passages
-> write `train_lists.jsonl` -> train -> save `final/` (`CrossEncoder.from_pretrained` and
`distillir rerank --model` load it) -> optionally re-rank the eval split's first-stage top-k and report the
metrics beside the first stage's.

With `teacher.scores` the ranker learns a teacher's scores instead (a fast teacher from a slow one: e.g. a
causal LM's question likelihood written by fid-kd's teacher stage): each line's list, its scores normalised
per list, and a distillation loss between the ranker's and the teacher's scores over the list (KL by default);
nothing is mined and no positive is read.

The ranker parts live in `distillir.recipes.common.ranking`, shared with every recipe that trains a ranker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from distillir.errors import ConfigError, InputError
from distillir.models import DEFAULT_ENCODER
from distillir.rankers.cross_encoder import CrossEncoder
from distillir.recipes.common.config import RerankEvalConfig, TrainSplit, check_head_learning_rate, check_list_size
from distillir.recipes.common.distill import distillation_loss, list_examples
from distillir.recipes.common.lists import LISTS_FILE, mined_training_lists
from distillir.recipes.common.ranking import evaluate_rerank, first_stage_run, train_ranker
from distillir.recipes.common.run import FINAL_DIR, METRICS_FILE, Recipe, RunConfig
from distillir.teachers.scores import read_teacher_scores
from distillir.training.arguments import TrainConfig
from distillir.training.state import process_state
from distillir.utils.io import write_json

# ------------------------------------------------------------------------------------------- config


@dataclass
class RankerNegatives:
    source: str = "bm25"  # "bm25", or a run file (TREC or JSONL) over the training split's queries and corpus
    depth: int = 100  # ranks of the source to mine from
    mined: int = 15  # negatives kept per query in train_lists.jsonl (each step samples list_size - 1 of them)
    sample: bool = False  # False: the best-ranked negatives; True: a seeded random draw within `depth`
    exclude_answers: bool = True  # drop passages containing an answer string (when queries have answers)
    lists: str | None = None  # training lists (JSONL, e.g. from `distillir mine`) used as given: nothing is mined

    def __post_init__(self) -> None:
        if self.depth < 1 or self.mined < 1:
            raise ConfigError(f"depth and mined must be at least 1, got depth={self.depth}, mined={self.mined}")


@dataclass
class RankerTeacher:
    """Soft targets: a teacher-score file (qid, pids, scores per line; `distillir.teachers.scores`)."""

    scores: str | None = None  # the file; None: train on positives and negatives as usual
    loss: Literal["kl", "mse", "margin"] = "kl"  # ranker scores vs the teacher's targets over each list
    temperature: float = 1.0  # kl: both score lists divided by it before the softmax
    normalize: Literal["none", "zscore"] = "zscore"  # per list, before `scale` (an LM's log-likelihoods are close)
    scale: float = 5.0  # targets = scale * normalised scores (fid-kd's SmolLM2 configs: z-scores x 5)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"teacher.temperature must be positive, got {self.temperature}")


@dataclass
class CrossEncoderConfig(RunConfig):
    output_dir: str = "runs/cross-encoder"
    model: str = DEFAULT_ENCODER  # hub id or local path: a plain encoder gets a fresh one-logit head
    max_length: int = 256  # query + passage tokens
    query_max_length: int | None = None  # None: 64, or half of max_length if less
    list_size: int = 8  # one positive and list_size - 1 negatives per query in each step
    head_learning_rate: float | None = None  # the classifier head's peak rate (None: trainer.learning_rate)
    # gold: the split's qrels or gold passage ids (supervised); answer: each question's best-ranked passage of the
    # negatives' source that holds an answer string (distant supervision from QA pairs; no relevance labels).
    positives: Literal["gold", "answer"] = "gold"
    data: TrainSplit = field(default_factory=TrainSplit)
    negatives: RankerNegatives = field(default_factory=RankerNegatives)
    teacher: RankerTeacher = field(default_factory=RankerTeacher)
    trainer: TrainConfig = field(default_factory=lambda: TrainConfig(learning_rate=2e-5, warmup_ratio=0.1))
    eval: RerankEvalConfig | None = None

    def __post_init__(self) -> None:
        check_list_size(self.list_size)
        if self.positives == "answer" and not self.negatives.exclude_answers:
            raise ConfigError("positives: answer needs negatives.exclude_answers: true (an answer-bearing passage "
                              "would be a positive in one list and a negative in another)")
        check_head_learning_rate(self.head_learning_rate)


# ------------------------------------------------------------------------------------------- recipe


class CrossEncoderRecipe(Recipe):
    """Cross-encoder re-ranker: listwise CE over a positive and mined hard negatives (RocketQAv2's L_sup)."""

    name = "cross-encoder"
    Config = CrossEncoderConfig

    def run(self, config: CrossEncoderConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
        dataset = config.data.load(config.seed)
        teacher = config.teacher
        scored = None
        if teacher.scores is not None:  # a bad file fails here, before the run directory exists
            scored = teacher_lists(teacher, dataset)
        out = self.start(config)
        neg = config.negatives
        if scored is None:
            examples = mined_training_lists(
                dataset,
                out / LISTS_FILE,
                lambda queries: first_stage_run(neg.source, dataset.corpus, queries, neg.depth),
                neg,
                seed=config.seed,
                resume=config.resume,
                require_negatives=True,
                positives=config.positives,
            )
        else:
            examples = scored
        ranker = CrossEncoder.from_pretrained(config.model, max_length=config.max_length,
                                              query_max_length=config.query_max_length)
        loss = None if scored is None else distillation_loss(teacher.loss, teacher.temperature)
        summary = train_ranker(ranker, examples, dataset.corpus, config.list_size, config.trainer, out,
                               seed=config.seed, resume=config.resume, callbacks=callbacks,
                               head_learning_rate=config.head_learning_rate, teacher_loss=loss)
        final = out / FINAL_DIR
        metrics = None
        state = process_state()
        if state.is_main_process and config.eval is not None:
            metrics = evaluate_rerank(ranker, config.eval, seed=config.seed)
            write_json(out / METRICS_FILE, metrics)
        state.wait_for_everyone()
        results = {
            "recipe": self.name,
            "output_dir": str(out),
            "final_model": str(final),
            "train_examples": len(examples),
            "positives": config.positives if scored is None else None,
            "teacher": None if scored is None else {"scores": teacher.scores, "loss": teacher.loss,
                                                    "lists": len(scored)},
            "train": summary,
            "metrics": metrics,
        }
        self.write_results(out, results)
        return results


def teacher_lists(teacher: RankerTeacher, dataset):
    """The score file's lists over the training split's queries, with their targets (`ListExample`s)."""
    scores = read_teacher_scores(teacher.scores, corpus=dataset.corpus)
    known = set(dataset.queries.ids)
    scores = scores.subset([q for q in scores if q in known])
    examples = list_examples(scores, dataset.queries, dataset.corpus, teacher.scores, normalize=teacher.normalize,
                             scale=teacher.scale)
    if not examples:
        raise InputError(teacher.scores, f"no line names a query of {dataset.name}/{dataset.split}", field="qid")
    return examples


__all__ = ["CrossEncoderConfig", "CrossEncoderRecipe", "RankerNegatives", "RankerTeacher"]
