"""In-memory data: a corpus of passages, a set of queries (optionally with answers), qrels, a dataset."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from distillir.utils.io import fingerprint_strings


@dataclass
class Corpus:
    """Passages as parallel lists; `index_of` maps a passage id to its row."""

    ids: list[str]
    texts: list[str]
    titles: list[str]
    source: str | None = None  # file the corpus was read from, for messages

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.texts) == len(self.titles)):
            raise ValueError("Corpus ids, texts and titles must have equal lengths")
        self.index_of: dict[str, int] = {pid: i for i, pid in enumerate(self.ids)}
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, pid: str) -> bool:
        return pid in self.index_of

    def passage(self, pid: str) -> dict:
        i = self.index_of[pid]
        return {"id": pid, "title": self.titles[i], "text": self.texts[i]}

    def with_title(self, i: int, sep: str = " ") -> str:
        """Title and text joined, the usual input to encoders and BM25."""
        t = self.titles[i]
        return f"{t}{sep}{self.texts[i]}" if t else self.texts[i]

    def fingerprint(self) -> str:
        """Content hash over ids, titles and texts: independent of the file format it came from."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_strings(
                s for i in range(len(self.ids)) for s in (self.ids[i], self.titles[i], self.texts[i])
            )
        return self._fingerprint

    def subset(self, ids: Sequence[str]) -> Corpus:
        rows = [self.index_of[i] for i in ids]
        return Corpus([self.ids[r] for r in rows], [self.texts[r] for r in rows], [self.titles[r] for r in rows], self.source)


@dataclass
class Queries:
    """Queries as parallel lists. `answers[i]` is the answer list of query i, or None when unknown."""

    ids: list[str]
    texts: list[str]
    answers: list[list[str] | None] = field(default_factory=list)
    gold_ids: list[list[str] | None] = field(default_factory=list)  # QA files' gold_pid, when given
    source: str | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not self.answers:
            self.answers = [None] * n
        if not self.gold_ids:
            self.gold_ids = [None] * n
        if not (n == len(self.texts) == len(self.answers) == len(self.gold_ids)):
            raise ValueError("Queries fields must have equal lengths")
        self.index_of: dict[str, int] = {qid: i for i, qid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(zip(self.ids, self.texts))

    @property
    def has_answers(self) -> bool:
        return any(a is not None for a in self.answers)

    def subset(self, ids: Sequence[str]) -> Queries:
        rows = [self.index_of[i] for i in ids]
        return Queries(
            [self.ids[r] for r in rows],
            [self.texts[r] for r in rows],
            [self.answers[r] for r in rows],
            [self.gold_ids[r] for r in rows],
            self.source,
        )

    def head(self, n: int) -> Queries:
        return self.subset(self.ids[:n])


# qrels: query id -> {passage id: graded relevance}, the shape pytrec_eval takes.
Qrels = dict[str, dict[str, int]]


@dataclass
class Dataset:
    """One split of a named dataset: corpus, queries, and what is known of relevance."""

    name: str
    split: str
    corpus: Corpus
    queries: Queries
    qrels: Qrels | None = None
