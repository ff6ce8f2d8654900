"""Answer-string recall, as DPR measures open-domain QA retrieval ("top-k accuracy").

A passage "has the answer" when one of the query's answer strings, tokenised the way DPR's
`SimpleTokenizer` does, occurs as a contiguous run of the passage's tokens. Tokenisation:
Unicode NFD, lower-case, then tokens are runs of letters/digits/combining marks or single other
non-space characters. Two consequences worth knowing (both as in DPR):

* accents are kept as combining marks, so "Élysée" matches "ÉLYSÉE" (composed or decomposed) but not
  "elysee";
* punctuation is its own token, so the answer "U.S." matches "the U.S. Army" but not "US".

Unlike DPR, an answer that normalises to no tokens matches nothing (DPR's loop accepts it everywhere).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import regex

from distillir.data.types import Corpus, Queries
from distillir.errors import IndexMismatchError

# DPR's SimpleTokenizer: an alphanumeric run (letters, digits, marks) or one non-space, non-control char.
_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]", flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)

# Tokens never contain control characters, so joining with one makes "contiguous token subsequence"
# the same test as a plain substring search on the joined strings, which runs in C.
_SEP = "\x00"

DEFAULT_KS = (1, 5, 20, 100)


def dpr_tokens(text: str) -> list[str]:
    """DPR-normalised tokens of `text`: NFD, lower-cased, alphanumeric runs and single symbols."""
    return [t.lower() for t in _TOKEN.findall(unicodedata.normalize("NFD", text))]


def _joined(tokens: Sequence[str]) -> str:
    return _SEP + _SEP.join(tokens) + _SEP


def _answer_keys(answers: Iterable[str]) -> tuple[str, ...]:
    # Empty answers are dropped: an empty token sequence would "occur" in every passage.
    return tuple(_joined(toks) for toks in map(dpr_tokens, answers) if toks)


def has_answer(answers: Iterable[str], text: str, title: str | None = None, *, include_title: bool = False) -> bool:
    """True if any answer's DPR tokens occur contiguously in the passage's DPR tokens.

    DPR matches against the passage text only; `include_title=True` also searches "title text".
    """
    if include_title and title:
        text = f"{title} {text}"
    haystack = _joined(dpr_tokens(text))
    return any(key in haystack for key in _answer_keys(answers))


class AnswerMatcher:
    """Answer matching over one corpus, normalising each passage once and only when first needed.

    Passage normalisation dominates the cost, and a run touches far fewer passages than a
    corpus has, so normalised passages are computed lazily and cached by passage id.
    """

    def __init__(self, corpus: Corpus, *, include_title: bool = False):
        self.corpus = corpus
        self.include_title = include_title
        self._passages: dict[str, str] = {}

    def _passage(self, pid: str) -> str:
        key = self._passages.get(pid)
        if key is None:
            row = self.corpus.index_of.get(pid)
            if row is None:
                where = f" ({self.corpus.source})" if self.corpus.source else ""
                raise IndexMismatchError(
                    f"passage id {pid!r} is not in the corpus{where}: was the run made over another corpus?"
                )
            text = self.corpus.with_title(row) if self.include_title else self.corpus.texts[row]
            key = self._passages[pid] = _joined(dpr_tokens(text))
        return key

    def hits(self, answers: Iterable[str], pids: Iterable[str]) -> list[bool]:
        """For each passage id, whether it contains one of the answers."""
        keys = _answer_keys(answers)
        return [any(k in self._passage(pid) for k in keys) for pid in pids]

    def first_hit(self, answers: Iterable[str], pids: Iterable[str]) -> int | None:
        """0-based rank of the first passage containing an answer, or None; stops at that passage."""
        keys = _answer_keys(answers)
        if not keys:
            return None
        for rank, pid in enumerate(pids):
            passage = self._passage(pid)
            if any(k in passage for k in keys):
                return rank
        return None


def answer_recall(
    run: Mapping[str, Sequence[tuple[str, float]]],
    queries: Queries,
    corpus: Corpus,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    include_title: bool = False,
    matcher: AnswerMatcher | None = None,
) -> dict[str, float | int]:
    """Fraction of queries with an answer string in their top k passages, for each k (DPR's "Top-k").

    Evaluated queries are those of `queries` that have answers; one missing from the run counts as a
    miss. Run queries not in `queries` are ignored. Returns {"Top-k": value, ..., "queries": n,
    "missing": queries absent from the run}. Each query's passages are scanned once, up to its
    first hit or max(ks), so all cutoffs cost one pass.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"cutoffs must be positive integers, got {ks}")
    matcher = matcher or AnswerMatcher(corpus, include_title=include_title)
    depth = ks[-1]
    first_hits: list[int | None] = []
    missing = 0
    for qid, answers in zip(queries.ids, queries.answers):
        if answers is None:
            continue
        hits = run.get(qid)
        if hits is None:
            missing += 1
            first_hits.append(None)
            continue
        first_hits.append(matcher.first_hit(answers, (pid for pid, _ in hits[:depth])))
    n = len(first_hits)
    result: dict[str, float | int] = {}
    for k in ks:
        found = sum(1 for r in first_hits if r is not None and r < k)
        result[f"Top-{k}"] = found / n if n else 0.0
    result["queries"] = n
    result["missing"] = missing
    return result
