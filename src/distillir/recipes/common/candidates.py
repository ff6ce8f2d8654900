"""Candidate lists for list distillation: which passages of each training question the teacher scores and the
student learns to order. BM25's top-n (FiD-KD's first round), the student's own top-n (what it will retrieve,
so its own mistakes are in the list), or their union in RRF order; and the answer-string teacher over them.
"""

from __future__ import annotations

from collections.abc import Sequence

from distillir.data.run import Run
from distillir.errors import ConfigError
from distillir.readers.fid_data import examples_from_run
from distillir.recipes.common.config import EncodeConfig
from distillir.retrievers.bm25 import bm25_cached
from distillir.retrievers.dense.retriever import DenseRetriever
from distillir.retrievers.hybrid import union_of_tops
from distillir.teachers.answers import answer_match_scores
from distillir.teachers.scores import TeacherScores

SOURCES = ("bm25", "student")


def check_sources(sources: Sequence[str]) -> None:
    unknown = [s for s in sources if s not in SOURCES]
    if not sources or unknown:
        raise ConfigError(f"candidate sources must be a non-empty list of {SOURCES}, got {list(sources)}")


def candidate_run(sources: Sequence[str], depth: int, corpus, queries, *, student=None,
                  encode: EncodeConfig | None = None) -> Run:
    """Each query's candidates: the top `depth` of every source ("bm25"; "student": `student` over `corpus`,
    its embeddings cached), merged in RRF order when there are several (up to len(sources) x depth each)."""
    check_sources(sources)
    encode = encode or EncodeConfig()
    runs = []
    for source in sources:
        if source == "bm25":
            runs.append(bm25_cached(corpus).search(queries, top_k=depth))
        else:
            if student is None:
                raise ConfigError("the 'student' candidate source needs the student encoder")
            dense = DenseRetriever.build(corpus, student, batch_size=encode.batch_size, dtype=encode.dtype,
                                         cache=True)
            runs.append(dense.search(queries, top_k=depth))
    if len(runs) == 1:
        return runs[0]
    return union_of_tops([(run, depth) for run in runs])


def answer_teacher(run: Run, queries, corpus) -> TeacherScores:
    """The answer-string teacher (1 if a passage holds one of the question's answers, else 0) over `run`'s
    candidates; questions without answers or candidates are left out."""
    examples = [ex for ex in examples_from_run(run, queries, corpus) if ex["ctxs"]]
    return answer_match_scores(examples)


__all__ = ["SOURCES", "answer_teacher", "candidate_run", "check_sources"]
