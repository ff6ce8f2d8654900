"""Teacher scores from a causal LM (`readers.causal_lm.CausalLMReader`), one per (question, passage), each
passage read alone:

- `pdist`: log p(answer | passage, question) (Atlas' PDist, Izacard et al. 2022; REPLUG's LM-supervised
  retrieval, Shi et al. 2023): the mean (or sum) over the answer's tokens; with several gold answers the max
  (or mean) over them.
- `question_likelihood`: log p(question | passage) (UPR, Sachan et al. 2022; ART, Sachan et al. 2023). No
  answers are used, so a user with questions only (or claims, as in SciFact) can distil. The passage is the
  prompt, so every question scored against the same passage reuses its KV cache.

Scores are cached by (reader fingerprint, prompt, target) in an append-only JSONL file: a killed scoring run
resumes where it stopped, and a second run over the same lists costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from distillir.errors import ConfigError
from distillir.readers.causal_lm import CausalLMReader
from distillir.teachers.scores import TeacherScores
from distillir.utils.io import cache_dir
from distillir.utils.log import get_logger

logger = get_logger(__name__)

LM_TEACHERS = ("pdist", "question_likelihood")


class ScoreCache:
    """(prompt, target) -> score for one reader fingerprint, kept in memory and appended to a JSONL file after
    every batch (fsync'd), so nothing scored is lost to a kill; a torn last line is ignored on reading."""

    def __init__(self, path: Path | None, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self.values: dict[str, float] = {}
        self._torn = False  # the file ends mid-line (a kill during a write): start the next write on a new line
        if path is not None and path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                self._torn = f.read(1) != b"\n"
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self.values[row["k"]] = float(row["v"])
                    except (ValueError, KeyError, TypeError):
                        continue  # the line a kill cut short

    def key(self, prompt: str, target: str) -> str:
        return hashlib.sha256(f"{self.fingerprint}\x00{prompt}\x00{target}".encode()).hexdigest()[:32]

    def add(self, items: Iterable[tuple[str, float]]) -> None:
        items = list(items)
        self.values.update(items)
        if self.path is None or not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if self._torn:
                f.write("\n")
                self._torn = False
            f.writelines(json.dumps({"k": k, "v": v}) + "\n" for k, v in items)
            f.flush()
            os.fsync(f.fileno())


def default_cache(reader: CausalLMReader) -> ScoreCache:
    name = hashlib.sha256(reader.fingerprint().encode()).hexdigest()[:16]
    return ScoreCache(cache_dir() / "lm-scores" / f"{name}.jsonl", reader.fingerprint())


def score_pairs(reader: CausalLMReader, pairs: Sequence[tuple[str, str]], *, cache: ScoreCache | None = None,
                batch_size: int = 8, reduce: str = "mean", share_prefix: bool = False, chunk: int = 256,
                progress: str | None = None) -> list[float]:
    """`reader.score_targets` over `pairs`, through `cache`: only missing pairs are scored, `chunk` at a time,
    each chunk written to the cache before the next starts."""
    cache = cache or ScoreCache(None, reader.fingerprint())
    keys = [cache.key(p, f"{reduce}|{t}") for p, t in pairs]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in cache.values}.values())
    if share_prefix:  # pairs with the same prompt side by side, so a chunk reuses each prompt's cache
        todo.sort(key=lambda i: pairs[i][0])
    if todo:
        logger.info("%s: %d of %d pairs to score (%d cached)", progress or "lm teacher", len(todo), len(pairs),
                    len(pairs) - len(todo))
    bar = tqdm(total=len(todo), desc=progress or "lm scores", unit="pair", disable=not todo or progress is None)
    for start in range(0, len(todo), chunk):
        rows = todo[start:start + chunk]
        values = reader.score_targets([pairs[i] for i in rows], batch_size=batch_size, reduce=reduce,
                                      share_prefix=share_prefix)
        cache.add((keys[i], v) for i, v in zip(rows, values))
        bar.update(len(rows))
    bar.close()
    return [cache.values[k] for k in keys]


def lm_teacher_scores(reader: CausalLMReader, examples: Sequence[dict], teacher: str, *, reduce: str = "mean",
                      answers: str = "max", n_passages: int | None = None, batch_size: int = 8,
                      cache: ScoreCache | None = None, progress: str | None = "lm teacher") -> TeacherScores:
    """Teacher scores for reader examples ({"id", "question", "answers", "ctxs"}): every passage of every list
    (the first `n_passages`) read alone. pdist needs answers (questions without any are left out)."""
    if teacher not in LM_TEACHERS:
        raise ConfigError(f"unknown LM teacher {teacher!r}; choose {', '.join(LM_TEACHERS)}")
    if answers not in ("max", "mean"):
        raise ConfigError(f"answers must be 'max' or 'mean', got {answers!r}")
    pairs: list[tuple[str, str]] = []
    slots = []  # per example: (qid, pids, [[pair index per answer] per passage])
    for ex in examples:
        ctxs = list(ex.get("ctxs") or [])[:n_passages]
        targets = [a for a in ex.get("answers") or [] if a.strip()] if teacher == "pdist" else [ex["question"]]
        if not ctxs or not targets:
            continue
        per_passage = []
        for c in ctxs:
            if teacher == "pdist":
                prompt = reader.read_prompt(ex["question"], c.get("title", ""), c.get("text", ""))
            else:
                prompt = reader.question_prompt(c.get("title", ""), c.get("text", ""))
            per_passage.append(list(range(len(pairs), len(pairs) + len(targets))))
            pairs.extend((prompt, t) for t in targets)
        slots.append((str(ex["id"]), [str(c["id"]) for c in ctxs], per_passage, ex))
    values = score_pairs(reader, pairs, cache=cache, batch_size=batch_size, reduce=reduce,
                         share_prefix=teacher == "question_likelihood", progress=progress)
    out = TeacherScores(f"lm-{teacher}:{reader.name}")
    for qid, pids, per_passage, ex in slots:
        scores = []
        for idx in per_passage:
            v = [values[i] for i in idx]
            scores.append(max(v) if answers == "max" else math.fsum(v) / len(v))
        out.add(qid, pids, scores, query=ex["question"], answers=list(ex.get("answers") or []))
    return out


__all__ = ["LM_TEACHERS", "ScoreCache", "default_cache", "lm_teacher_scores", "score_pairs"]
