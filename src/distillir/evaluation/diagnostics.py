"""Label-free checks on a run: does the retriever still depend on the query?

A student distilled from a teacher whose scores carry no query-specific signal can learn one direction
that every query follows, and then ranks the same passages first for every question (retrieval collapse,
an extreme of "hubness", Radovanovic et al. 2010). `top1_concentration` measures it without labels, so a
recipe can warn the moment it happens.
"""

from __future__ import annotations

from collections import Counter

from distillir.data.run import Run

# A run is called collapsed when one passage is the first hit of more than this share of its queries
# (and it has enough queries for a share to mean something).
COLLAPSE_SHARE = 0.2
COLLAPSE_MIN_QUERIES = 50


def top1_concentration(run: Run) -> dict:
    """How many distinct passages are ranked first, and the share of queries won by the commonest one.

    Returns {"queries", "distinct_top1", "top1_max_share", "top1_max_pid", "collapsed"}; queries with no
    hits are not counted.
    """
    firsts = Counter()
    for qid in run:
        hits = run[qid]  # sorted best first
        if hits:
            firsts[hits[0][0]] += 1
    total = sum(firsts.values())
    if not total:
        return {"queries": 0, "distinct_top1": 0, "top1_max_share": 0.0, "top1_max_pid": None, "collapsed": False}
    pid, count = firsts.most_common(1)[0]
    share = count / total
    return {"queries": total, "distinct_top1": len(firsts), "top1_max_share": share, "top1_max_pid": pid,
            "collapsed": total >= COLLAPSE_MIN_QUERIES and share > COLLAPSE_SHARE}


__all__ = ["COLLAPSE_MIN_QUERIES", "COLLAPSE_SHARE", "top1_concentration"]
