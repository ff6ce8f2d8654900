"""A causal LM, used as it is, distilled into MiniLM with no relevance labels (issue 13's table): fid-kd runs
with SmolLM2-135M-Instruct as the reader-teacher, each beside BM25, MiniLM's start and RRF(BM25, ·) on the
same evaluation questions, with a paired 95% interval of distilled minus start, and what the teacher knows on
its training lists (its first passage against BM25's and MiniLM's first, on the same lists).

    .venv/bin/python bench/lm_distill.py                  # every run (a finished run directory is read, not
                                                          # trained again; an unfinished one resumes)
    .venv/bin/python bench/lm_distill.py --only scifact_ql  # one run; the others are kept from the last result
    .venv/bin/python bench/lm_distill.py --render-only

Runs (each a shipped config plus the overrides in RUNS, output under bench/work/runs/):
  squad_ql     squad-open, 1,000 seeded train questions, log p(question | passage): questions only
  squad_pdist  the same questions, log p(answer | passage, question): questions and answers
  squad_emdr2  squad_pdist's scores under EMDR² instead of KL (student only)
  squad_ranker the same questions, the answer-trained cross-encoder as the teacher (for comparison; needs
               bench/ranker_answers.py's ranker)
  scifact_ql   SciFact, all 809 train claims, log p(claim | abstract): claims only
  scifact_ql_3r  the same in three rounds, each over the previous round's retriever's lists
  scifact_ql_gemma  scifact_ql with Gemma-3-270M (base) as the LM; needs its GGUF (bench/lm_teacher.py's docstring)
  scifact_ql_gemma_2r  the same in two rounds
  scifact_ql_both  scifact_ql with both towers trained (bf16 where native, attention dropout off)
  scifact_gemma_both  scifact_ql_gemma's scores into both towers, the same way (student only)
  scifact_ql_gemma_512  scifact_ql_gemma with up to 512 tokens of each abstract read (192 in the others)
  scifact_gemma512_q200, _q400  scifact_ql_gemma_512's scores over 200 / 400 of the claims (student only)
  scifact_gold_lists  the labelled line: the train qrels as 0/1 scores over the same lists (labels)
  scifact_gemma512_top1  Gemma-512's first passage of each list as a 0/1 target (the gold targets' form)
  scifact_gemma512_confident, scifact_ql_confident  the 512-token Gemma's / SmolLM2's scores, the surest half of
               the lists only (teacher.keep_confident 0.5; student only)
  squad_ql_gemma  squad_ql with Gemma-3-270M as the LM
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    GEMMA,
    GEMMA_SETS,
    WORK_DIR,
    command_line,
    environment,
    paired_difference,
    per_query,
    summary_row,
    write_results,
)
from lm_distill_report import markdown, summary

REPO = Path(__file__).resolve().parents[1]
SQUAD = "configs/fid-kd-smollm2-squad-cpu.yaml"
BOTH_SETS = ["retriever.train_passages=true", "retriever.trainer.mixed_precision=native",
             "retriever.trainer.attention_dropout=0"]
SQUAD_SETS = ["max_train_queries=1000", "rounds=1", "retriever.trainer.max_steps=63", "eval.reader=false"]
GEMMA512_SCORES = WORK_DIR / "runs" / "fid-kd-gemma-scifact-512" / "round-1" / "teacher" / "scores.jsonl"
TOP1_SCORES = WORK_DIR / "runs" / "top1-lists-scifact" / "round-1" / "teacher" / "scores.jsonl"
GOLD_SCORES = WORK_DIR / "runs" / "gold-lists-scifact" / "round-1" / "teacher" / "scores.jsonl"
SMOLLM2_SCORES = WORK_DIR / "runs" / "fid-kd-smollm2-scifact" / "round-1" / "teacher" / "scores.jsonl"
RUNS = {
    "squad_ql": {"config": SQUAD, "dir": "fid-kd-smollm2-ql-1k",
                 "sets": [*SQUAD_SETS, "teacher.aggregation=question_likelihood"],
                 "system": "MiniLM distilled from SmolLM2 question likelihood (questions only)"},
    "squad_pdist": {"config": SQUAD, "dir": "fid-kd-smollm2-pdist-1k", "sets": [*SQUAD_SETS, "teacher.aggregation=pdist"],
                    "system": "MiniLM distilled from SmolLM2 pdist (questions + answers)"},
    # The pdist run's scores, as they are, under EMDR² instead of KL on z-scores (student only; no new scoring).
    # They are per-token means: for one answer per list, EMDR² on the sums with the teacher's log-probs divided
    # by the answer's token count.
    "squad_emdr2": {"config": SQUAD, "dir": "fid-kd-smollm2-pdist-1k-emdr2", "lists_dir": "fid-kd-smollm2-pdist-1k",
                    "sets": [*SQUAD_SETS, f"teacher_scores={WORK_DIR / 'runs' / 'fid-kd-smollm2-pdist-1k' / 'round-1' / 'teacher' / 'scores.jsonl'}",
                             "retriever.loss=emdr2", "teacher.normalize=none", "teacher.scale=1.0"],
                    "system": "MiniLM distilled from SmolLM2 pdist with EMDR² (questions + answers)",
                    "note": "EMDR² on the per-token mean log-likelihoods, raw (teacher.normalize none, scale 1)"},
    "squad_ranker": {"config": "configs/fid-kd-answers-squad-cpu.yaml", "dir": "fid-kd-ranker-1k",
                     "sets": ["max_train_queries=1000", "rounds=1", "teacher_scores=ranker",
                              f"teacher.ranker={WORK_DIR / 'runs' / 'ce-answers' / 'final'}",
                              "teacher.ranker_max_length=192", "retriever.trainer.max_steps=63"],
                     "system": "MiniLM distilled from the answer-trained cross-encoder",
                     "note": "not an LM: bench/ranker_answers.py's ranker (trained from QA pairs), for comparison; "
                             "its lists are the whole union (up to 20), not cut to 10"},
    "scifact_ql": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact", "sets": [],
                   "system": "MiniLM distilled from SmolLM2 claim likelihood (claims only)"},
    # Later rounds: the LM scores the previous round's retriever's lists (pairs scored before come from the cache).
    "scifact_ql_3r": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-3r",
                      "sets": ["rounds=3"], "system": "MiniLM distilled from SmolLM2 claim likelihood, 3 rounds (claims only)"},
    # A second, larger LM as the teacher (issue 13): Gemma-3-270M base (not instruction-tuned, so plain prompts,
    # no chat template), the same claims, lists, prompt and student. The GGUF is written by the gemma3 packages
    # (see bench/lm_teacher.py's docstring) to GEMMA.
    "scifact_ql_gemma": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact",
                         "sets": [*GEMMA_SETS],
                         "system": "MiniLM distilled from Gemma-3-270M claim likelihood (claims only)",
                         "needs": GEMMA},
    "scifact_ql_gemma_2r": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-2r",
                            "sets": [*GEMMA_SETS, "rounds=2"],
                            "system": "MiniLM distilled from Gemma-3-270M claim likelihood, 2 rounds (claims only)",
                            "needs": GEMMA},
    # Both towers (train_passages: the corpus re-embedded by the trained tower for evaluation): is the student's
    # passage side what limits it? bf16 where native and attention dropout off make a passage-length step about
    # 3.4x cheaper (bench/train_step.py); the first try, with neither, took 135-146 s a step.
    "scifact_ql_both": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-both",
                        "sets": BOTH_SETS, "versus": "scifact_ql",
                        "system": "MiniLM, both towers, distilled from SmolLM2 claim likelihood (claims only)"},
    # Gemma's scores as they are, into both towers (student only; no new scoring).
    "scifact_gemma_both": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-both",
                           "lists_dir": "fid-kd-gemma-scifact",
                           "sets": [f"teacher_scores={WORK_DIR / 'runs' / 'fid-kd-gemma-scifact' / 'round-1' / 'teacher' / 'scores.jsonl'}",
                                    *BOTH_SETS],
                           "versus": "scifact_ql_gemma",
                           "system": "MiniLM, both towers, distilled from Gemma-3-270M claim likelihood (claims only)",
                           "needs": WORK_DIR / "runs" / "fid-kd-gemma-scifact" / "round-1" / "teacher" / "scores.jsonl"},
    # Gemma reading up to 512 tokens of each abstract instead of 192: 88% of SciFact's abstracts run past 192 Gemma
    # tokens (median 324), so the 192 window hides most of the evidence a claim is written from.
    "scifact_ql_gemma_512": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-512",
                             "sets": [*GEMMA_SETS, "reader.passage_max_length=512"],
                             "versus": "scifact_ql_gemma", "versus_short": "192 tokens",
                             "versus_label": "the same teacher reading 192 tokens of each abstract, same lists and student",
                             "system": "MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens (claims only)",
                             "needs": GEMMA},
    # How many claims the student needs: scifact_ql_gemma_512's scores over its first N lists (a seeded sample of
    # the claims), the same 91 steps (so more passes over fewer lists).
    **{f"scifact_gemma512_q{n}": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": f"scale-gemma512-q{n}",
        "lists_dir": "fid-kd-gemma-scifact-512",
        "sets": [f"max_train_queries={n}", f"teacher_scores={GEMMA512_SCORES}", *GEMMA_SETS,
                 "reader.passage_max_length=512"],
        "versus": "scifact_ql_gemma_512", "versus_short": "809 claims",
        "versus_label": "the same teacher's scores over all 809 claims' lists, same steps",
        "system": f"MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens, {n} claims",
        "note": f"a seeded sample of {n} train claims, scifact_ql_gemma_512's scores of their lists",
        "needs": GEMMA512_SCORES} for n in (200, 400)},
    # The labelled line for this student path: the same 809 lists, each passage scored 1 if the train qrels call it
    # relevant, else 0 (lists with none are skipped as uniform): what a perfect teacher of these lists would give.
    "scifact_gold_lists": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gold-scifact",
                           "lists_dir": "gold-lists-scifact", "labels": True,
                           "sets": [f"teacher_scores={GOLD_SCORES}", *GEMMA_SETS, "reader.passage_max_length=512"],
                           "versus": "scifact_ql_gemma_512", "versus_short": "Gemma 512",
                           "versus_label": "Gemma's 512-token scores of the same lists, same student",
                           "system": "MiniLM taught the train qrels (gold) over the same lists (labels)",
                           "note": "labels: the train qrels as 0/1 scores over scifact_ql_gemma_512's lists",
                           "prepare": "gold", "needs": GEMMA512_SCORES},
    # The teacher's surest half of the lists only (teacher.keep_confident 0.5: the widest lead of its first passage
    # over its second), with the same steps: fewer lists, far more often right (student only; no new scoring).
    "scifact_gemma512_confident": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma-scifact-512-confident",
        "lists_dir": "fid-kd-gemma-scifact-512",
        "sets": [f"teacher_scores={GEMMA512_SCORES}", "teacher.keep_confident=0.5", *GEMMA_SETS,
                 "reader.passage_max_length=512"],
        "versus": "scifact_ql_gemma_512", "versus_short": "all lists",
        "versus_label": "the same teacher's scores over all the lists, same steps",
        "system": "MiniLM distilled from Gemma-3-270M claim likelihood over 512 abstract tokens, its surest half",
        "needs": GEMMA512_SCORES},
    "scifact_ql_confident": {
        "config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-smollm2-scifact-confident",
        "lists_dir": "fid-kd-smollm2-scifact",
        "sets": [f"teacher_scores={SMOLLM2_SCORES}", "teacher.keep_confident=0.5"],
        "versus": "scifact_ql", "versus_short": "all lists",
        "versus_label": "the same teacher's scores over all the lists, same steps",
        "system": "MiniLM distilled from SmolLM2 claim likelihood, its surest half of the lists (claims only)",
        "needs": SMOLLM2_SCORES},
    # Gemma's first passage of each list as a 0/1 target, the gold run's form with the teacher's knowledge (all 809
    # lists: choosing those with a relevant passage would read the labels): is it the targets' form or their truth?
    "scifact_gemma512_top1": {"config": "configs/fid-kd-smollm2-scifact-cpu.yaml", "dir": "fid-kd-gemma512-top1-scifact",
                              "lists_dir": "top1-lists-scifact",
                              "sets": [f"teacher_scores={TOP1_SCORES}", *GEMMA_SETS, "reader.passage_max_length=512"],
                              "versus": "scifact_gold_lists", "versus_short": "gold 0/1",
                              "versus_label": "the train qrels as 0/1 targets over the same lists (labels)",
                              "system": "MiniLM taught Gemma-3-270M's first passage of each list as a 0/1 target (claims only)",
                              "prepare": "top1", "needs": GEMMA512_SCORES},
    "squad_ql_gemma": {"config": SQUAD, "dir": "fid-kd-gemma-ql-1k",
                       "sets": [*SQUAD_SETS, "teacher.aggregation=question_likelihood", *GEMMA_SETS],
                       "system": "MiniLM distilled from Gemma-3-270M question likelihood (questions only)",
                       "needs": GEMMA},
}
# Reference rows evaluated here on the same dev questions, from runs made elsewhere (read when present): the
# answer-string teacher (the shipped config's run) and the same student path trained on gold passages (labels).
ANSWER_RUN = WORK_DIR / "runs" / "fid-kd-answers-squad-cpu"  # distillir train fid-kd --config configs/fid-kd-answers-squad-cpu.yaml
GOLD_MODEL = WORK_DIR / "distill_student" / "gold_combo_sharp_q20k" / "final"  # bench/distill_student.py's gold row
KEYS = {"squad-open": ("Top-1", "Top-5", "Top-20", "Top-100", "MRR@10"),
        "scifact": ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20", "R@100")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help=f"comma-separated runs to train, resume or read, of {', '.join(RUNS)} "
                   "(default: all); the others are kept from the last result")
    p.add_argument("--name", default="lm_distill")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


def load(spec: dict):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    out = WORK_DIR / "runs" / spec["dir"]
    recipe = get_recipe("fid-kd")
    config = load_config(recipe.Config, REPO / spec["config"],
                         [f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *spec["sets"]])
    return recipe, config, out


def derived_list_scores(kind: str) -> Path:
    """0/1 scores over scifact_ql_gemma_512's lists, with the lists beside them (so the teacher table reads them):
    "gold": 1 where SciFact's train qrels call a passage relevant (labels); "top1": 1 for Gemma's first passage
    of each list (no labels: the teacher's knowledge in the gold targets' form)."""
    import shutil

    from distillir.data.datasets import load_dataset
    from distillir.readers.fid_data import load_fid_examples
    from distillir.teachers.scores import TeacherScores, read_teacher_scores

    path = GOLD_SCORES if kind == "gold" else TOP1_SCORES
    if path.is_file():
        return path
    lists = GEMMA512_SCORES.parents[1] / "retrieve" / "train.jsonl"
    qrels = load_dataset("scifact", "train").qrels if kind == "gold" else {}
    gemma = read_teacher_scores(GEMMA512_SCORES) if kind == "top1" else {}
    out = TeacherScores("train qrels (labels)" if kind == "gold" else "Gemma-512's first passage")
    for ex in load_fid_examples(lists):
        qid, pids = str(ex["id"]), [str(c["id"]) for c in ex["ctxs"][:10]]
        if kind == "gold":
            values = [float(qrels.get(qid, {}).get(p, 0) > 0) for p in pids]
        else:
            by = dict(zip(*gemma[qid]))
            first = max(pids, key=lambda p: by[p])
            values = [float(p == first) for p in pids]
        out.add(qid, pids, values, query=ex["question"])
    (path.parents[1] / "retrieve").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(lists, path.parents[1] / "retrieve" / "train.jsonl")
    out.write(path)
    return path


def run_or_read(spec: dict) -> dict:
    if spec.get("prepare"):
        derived_list_scores(spec["prepare"])
    recipe, config, out = load(spec)
    path = out / "results.json"
    if path.is_file() and json.loads(path.read_text()).get("complete"):
        return json.loads(path.read_text())
    return recipe().run(config)



def teacher_knowledge(config, out: Path, k: int = 1, extra_orders: dict | None = None) -> dict:
    """On the round's training lists: how often the first passage is relevant (an answer string; SciFact: the
    train qrels, read here to measure only) under the teacher's order, BM25's and MiniLM's (each retriever's
    own ranks first, then the list's order), and the reciprocal rank of the first relevant one; over all lists
    with a relevant passage, and over those where BM25's first is not. `extra_orders`: more orders by name,
    {qid: the list's pids in that order} (e.g. a ranker's), tallied the same way."""
    from distillir.data.answers import AnswerMatcher
    from distillir.data.datasets import load_dataset
    from distillir.readers.fid_data import load_fid_examples
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.dense.retriever import DenseRetriever
    from distillir.teachers.scores import read_teacher_scores

    rd = out / f"round-{k}"
    lists = load_fid_examples(rd / "retrieve" / "train.jsonl")
    scores = read_teacher_scores(rd / "teacher" / "scores.jsonl")
    ds = load_dataset(config.dataset, config.train_split, max_queries=config.max_train_queries, seed=config.seed)
    lists = [ex for ex in lists if str(ex["id"]) in ds.queries.index_of]  # a run on a sample: its lists only
    if config.teacher.keep_confident is not None:  # a run on the teacher's surest lists: those lists only
        from distillir.teachers.scores import most_confident

        kept = set(most_confident(scores.subset([q for q in scores if q in ds.queries.index_of]),
                                  config.teacher.keep_confident))
        lists = [ex for ex in lists if str(ex["id"]) in kept]
    queries = ds.queries.subset([str(ex["id"]) for ex in lists])
    n = config.n_passages
    runs = {"BM25": bm25_cached(ds.corpus).search(queries, top_k=n),
            "MiniLM": DenseRetriever.build(ds.corpus, config.retriever.model, batch_size=config.encode.batch_size,
                                           dtype=config.encode.dtype, cache=True).search(queries, top_k=n)}
    matcher = AnswerMatcher(ds.corpus) if queries.has_answers else None
    judged = {q: {p for p, r in rels.items() if r > 0} for q, rels in (ds.qrels or {}).items()}
    extra_orders = extra_orders or {}
    orders = ("teacher", "BM25", "MiniLM", "list", *extra_orders)
    tallies = {part: {o: [0, 0.0] for o in orders} | {"lists": 0} for part in ("all", "bm25_first_wrong")}
    for ex in lists:
        qid = str(ex["id"])
        if qid not in scores:
            continue
        pids = [str(c["id"]) for c in ex["ctxs"]]
        rel = matcher.hits(ex["answers"], pids) if matcher else [p in judged.get(qid, set()) for p in pids]
        relevant = {p for p, r in zip(pids, rel) if r}
        if not relevant:
            continue
        spids, svalues = scores[qid]
        by = {"teacher": [p for _, p in sorted(zip(svalues, spids), key=lambda x: -x[0])], "list": pids}
        for name, run in runs.items():
            rank = {p: i for i, (p, _) in enumerate(run.get(qid, []))}
            by[name] = sorted(pids, key=lambda p: (rank.get(p, n), pids.index(p)))
        for name, order in extra_orders.items():
            rank = {p: i for i, p in enumerate(order.get(qid, []))}
            by[name] = sorted(pids, key=lambda p: (rank.get(p, n), pids.index(p)))
        parts = ["all"] + (["bm25_first_wrong"] if by["BM25"][0] not in relevant else [])
        for part in parts:
            tallies[part]["lists"] += 1
            for o in orders:
                tallies[part][o][0] += by[o][0] in relevant
                tallies[part][o][1] += 1.0 / (1 + next(i for i, p in enumerate(by[o]) if p in relevant))
    result = {}
    for part, t in tallies.items():
        m = max(t["lists"], 1)
        result[part] = {"lists": t["lists"], **{f"{o} hit@1": round(t[o][0] / m, 4) for o in orders},
                        **{f"{o} MRR": round(t[o][1] / m, 4) for o in orders}}
    return result


def reference_runs(config, ds, top_k: int) -> dict:
    """The answer-string teacher's distilled MiniLM and the gold-passage one, over the eval questions."""
    from distillir.data.run import Run
    from distillir.recipes.common.distill import build_student
    from distillir.retrievers.dense.retriever import DenseRetriever

    out = {}
    results = ANSWER_RUN / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        out[f"MiniLM distilled from answer strings ({r['train_questions']:,} questions, {len(r['rounds'])} rounds)"] = \
            Run.read_trec(ANSWER_RUN / f"round-{r['kept_round']}" / "eval" / "retriever.trec")
    if GOLD_MODEL.is_dir():
        student = build_student(config.retriever, GOLD_MODEL)
        dense = DenseRetriever.build(ds.corpus, student, batch_size=config.encode.batch_size, dtype=config.encode.dtype,
                                     cache=True)
        out["MiniLM query tower on gold passages (20,000 questions, same student path; labels)"] = dense.search(
            ds.queries, top_k=top_k)
    return out


