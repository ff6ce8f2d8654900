"""The one file format for teacher scores, shared by every distillation recipe.

Teacher scores T(q, p) are what a retriever is distilled from (Izacard & Grave, 2021, "Distilling
Knowledge from Reader to Retriever"; Izacard et al., 2022, Atlas). Recipes write them with
`write_teacher_scores` and read them with `read_teacher_scores`, so scores produced anywhere else -- another
reader, a cross-encoder, an LLM -- can be distilled from by writing this format.

JSONL, one line per question:

    {"qid": "q1", "query": "who wrote hamlet", "pids": ["p7", "p3"], "scores": [2.31, -0.4],
     "teacher": "fid-attention:fid", "answers": ["Shakespeare"]}

- qid (string; an integer is accepted and read as a string): unique in the file.
- pids: the question's candidate passages (distinct ids), usually in the retriever's order.
- scores: one finite number per pid; higher means more relevant. Only their relative values within a
  question matter to softmax-based (KL) losses; MSE also uses their scale.
- teacher (optional, default "unknown"): free text naming the teacher and its aggregation; lines that
  give it must agree. distillir writes "fid-attention:<aggregation>", "fid-pdist" and "fid-loop".
- query, answers (optional): the question text and its gold answers, for convenience.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from distillir.data.run import Run
from distillir.errors import ConfigError, InputError
from distillir.utils.io import atomic_write, iter_jsonl_objects

UNKNOWN_TEACHER = "unknown"


class TeacherScores(Mapping[str, tuple[list[str], list[float]]]):
    """qid -> (pids, scores), in insertion order, from one teacher (`teacher` names it).

    `queries` and `answers` hold the optional question texts and answers by qid.
    """

    def __init__(self, teacher: str = UNKNOWN_TEACHER):
        self.teacher = teacher
        self._rows: dict[str, tuple[list[str], list[float]]] = {}
        self.queries: dict[str, str] = {}
        self.answers: dict[str, list[str]] = {}

    def add(
        self,
        qid: str,
        pids: Sequence[str],
        scores: Sequence[float],
        *,
        query: str | None = None,
        answers: Sequence[str] | None = None,
    ) -> None:
        """Add one question's scores; raises ValueError on a repeated qid, repeated pids, a length mismatch
        or a non-finite score."""
        qid = str(qid)
        pids = [str(p) for p in pids]
        scores = [float(s) for s in scores]
        if qid in self._rows:
            raise ValueError(f"qid {qid!r} already has teacher scores")
        problem = _row_problem(pids, scores)
        if problem:
            raise ValueError(f"qid {qid!r}: {problem[1]}")
        self._rows[qid] = (pids, scores)
        if query is not None:
            self.queries[qid] = query
        if answers is not None:
            self.answers[qid] = [str(a) for a in answers]

    def __getitem__(self, qid: str) -> tuple[list[str], list[float]]:
        return self._rows[qid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def subset(self, qids: Iterable[str]) -> TeacherScores:
        out = TeacherScores(self.teacher)
        for qid in qids:
            pids, scores = self._rows[qid]
            out.add(qid, pids, scores, query=self.queries.get(qid), answers=self.answers.get(qid))
        return out

    def to_run(self, name: str | None = None):
        """The scores as a `Run` (ranking each question's candidates by the teacher), e.g. to evaluate them."""
        return Run({qid: zip(pids, scores) for qid, (pids, scores) in self._rows.items()}, name=name or self.teacher)

    def write(self, path: str | Path) -> None:
        write_teacher_scores(path, self)


def _row_problem(pids: list[str], scores: list[float]) -> tuple[str, str] | None:
    """(field, message) for the first problem in one question's pids and scores, or None."""
    if len(pids) != len(scores):
        return "scores", f"{len(scores)} scores for {len(pids)} pids; they must pair up"
    seen: set[str] = set()
    for pid in pids:
        if pid in seen:
            return "pids", f"passage id {pid!r} appears twice"
        seen.add(pid)
    for i, score in enumerate(scores):
        if not math.isfinite(score):
            return "scores", f"score {score} at position {i} (pid {pids[i]!r}) is not finite"
    return None


def within_sample(scores: TeacherScores, queries, source: str | Path | None = None):
    """The lists of `scores` whose question is one of `queries` (a sample of the training questions: a score
    file made over all of them is cut to the sample, not used whole); an error naming the file if none is."""
    keep = [q for q in scores if q in queries.index_of]
    if not keep:
        raise InputError(source, f"none of its {len(scores)} questions is among the {len(queries)} sampled training "
                         "questions (max_train_queries)", field="qid")
    return scores.subset(keep)


def most_confident(scores: TeacherScores, fraction: float) -> TeacherScores:
    """The `fraction` of lists (at least one) where the teacher is surest of its first passage: the largest gap
    between its first and second z-scored score; lists of one passage or with equal scores rank last. On SciFact
    train Gemma-3-270M's first passage is relevant in 0.96 of its surest half of lists against 0.77 of all of them,
    yet MiniLM distilled from that half stands where all lists put it (bench/lm_distill.py
    `scifact_gemma512_confident`): the surest lists are the easy ones, which the student already ranks."""

    def margin(qid: str) -> float:
        values = sorted(scores[qid][1], reverse=True)
        if len(values) < 2:
            return float("-inf")
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        return (values[0] - values[1]) / std if std > 0 else float("-inf")

    keep = max(1, round(fraction * len(scores)))
    ranked = sorted(scores, key=margin, reverse=True)[:keep]
    chosen = set(ranked)
    return scores.subset([q for q in scores if q in chosen])  # file order kept


def write_teacher_scores(path: str | Path, scores: TeacherScores) -> None:
    """Write `scores` in the teacher-score JSONL format (atomically)."""
    with atomic_write(path) as f:
        for qid, (pids, values) in scores.items():
            row: dict = {"qid": qid}
            if qid in scores.queries:
                row["query"] = scores.queries[qid]
            row.update(pids=pids, scores=values, teacher=scores.teacher)
            if qid in scores.answers:
                row["answers"] = scores.answers[qid]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _id(value, path: Path, lineno: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(path, f"expected a string id, got {type(value).__name__}", line=lineno, field=field)
    return str(value)


def read_teacher_scores(path: str | Path, corpus=None) -> TeacherScores:
    """Read and validate a teacher-score JSONL file; with `corpus`, every pid must be one of its passages.

    Every problem raises `InputError` naming the file, line and field.
    """
    path = Path(path)
    out: TeacherScores | None = None
    named_on: int | None = None  # line that first named the teacher
    first_line: dict[str, int] = {}
    for lineno, row in iter_jsonl_objects(path, "teacher scores file"):
        for name in ("qid", "pids", "scores"):
            if name not in row:
                raise InputError(path, "missing required field", line=lineno, field=name)
        qid = _id(row["qid"], path, lineno, "qid")
        if qid in first_line:
            raise InputError(
                path, f"duplicate qid {qid!r} (first on line {first_line[qid]})", line=lineno, field="qid"
            )
        if not isinstance(row["pids"], list):
            raise InputError(path, "pids must be a list of passage ids", line=lineno, field="pids")
        pids = [_id(p, path, lineno, "pids") for p in row["pids"]]
        raw = row["scores"]
        if not isinstance(raw, list) or any(isinstance(s, bool) or not isinstance(s, (int, float)) for s in raw):
            raise InputError(path, "scores must be a list of numbers", line=lineno, field="scores")
        scores = [float(s) for s in raw]
        problem = _row_problem(pids, scores)
        if problem:
            raise InputError(path, problem[1], line=lineno, field=problem[0])
        if corpus is not None:
            unknown = [p for p in pids if p not in corpus]
            if unknown:
                shown = ", ".join(repr(p) for p in unknown[:3]) + (
                    f" (+{len(unknown) - 3} more)" if len(unknown) > 3 else ""
                )
                raise InputError(path, f"passage ids not in the corpus: {shown}", line=lineno, field="pids")
        teacher = row.get("teacher")
        if teacher is not None and not isinstance(teacher, str):
            raise InputError(path, "teacher must be a string", line=lineno, field="teacher")
        if out is None:
            out = TeacherScores()
        if teacher is not None:
            # Lines may omit the teacher; the ones that name it must agree.
            if named_on is not None and teacher != out.teacher:
                raise InputError(
                    path,
                    f"teacher {teacher!r} differs from {out.teacher!r} (line {named_on}); one file holds one teacher",
                    line=lineno,
                    field="teacher",
                )
            if named_on is None:
                out.teacher, named_on = teacher, lineno
        query = row.get("query")
        if query is not None and not isinstance(query, str):
            raise InputError(path, "query must be a string", line=lineno, field="query")
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
            raise InputError(path, "answers must be a list of strings", line=lineno, field="answers")
        out.add(qid, pids, scores, query=query, answers=answers)
        first_line[qid] = lineno
    if out is None:
        raise InputError(path, "no teacher scores in file")
    return out


# --------------------------------------------------------------------------------------------------
# Scoring retrieved examples with a FiD reader
# --------------------------------------------------------------------------------------------------

READER_TEACHERS = ("pdist", "loop")  # besides the attention aggregations


def score_with_reader(
    reader,
    examples: Iterable[dict] | str | Path,
    aggregation="fid",
    *,
    batch_size: int = 8,
    n_passages: int | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = False,
) -> TeacherScores:
    """Teacher scores for every retrieved passage of every example, from a `FiDReader` (no gradient, eval mode).

    examples: reader examples in the ctxs layout (dicts, or the path of their JSONL).
    aggregation: a cross-attention aggregation ("fid", "post_softmax", "all_tokens", "max", "adist" or an
        `Aggregation`; `layers` picks decoder layers), or "pdist" / "loop" (see `teachers.likelihood`).
    The first `n_passages` (default: the reader's) ctxs of each example are scored together, as the reader
    reads them. First-token attention aggregations need no answers; the others need one per example.
    """
    import torch

    # The reader-side modules import torch and transformers: only when a reader scores (the file format above
    # stays light for `distillir.teachers`).
    from distillir.readers.fid_data import batched, load_fid_examples
    from distillir.teachers.attention import attention_scores, resolve_aggregation
    from distillir.teachers.likelihood import answer_log_likelihood, leave_one_out_scores

    if isinstance(examples, (str, Path)):
        examples = load_fid_examples(examples)
    examples = list(examples)
    if aggregation in READER_TEACHERS:
        if layers is not None:
            raise ConfigError(f"layers applies to attention aggregations, not {aggregation!r}")
        agg, teacher, needs_answers = None, f"fid-{aggregation}", True
    else:
        agg = resolve_aggregation(aggregation, layers)
        teacher, needs_answers = f"fid-attention:{agg.label}", agg.output_tokens == "all"
    collate = reader.collator(n_passages, labels=needs_answers)

    chunks = batched(examples, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, total=math.ceil(len(examples) / batch_size), desc=f"scoring ({teacher})")
    out = TeacherScores(teacher)
    was_training = reader.training
    reader.eval()
    try:
        with torch.no_grad():
            for chunk in chunks:
                batch = collate(chunk).to(reader.device)
                if aggregation == "pdist":
                    scores = answer_log_likelihood(reader, batch)
                elif aggregation == "loop":
                    scores = leave_one_out_scores(reader, batch)
                else:
                    scores = attention_scores(reader, batch, agg)
                scores = scores.float().cpu()
                for i, example in enumerate(chunk):
                    pids = batch.pids[i]
                    out.add(
                        batch.qids[i],
                        pids,
                        scores[i, : len(pids)].tolist(),
                        query=example.get("question"),
                        answers=batch.answers[i],
                    )
    finally:
        reader.train(was_training)
    return out
