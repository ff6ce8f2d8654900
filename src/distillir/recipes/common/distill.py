"""The student side of list distillation, shared by every recipe that distils teacher scores into a
bi-encoder (FiD-KD's reader teacher, answer strings, score files; Re2G's online distillation uses its scores):
teacher targets per list, the list collator, the student's list scores, the loss, and student-teacher agreement.

For a question with candidate list P_q, the student scores S_i = similarity(q, p_i) over its own list and is
trained on loss(S, T): KL (the FiD-KD paper's best), MSE or max-margin, optionally with the batch's other
lists as negatives at teacher probability 0 (`losses.InBatchListLoss`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillir.errors import ConfigError, InputError
from distillir.losses import EMDR2Loss, InBatchListLoss, KLDivergenceLoss, MaxMarginDistillLoss, MSEDistillLoss
from distillir.models import local_model_dir
from distillir.recipes.common.config import EncodeConfig, StudentConfig
from distillir.recipes.common.reading import collapse_check, evaluate_retrieval
from distillir.recipes.common.run import FINAL_DIR, read_json, save_on_main
from distillir.retrievers.dense.encoder import SETTINGS_FILE, BiEncoder
from distillir.retrievers.dense.inference import encode_corpus_cached
from distillir.retrievers.dense.retriever import DenseRetriever
from distillir.training.arguments import TrainingArguments
from distillir.training.trainer import Trainer
from distillir.utils.dist import distributed_world, gather_with_grad
from distillir.utils.io import write_json
from distillir.utils.log import get_logger

logger = get_logger(__name__)

AGREEMENT_BEFORE_FILE = "agreement_before.json"


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
                  scale: float = 1.0, skip_uniform: bool = False) -> list[ListExample]:
    """`ListExample`s from `TeacherScores`, in file order, with targets from `teacher_targets`. The question
    text comes from the score file's `query` field, else from `queries` (by qid); every pid must be in
    `corpus` when given. `skip_uniform`: leave out lists whose teacher scores are all equal (an answer teacher's
    list without an answer): their target is uniform and would only flatten the student (measured: +0.004
    Top-5, bench/distill_student.py `skip_empty`)."""
    examples = []
    for qid, (pids, values) in scores.items():
        if skip_uniform and len(values) > 1 and len(set(values)) == 1:
            continue
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

    def __init__(self, encoder, corpus, passage_embeddings=None, random_negatives: int = 0):
        """`passage_embeddings` (len(corpus), dim), in corpus order: give them (a frozen passage tower) and
        batches carry "passage_embeddings" (B, n, dim) instead of passage tokens. `random_negatives`: that many
        corpus passages outside the list join each list with teacher score -inf (probability 0), drawn with
        Python's `random`, whose state the Trainer checkpoints."""
        self.encoder = encoder
        self.corpus = corpus
        self.passage_embeddings = passage_embeddings
        self.random_negatives = random_negatives

    def with_random_negatives(self, ex: ListExample) -> ListExample:
        own = set(ex.pids)
        extra: list[str] = []
        while len(extra) < self.random_negatives and len(own) + len(extra) < len(self.corpus):
            pid = self.corpus.ids[random.randrange(len(self.corpus))]
            if pid not in own and pid not in extra:
                extra.append(pid)
        return ListExample(ex.qid, ex.query, [*ex.pids, *extra], [*ex.scores, *[float("-inf")] * len(extra)])

    def __call__(self, examples: Sequence[ListExample]) -> dict[str, Any]:
        if self.random_negatives:
            examples = [self.with_random_negatives(ex) for ex in examples]
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


def student_list_scores(encoder, batch: dict[str, Any], *, cross: bool = False):
    """(B, n) student scores S_i = similarity(q, p_i) of each question with the passages of its own list;
    `cross`: (B, B, n), question b with every list c of the batch (c = b: its own)."""
    q, p = _list_embeddings(encoder, batch)
    # In float32 even under mixed precision: scaled scores (x20) lose too many digits in bf16.
    with torch.autocast(device_type=q.device.type, enabled=False):
        pattern = "bd,cnd->bcn" if cross else "bd,bnd->bn"
        return torch.einsum(pattern, q.float(), p.float()) * encoder.settings.scale  # = similarity, per row


def _list_embeddings(encoder, batch: dict[str, Any]):
    """(B, d) query and (B, n, d) passage embeddings of a list batch."""
    q = encoder.encode_query(batch["query"])
    if "passage_embeddings" in batch:  # a frozen passage tower's precomputed embeddings
        return q, batch["passage_embeddings"].to(q.device)
    p = encoder.encode_passage(batch["passage"])
    return q, p.view(q.shape[0], -1, p.shape[-1])


