"""bench/dgr.py's teachers: the LM teacher's score file (fid-kd's teacher stage) and what each teacher knows on
its training lists, beside BM25's order and the untrained student's identifier likelihoods."""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import WORK_DIR

REPO = Path(__file__).resolve().parents[1]
LM_TEACHER_CONFIG = "configs/fid-kd-smollm2-scifact-cpu.yaml"
LM_TEACHER_RUN = WORK_DIR / "runs" / "dgr-smollm2-lm-teacher"
STUDENT_LISTS = 200  # training lists the untrained student scores


def lm_teacher_file(run: bool = True) -> Path:
    """SmolLM2's log p(claim | abstract) over the train claims' candidates: fid-kd's SciFact config run into
    LM_TEACHER_RUN (resumed where it stopped); its distilled MiniLM is a row of the benchmark too."""
    path = LM_TEACHER_RUN / "round-1" / "teacher" / "scores.jsonl"
    if run and not (LM_TEACHER_RUN / "results.json").is_file():
        from distillir.recipes import get_recipe
        from distillir.training.config import load_config

        recipe = get_recipe("fid-kd")
        config = load_config(recipe.Config, REPO / LM_TEACHER_CONFIG,
                             [f"output_dir={LM_TEACHER_RUN}", f"resume={str(LM_TEACHER_RUN.is_dir()).lower()}"])
        started = time.time()
        recipe().run(config)
        (LM_TEACHER_RUN / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    if not path.is_file():
        raise SystemExit(f"{path}: the LM teacher's scores are missing (run bench/dgr.py --teacher lm)")
    return path


def untrained_student(config, corpus):
    """The config's LM under the same prompt and prefix tree, untrained, in bf16 where the CPU has it natively."""
    from distillir.recipes.dgr import build_lm_student

    return build_lm_student(config, corpus, dtype="auto")


def _student_orders(config, ds_train, lists: dict[str, list[str]], path: Path) -> dict[str, list[str]]:
    """The untrained student's order of each list (its summed identifier log-probabilities), cached in `path`."""
    import torch

    if not path.is_file():
        student = untrained_student(config, ds_train.corpus)
        text = dict(zip(ds_train.queries.ids, ds_train.queries.texts))
        scored = {}
        with torch.no_grad():
            for qid, pids in lists.items():
                q = student.tokenize_queries([text[qid]])
                values = student.score(q, student.docid_labels(pids), per_query=len(pids))[0].float().tolist()
                scored[qid] = [p for p, _ in sorted(zip(pids, values), key=lambda x: -x[1])]
        path.write_text(json.dumps(scored))
    return json.loads(path.read_text())


def _measure(order: dict[str, list[str]], gold: dict, qids) -> dict:
    rr = [next((1.0 / (i + 1) for i, p in enumerate(order[q]) if p in gold[q]), 0.0) for q in qids]
    return {"lists": len(qids), "Top-1": round(sum(r == 1.0 for r in rr) / len(qids), 3),
            "MRR": round(sum(rr) / len(qids), 3)}


def _spread(teacher, qids) -> float:
    """The teacher's mean within-list standard deviation of its scores (the scale a KL term sees)."""
    import statistics

    return round(statistics.fmean(statistics.pstdev(teacher[q][1]) for q in qids), 3)


def _by_score(pids, values) -> list[str]:
    return [p for p, _ in sorted(zip(pids, values), key=lambda x: -x[1])]


def teacher_knowledge(config, ds_train, first: Path, cache: Path) -> dict:
    """The cross-encoder teacher's lists (BM25's top 20): gold first (top-1) and gold MRR in BM25's order, the
    teacher's, and the untrained student's (the first STUDENT_LISTS lists)."""
    from distillir.data.negatives import positives_from_dataset
    from distillir.data.run import Run
    from distillir.teachers.scores import read_teacher_scores

    gold = positives_from_dataset(ds_train)
    bm25 = Run.read_trec(first / "candidates.trec")
    teacher = read_teacher_scores(first / "teacher" / "scores.jsonl", corpus=ds_train.corpus)
    orders: dict[str, dict[str, list[str]]] = {"BM25": {q: [p for p, _ in hits] for q, hits in bm25.items()},
                                               "teacher": {}}
    for qid in teacher:  # a gold abstract BM25 missed heads the written list: judged on BM25's candidates only
        candidates = set(orders["BM25"].get(qid, ()))
        orders["teacher"][qid] = [p for p in _by_score(*teacher[qid]) if p in candidates]
    sample = [q for q in orders["BM25"] if q in orders["teacher"]][:STUDENT_LISTS]
    orders["untrained student"] = _student_orders(config, ds_train, {q: orders["BM25"][q] for q in sample},
                                                  cache / "student_train_lists.json")
    every = [q for q in orders["teacher"] if q in orders["BM25"]]
    sample = list(orders["untrained student"])
    return {"lists": "BM25's top 20 of each train claim", "score_spread": _spread(teacher, every),
            "all": {k: _measure(orders[k], gold, every) for k in ("BM25", "teacher")},
            "sample": {k: _measure(orders[k], gold, sample) for k in orders}}


def lm_teacher_knowledge(config, ds_train, path: Path, cache: Path) -> dict:
    """The LM teacher's lists as it scored them (the union of BM25's and MiniLM's top 10): the same measures,
    with BM25's order of each list from its scores over the corpus (a list member outside BM25's top 1000 last)."""
    from distillir.data.negatives import positives_from_dataset
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.teachers.scores import read_teacher_scores

    gold = positives_from_dataset(ds_train)
    teacher = read_teacher_scores(path, corpus=ds_train.corpus)
    lists = {q: list(teacher[q][0]) for q in teacher if q in gold}
    bm25 = {q: dict(hits) for q, hits in bm25_cached(ds_train.corpus).search(ds_train.queries, top_k=1000).items()}
    orders = {"BM25": {q: sorted(pids, key=lambda p: -bm25.get(q, {}).get(p, float("-inf"))) for q, pids in lists.items()},
              "teacher": {q: _by_score(*teacher[q]) for q in lists}}
    sample = list(lists)[:STUDENT_LISTS]
    orders["untrained student"] = _student_orders(config, ds_train, {q: lists[q] for q in sample},
                                                  cache / "student_lm_teacher_lists.json")
    every = list(lists)
    return {"lists": "the union of BM25's and MiniLM's top 10 of each train claim, as the LM teacher scored them",
            "score_spread": _spread(teacher, every), "without_gold": sum(not any(p in gold[q] for p in lists[q]) for q in every),
            "all": {k: _measure(orders[k], gold, every) for k in ("BM25", "teacher")},
            "sample": {k: _measure(orders[k], gold, sample) for k in orders}}
