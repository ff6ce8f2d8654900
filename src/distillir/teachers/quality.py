"""Does a teacher know more than the retriever it teaches? A check that needs no relevance labels.

Over each training list (the retriever's top-n, in its order) holding at least one passage that contains an
answer string: how often the teacher's highest-scored passage contains one, against the retriever's own first
passage, and the reciprocal rank of the first answer-bearing passage under either order. FiD-KD has the
answers anyway (the reader trains on them). A teacher that does not beat its retriever here has nothing to
teach it: distilling it can only pull the retriever toward the teacher's noise.
"""

from __future__ import annotations

from collections.abc import Iterable

from distillir.data.answers import has_answer


def answer_hits(scores, examples: Iterable[dict]) -> dict[str, float | int]:
    """`scores`: a `TeacherScores`; `examples`: reader examples (the ctxs layout, with answers), whose ctxs
    order is the retriever's. Lists whose passages the scores do not all cover are skipped."""
    lists = answer_lists = teacher_hit = retriever_hit = 0
    teacher_rr = retriever_rr = 0.0
    for ex in examples:
        qid = str(ex["id"])
        if qid not in scores or not ex.get("answers"):
            continue
        pids, values = scores[qid]
        text = {str(c["id"]): c["text"] for c in ex["ctxs"]}
        if any(p not in text for p in pids):
            continue
        order = [str(c["id"]) for c in ex["ctxs"] if str(c["id"]) in set(pids)]
        hit = {p: has_answer(ex["answers"], text[p]) for p in pids}
        lists += 1
        if not any(hit.values()):
            continue
        answer_lists += 1
        by_teacher = [p for _, p in sorted(zip(values, pids), key=lambda x: -x[0])]
        teacher_hit += hit[by_teacher[0]]
        retriever_hit += hit[order[0]]
        teacher_rr += 1.0 / (1 + next(i for i, p in enumerate(by_teacher) if hit[p]))
        retriever_rr += 1.0 / (1 + next(i for i, p in enumerate(order) if hit[p]))
    n = max(answer_lists, 1)
    return {"lists": lists, "answer_lists": answer_lists, "teacher_hit@1": teacher_hit / n,
            "retriever_hit@1": retriever_hit / n, "teacher_mrr": teacher_rr / n, "retriever_mrr": retriever_rr / n}


__all__ = ["answer_hits"]