def distillation_loss(name: str, temperature: float = 1.0, margin: float = 1.0):
    """The FiD-KD objectives: "kl" (the paper's best), "mse", "margin", and Atlas' "emdr2"; each takes
    (S, T, mask)."""
    if name == "kl":
        return KLDivergenceLoss(temperature=temperature)
    if name == "emdr2":
        return EMDR2Loss(temperature=temperature)
    if name == "mse":
        return MSEDistillLoss()
    if name == "margin":
        return MaxMarginDistillLoss(margin=margin)
    raise ConfigError(f"unknown distillation loss {name!r}; choose kl, mse, margin or emdr2")


class ListDistillLoss:
    """Trainer `loss_fn`: loss(S, T, mask) over each question's own list, plus, given `in_batch` (an
    `InBatchListLoss`), the other lists of the batch as negatives."""

    def __init__(self, loss, in_batch=None, cross_device: bool = False):
        self.loss = loss
        self.in_batch = in_batch
        self.cross_device = cross_device  # the other processes' lists are negatives too (under torchrun)

    def __call__(self, model, batch):
        if self.in_batch is None:
            return self.loss(student_list_scores(model, batch), batch["teacher"], batch["mask"])
        if self.cross_device and distributed_world() > 1:
            cross, mask, offset = cross_device_list_scores(model, batch)
        else:
            cross, mask, offset = student_list_scores(model, batch, cross=True), batch["mask"], 0
        n = batch["mask"].shape[1]
        rows = torch.arange(cross.shape[0], device=cross.device)
        own = cross[rows, rows + offset][:, :n]
        known = torch.isfinite(batch["teacher"])  # random negatives (teacher -inf) count as the batch's
        known = torch.nn.functional.pad(known, (0, cross.shape[2] - n))
        return self.loss(own, batch["teacher"], batch["mask"]) + self.in_batch(cross, mask, known, offset)


def cross_device_list_scores(encoder, batch: dict[str, Any]):
    """(B, C, n_max) scores of this process's questions with every process's lists (gathered with gradients,
    padded to the longest list), their (C, n_max) mask, and the row of this process's first list."""
    import torch.distributed as dist

    q, p = _list_embeddings(encoder, batch)
    world, (b, n, d), dev = dist.get_world_size(), p.shape, q.device  # NCCL gathers device tensors only
    shapes = [torch.zeros(2, dtype=torch.long, device=dev) for _ in range(world)]
    dist.all_gather(shapes, torch.tensor([b, n], device=dev))  # lists and list lengths may differ by process
    width = int(max(int(s[1]) for s in shapes))
    p = torch.nn.functional.pad(p, (0, 0, 0, width - n)).reshape(b * width, d)
    gathered, first = gather_with_grad(p)
    most = int(max(int(s[0]) for s in shapes))
    mask = torch.nn.functional.pad(batch["mask"].to(device=dev, dtype=torch.uint8), (0, width - n, 0, most - b))
    masks = [torch.zeros_like(mask) for _ in range(world)]
    dist.all_gather(masks, mask)
    masks = [m[: int(s[0])] for m, s in zip(masks, shapes)]
    with torch.autocast(device_type=q.device.type, enabled=False):
        cross = torch.einsum("bd,cnd->bcn", q.float(), gathered.view(-1, width, d).float()) * encoder.settings.scale
    return cross, torch.cat(masks).bool().to(q.device), first // width


def _ranks(values):
    return torch.argsort(torch.argsort(values)).float()


def teacher_agreement(encoder, examples: Sequence[ListExample], corpus, *, temperature: float = 1.0,
                      batch_size: int = 16, passage_embeddings=None) -> dict[str, float]:
    """How closely the student's scores follow the teacher's over each list (no gradient, eval mode):

    kl: mean KL(softmax(T / tau) || softmax(S / tau)) (lower is better); spearman: mean rank correlation of S
    and T (lists of 2+ passages); top1: fraction of lists where the student's best passage is the teacher's.
    """
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
                student = student_list_scores(encoder, batch).float().cpu()
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


def build_student(cfg: StudentConfig, path: str | Path | None = None):
    """The bi-encoder to distil into: `cfg.model` (a retriever section: model, shared, normalize, scale, lengths,
    train_passages) with the configured settings, or a saved student at `path`."""
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

    # The default scale, unless the model is a distillir encoder that already records its own.
    if cfg.scale is None and not (local_model_dir(cfg.model) / SETTINGS_FILE).is_file():
        scale = 20.0 if encoder.settings.normalize else 1.0 / math.sqrt(encoder.dim)
        encoder.settings = dataclasses.replace(encoder.settings, scale=scale)
    return encoder


