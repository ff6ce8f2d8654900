"""A run: for each query, passages with scores, best first. Reads and writes TREC run files and JSONL."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from distillir.errors import InputError
from distillir.utils.io import atomic_write


def _order(hits: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    # Deterministic tie-break: higher score first, then doc id ascending.
    return sorted(((str(d), float(s)) for d, s in hits), key=lambda x: (-x[1], x[0]))


class Run(Mapping[str, list[tuple[str, float]]]):
    """qid -> [(pid, score), ...] sorted by (-score, pid). Query order is kept as inserted."""

    def __init__(self, data: Mapping[str, Iterable[tuple[str, float]]] | None = None, name: str = "run"):
        self.name = name
        self._data: dict[str, list[tuple[str, float]]] = {}
        for qid, hits in (data or {}).items():
            self._data[str(qid)] = _order(hits)

    def __getitem__(self, qid: str) -> list[tuple[str, float]]:
        return self._data[qid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def add(self, qid: str, hits: Iterable[tuple[str, float]]) -> None:
        self._data[str(qid)] = _order(hits)

    def top(self, k: int) -> Run:
        return Run({q: h[:k] for q, h in self._data.items()}, self.name)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """The nested-dict shape pytrec_eval takes."""
        return {q: dict(h) for q, h in self._data.items()}

    # --- TREC run format: "qid Q0 docid rank score tag" ---
    def write_trec(self, path: str | Path, tag: str | None = None) -> None:
        """Write a TREC run. Scores are written exactly (repr), so rounding cannot create new ties on re-read."""
        tag = (tag or self.name).replace(" ", "_")
        with atomic_write(path) as f:
            for qid, hits in self._data.items():
                for rank, (pid, score) in enumerate(hits, 1):
                    f.write(f"{qid} Q0 {pid} {rank} {score!r} {tag}\n")

    @classmethod
    def read_trec(cls, path: str | Path) -> Run:
        """Read "qid Q0 docid rank score tag" lines; the rank column is ignored, scores decide order."""
        path = _existing(path)
        data: dict[str, list[tuple[str, float]]] = {}
        seen = _PairTracker(path)
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                line = _decoded(raw, path, n).strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 6:
                    raise InputError(
                        path, f"expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}", line=n
                    )
                score = _score(parts[4], path, n)
                seen.check(parts[0], parts[2], n)
                data.setdefault(parts[0], []).append((parts[2], score))
        return cls(data, name=path.stem)

    @classmethod
    def read_jsonl(cls, path: str | Path) -> Run:
        """Read the ctxs JSONL `write_jsonl` writes (also DPR/FiD retrieval files): one query per line.

        Each line needs "id" and "ctxs": [{"id", "score", ...}]. Scores may be numbers or numeric
        strings (DPR writes strings); if no ctx of a line has a score, the file order is kept.
        """
        path = _existing(path)
        data: dict[str, list[tuple[str, float]]] = {}
        first_line: dict[str, int] = {}
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                line = _decoded(raw, path, n)
                if not line.strip():
                    continue
                # Passages repeated within a line are rejected by the parser; across lines, by query id.
                qid, hits = _parse_jsonl_line(line, path, n)
                if qid in first_line:
                    raise InputError(path, f"query {qid!r} already read on line {first_line[qid]}", line=n, field="id")
                first_line[qid] = n
                data[qid] = hits
        return cls(data, name=path.stem)

    @classmethod
    def read(cls, path: str | Path) -> Run:
        """Read a TREC run or a ctxs JSONL file, telling them apart by the first non-blank character."""
        path = _existing(path)
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if raw.strip():
                    first = _decoded(raw, path, n).lstrip()[0]
                    break
            else:
                return cls(name=path.stem)  # empty file: an empty run
        return cls.read_jsonl(path) if first in "{[" else cls.read_trec(path)

    # --- JSONL with passage texts: what readers consume ---
    def write_jsonl(self, path: str | Path, queries, corpus) -> None:
        """One line per query: id, question, answers, and ctxs [{id, title, text, score}] (DPR/FiD layout)."""
        with atomic_write(path) as f:
            for qid, hits in self._data.items():
                qi = queries.index_of.get(qid)
                row = {
                    "id": qid,
                    "question": queries.texts[qi] if qi is not None else None,
                    "answers": queries.answers[qi] if qi is not None else None,
                    "ctxs": [{**corpus.passage(pid), "score": score} for pid, score in hits],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- reading helpers -------------------------------------------------------------------------------
def _decoded(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "invalid UTF-8; re-encode the file as UTF-8", line=line) from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "run file not found")
    return path


def _score(value: object, path: Path, line: int) -> float:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(path, f"score {value!r} is not a number", line=line, field="score") from None
    if math.isnan(score):  # NaN would make the order undefined
        raise InputError(path, "score is NaN", line=line, field="score")
    return score


class _PairTracker:
    """Remembers where each (qid, pid) pair was read, to reject a passage listed twice for a query."""

    def __init__(self, path: Path):
        self.path = path
        self.first_line: dict[tuple[str, str], int] = {}

    def check(self, qid: str, pid: str, line: int) -> None:
        earlier = self.first_line.setdefault((qid, pid), line)
        if earlier != line:
            raise InputError(
                self.path, f"passage {pid!r} listed twice for query {qid!r} (first on line {earlier})", line=line
            )


def _parse_jsonl_line(text: str, path: Path, n: int) -> tuple[str, list[tuple[str, float]]]:
    """One JSONL line -> (qid, [(pid, score)]), with errors located by line and field."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e.msg})", line=n) from None
    if not isinstance(row, dict):
        raise InputError(path, "expected a JSON object per line", line=n)
    if row.get("id") is None:
        raise InputError(path, "missing query id", line=n, field="id")
    ctxs = row.get("ctxs")
    if not isinstance(ctxs, list):
        raise InputError(path, "expected a list of passages", line=n, field="ctxs")
    if not all(isinstance(c, dict) and c.get("id") is not None for c in ctxs):
        raise InputError(path, "every passage needs an id", line=n, field="ctxs")
    pids = [str(c["id"]) for c in ctxs]
    if len(set(pids)) != len(pids):
        dup = next(p for i, p in enumerate(pids) if p in pids[:i])
        raise InputError(path, f"passage {dup!r} listed twice for query {str(row['id'])!r}", line=n, field="ctxs")
    scored = [c.get("score") is not None for c in ctxs]
    if not any(scored):
        # No scores: keep the file's order with descending positional scores.
        return str(row["id"]), [(pid, float(len(pids) - i)) for i, pid in enumerate(pids)]
    if not all(scored):
        raise InputError(path, "some passages have a score and some do not", line=n, field="ctxs")
    return str(row["id"]), [(pid, _score(c["score"], path, n)) for pid, c in zip(pids, ctxs)]
