"""Teacher scoring split across the processes of a torchrun job: each process scores every N-th list, and
every process ends with all the scores, in the lists' order (as one process would have written them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distillir.teachers.scores import TeacherScores
from distillir.utils.dist import distributed_world


def score_across_processes(score: Callable[[Sequence[dict[str, Any]]], TeacherScores],
                           examples: Sequence[dict[str, Any]]) -> TeacherScores:
    """`score(examples)`, with the lists shared out when several processes run (every process must call it)."""
    world = distributed_world()
    if world == 1:
        return score(examples)
    import torch.distributed as dist

    mine = score(list(examples[dist.get_rank()::world]))
    rows = [(qid, pids, scores, mine.queries.get(qid), mine.answers.get(qid)) for qid, (pids, scores) in mine.items()]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (mine.teacher, rows))
    by_qid = {row[0]: row for _, part in gathered for row in part}
    out = TeacherScores(gathered[0][0])
    for qid in dict.fromkeys([str(ex.get("id")) for ex in examples] + list(by_qid)):
        if qid in by_qid:
            _, pids, scores, query, answers = by_qid[qid]
            out.add(qid, pids, scores, query=query, answers=answers)
    return out