def analyse(key: str, spec: dict, results: dict) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.data.run import Run
    from distillir.recipes.common.reading import evaluate_retrieval
    from distillir.retrievers.bm25 import bm25_cached
    from distillir.retrievers.hybrid import reciprocal_rank_fusion
    from distillir.teachers.scores import read_teacher_scores

    _, config, out = load(spec)
    ev = config.eval
    ds = load_dataset(ev.dataset or config.dataset, ev.split, max_queries=ev.max_queries, seed=config.seed)
    rd = out / f"round-{results['kept_round'] or 1}"
    start = Run.read_trec(out / "round-1" / "retrieve" / "eval.trec")
    distilled = Run.read_trec(rd / "eval" / "retriever.trec") if results["kept_round"] else start
    bm25 = bm25_cached(ds.corpus).search(ds.queries, top_k=ev.top_k)
    systems = {"BM25": bm25, "MiniLM (untrained)": start, spec["system"]: distilled,
               "RRF(BM25, MiniLM untrained)": reciprocal_rank_fusion([bm25, start], top_k=ev.top_k),
               f"RRF(BM25, {spec['system'].replace('MiniLM ', '', 1)})":
                   reciprocal_rank_fusion([bm25, distilled], top_k=ev.top_k)}
    for r in results["rounds"]:  # a run of several rounds: every round's retriever beside the kept one
        if len(results["rounds"]) > 1 and r["round"] != results["kept_round"]:
            systems[f"{spec['system']}: after round {r['round']}"] = Run.read_trec(
                out / f"round-{r['round']}" / "eval" / "retriever.trec")
    labelled = set()
    if config.dataset == "squad-open":
        systems.update(reference_runs(config, ds, ev.top_k))
        labelled = {name for name in systems if "gold" in name}
    if spec.get("labels"):
        labelled |= {name for name in systems if "gold" in name}
    metrics = {name: evaluate_retrieval(run, ds) for name, run in systems.items()}
    focus = ("Top-1", "Top-5") if config.dataset == "squad-open" else ("nDCG@10",)
    diffs = {m: paired_difference(per_query(start, ds, m), per_query(distilled, ds, m)) for m in focus}
    diffs_bm25 = {m: paired_difference(per_query(bm25, ds, m), per_query(distilled, ds, m)) for m in focus}
    # A run that changes only the student against the run it varies (same lists and scores): the query tower's.
    versus = RUNS[spec["versus"]] if spec.get("versus") else None
    diffs_versus = {}
    if versus and (WORK_DIR / "runs" / versus["dir"] / "results.json").is_file():
        other = json.loads((WORK_DIR / "runs" / versus["dir"] / "results.json").read_text())
        other_run = Run.read_trec(WORK_DIR / "runs" / versus["dir"] / f"round-{other['kept_round'] or 1}" / "eval" /
                                  "retriever.trec")
        diffs_versus = {m: paired_difference(per_query(other_run, ds, m), per_query(distilled, ds, m)) for m in focus}
    r1 = results["rounds"][0]
    lists = WORK_DIR / "runs" / spec.get("lists_dir", spec["dir"])  # a score-file run reads another run's lists
    teacher = r1.get("teacher") or {}
    scores = read_teacher_scores(lists / "round-1" / "teacher" / "scores.jsonl")
    pairs = sum(len(scores[q][0]) for q in scores)
    here = f"{REPO}/"  # paths in the sets and the teacher's name as the repository sees them
    agreement = {k: (r1.get("retriever") or {}).get(f"agreement_{k}") for k in ("before", "after")}
    return {"run": key, "dir": str(out.relative_to(REPO)), "config": spec["config"],
            "sets": [s.replace(here, "") for s in spec["sets"]], "agreement": agreement,
            "dataset": config.dataset, "split": ev.split, "train_questions": results["train_questions"],
            "eval_questions": results["eval_questions"],
            "aggregation": (results["aggregation"] or results["teacher_scores"]).replace(here, ""),
            "note": spec.get("note"),
            "lists_dir": spec.get("lists_dir"),
            "kept_round": results["kept_round"], "guard": r1.get("guard"), "system": spec["system"],
            "metrics": metrics, "labelled_systems": sorted(labelled), "paired_vs_start": diffs, "paired_vs_bm25": diffs_bm25,
            "versus": spec.get("versus"), "paired_vs_versus": diffs_versus,
            "versus_short": spec.get("versus_short", "query tower"),
            "versus_label": spec.get("versus_label", "the query tower alone, same lists and scores"),
            "teacher_knowledge": teacher_knowledge(config, lists), "wall_s": r1.get("wall_s"),
            "teacher_questions": teacher.get("questions"), "n_passages": config.n_passages, "pairs": pairs,
            "teacher_pairs_per_s": round(pairs / teacher["wall_s"], 2) if teacher.get("wall_s") else None,
            "student_steps": (r1.get("retriever") or {}).get("train", {}).get("global_step"),
            "environment": environment(), "rounds": [round_info(config, out, r, lists) for r in results["rounds"]]}