def train_student(cfg: StudentConfig, examples: Sequence[ListExample], corpus, output_dir: Path, *,
                  encode: EncodeConfig, seed: int, resume: bool, callbacks: Sequence[Any] = (),
                  start_from: str | Path | None = None):
    """(student, record): one distillation phase in `output_dir` (checkpoints/, log.jsonl, final/): the student
    (`cfg.model`, or `start_from`) trained on loss(S, T) over each list, with its agreement with the teacher on
    a seeded sample of the lists before (kept in `agreement_before.json`, so a resume reuses it) and after."""
    output_dir = Path(output_dir)
    student = build_student(cfg, start_from)
    passage_embeddings = None
    if not cfg.train_passages:  # embedded once (cache keyed by the frozen weights), read at every step
        passage_embeddings = encode_corpus_cached(student, corpus, encode.batch_size, dtype=encode.dtype)
    sample = examples
    if cfg.agreement_sample and cfg.agreement_holdout > 0:  # held out of training: the label-free check
        held = min(cfg.agreement_sample, max(1, math.ceil(cfg.agreement_holdout * len(examples))))
        rows = set(random.Random(seed).sample(range(len(examples)), min(held, len(examples) - 1)))
        sample = [ex for i, ex in enumerate(examples) if i in rows]
        examples = [ex for i, ex in enumerate(examples) if i not in rows]
    elif cfg.agreement_sample and len(examples) > cfg.agreement_sample:
        rows = sorted(random.Random(seed).sample(range(len(examples)), cfg.agreement_sample))
        sample = [examples[i] for i in rows]
    before_file = output_dir / AGREEMENT_BEFORE_FILE
    before = None
    if cfg.agreement_sample:
        before = read_json(before_file) if resume else None
        if before is None:
            before = teacher_agreement(student, sample, corpus, temperature=cfg.temperature,
                                       passage_embeddings=passage_embeddings)
            write_json(before_file, before)
    loss = distillation_loss(cfg.loss, cfg.temperature, cfg.margin)
    in_batch = InBatchListLoss(cfg.temperature) if cfg.in_batch_negatives else None
    args = TrainingArguments.from_config(cfg.trainer, output_dir=output_dir, seed=seed, resume=resume)
    trainer = Trainer(student, args, examples, ListCollator(student, corpus, passage_embeddings, cfg.random_negatives),
                      loss_fn=ListDistillLoss(loss, in_batch, cfg.trainer.cross_device_negatives), callbacks=callbacks)
    summary = trainer.train()
    student.card_training = {"method": "list distillation (distillir.recipes.common.distill)", "lists": len(examples),
                             "steps": summary.get("global_step"), "loss": cfg.loss,
                             "in-batch negatives": cfg.in_batch_negatives, "random negatives": cfg.random_negatives,
                             "passage tower": "trained" if cfg.train_passages else "frozen (the start model's)",
                             "relevance labels": "none"}
    save_on_main((student, output_dir / FINAL_DIR))
    after = None
    if before:
        after = teacher_agreement(student, sample, corpus, temperature=cfg.temperature,
                                  passage_embeddings=passage_embeddings)
    return student, {"train": summary, "lists": len(examples), "loss": cfg.loss,
                     "start_from": str(start_from) if start_from else cfg.model, "scale": student.settings.scale,
                     "agreement_before": before, "agreement_after": after, "final": str(output_dir / FINAL_DIR),
                     "agreement_held_out": bool(cfg.agreement_holdout and cfg.agreement_sample)}


def reindex(student, corpus, round_dir: Path, encode: EncodeConfig, *, eval_ds=None, train_queries=None,
            top_k: int = 100, cache: bool = False) -> dict[str, Any]:
    """A round's index: the corpus re-embedded with the trained student (`cache`: read from the embedding cache,
    for a frozen passage tower), saved to `round_dir/index`; its eval run and metrics, and the label-free
    collapse check on the eval questions (the training questions when there is no eval split)."""
    start = time.perf_counter()
    dense = DenseRetriever.build(corpus, student, batch_size=encode.batch_size, dtype=encode.dtype, cache=cache)
    embed_s = time.perf_counter() - start
    save_on_main((dense, round_dir / "index"))
    info: dict[str, Any] = {"index": str(round_dir / "index"), "passages": len(corpus), "embed_s": round(embed_s, 3),
                            "dtype": encode.dtype}
    if eval_ds is not None:
        eval_dense = dense
        if eval_ds.corpus is not corpus:
            eval_dense = DenseRetriever.build(eval_ds.corpus, student, batch_size=encode.batch_size,
                                              dtype=encode.dtype, cache=cache)
        run = eval_dense.search(eval_ds.queries, top_k=top_k)
        run.write_trec(round_dir / "eval" / "retriever.trec", tag=round_dir.name)
        info["metrics"] = evaluate_retrieval(run, eval_ds)
        questions = "eval"
    else:  # no eval split: the check needs no labels, so the training questions serve
        run = dense.search(train_queries, top_k=1)
        questions = "train"
    info["diagnostics"] = {"questions": questions,
                           **collapse_check(run, f"round {round_dir.name.split('-')[-1]}'s retriever")}
    return info


__all__ = [
    "ListCollator",
    "ListDistillLoss",
    "ListExample",
    "build_student",
    "distillation_loss",
    "list_examples",
    "reindex",
    "student_list_scores",
    "teacher_agreement",
    "teacher_targets",
    "train_student",
]