def round_info(config, out: Path, r: dict, lists: Path) -> dict:
    """One round's wall times, scored pairs and eval metric; later rounds also what the teacher knows on their lists."""
    from distillir.teachers.scores import read_teacher_scores

    def pairs(k: int) -> set:
        scores = read_teacher_scores(lists / f"round-{k}" / "teacher" / "scores.jsonl")
        return {(q, p) for q in scores for p in scores[q][0]}

    k = r["round"]
    these = pairs(k)
    earlier = set().union(*(pairs(j) for j in range(1, k)))  # scored before: the score cache's hits
    metric = ((r.get("index") or {}).get("metrics") or {})
    return {"round": k, "wall_s": r.get("wall_s"), "pairs": len(these), "new_pairs": len(these - earlier),
            "guard": r.get("guard"),
            "metrics": {m: metric.get(m) for m in ("nDCG@10", "Top-1", "Top-5") if metric.get(m) is not None},
            "teacher_knowledge": teacher_knowledge(config, lists, k) if k > 1 else None}


def main(argv=None) -> None:
    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if args.render_only:
        res = earlier
    else:
        # A run too long for these cores (`not_run`) runs only when named.
        only = set(filter(None, (args.only or "").split(","))) or {k for k, v in RUNS.items() if not v.get("not_run")}
        unknown = only - set(RUNS)
        if unknown:
            raise SystemExit(f"unknown runs {sorted(unknown)}; choose from {sorted(RUNS)}")
        res = {"benchmark": args.name, "command": command_line(), "environment": environment(),
               "runs": {k: v for k, v in (earlier.get("runs") or {}).items() if k in RUNS}}  # retired runs dropped
        for r in res["runs"].values():  # kept from the last result: measured where that result was
            r.setdefault("environment", earlier.get("environment"))
        for key, spec in RUNS.items():
            if key not in only:
                continue
            if spec.get("needs") and not Path(spec["needs"]).exists():
                message = f"{key}: {spec['needs']} is missing (see bench/lm_teacher.py's docstring for Gemma)"
                if args.only:
                    raise SystemExit(message)
                print(f"skipped {message}", file=sys.stderr)
                continue
            res["runs"][key] = analyse(key, spec, run_or_read(spec))
    res["not_run"] = {k: v["not_run"] for k, v in RUNS.items() if v.get("not_run") and k not in res["runs"]}
    res["summary"] = summary(res, KEYS, summary_row)
    write_results(args.name, res, markdown(res))


if __name__ == "__main__":
    main()
