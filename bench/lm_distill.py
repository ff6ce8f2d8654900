"""A causal LM, used as it is, distilled into MiniLM with no relevance labels (issue 13's table): fid-kd runs
with SmolLM2-135M-Instruct as the reader-teacher, each beside BM25, MiniLM's start and RRF(BM25, ·) on the
same evaluation questions, with a paired 95% interval of distilled minus start, and what the teacher knows on
its training lists (its first passage against BM25's and MiniLM's first, on the same lists).

    .venv/bin/python bench/lm_distill.py                  # every run (a finished run directory is read, not
                                                          # trained again; an unfinished one resumes)
    .venv/bin/python bench/lm_distill.py --only scifact_ql  # one run; the others are kept from the last result
    .venv/bin/python bench/lm_distill.py --render-only

Runs (each a shipped config plus the overrides in lm_distill_runs.py's RUNS, output under bench/work/runs/):
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
    WORK_DIR,
    command_line,
    environment,
    paired_difference,
    per_query,
    summary_row,
    write_results,
)
from lm_distill_report import markdown, summary
from lm_distill_runs import GEMMA512_SCORES, GOLD_SCORES, RUNS, TOP1_SCORES

REPO = Path(__file__).resolve().parents[1]
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


def window_stats(config, lists: Path) -> dict:
    """The distinct passages of the round-1 training lists in the reader LM's tokens (title and text, as its
    prompts put them): median, 90th percentile, and the share longer than 192 and than the run's window."""
    import statistics

    from transformers import AutoTokenizer

    from distillir.readers.causal_lm import resolve_lm
    from distillir.readers.fid_data import load_fid_examples

    source, gguf = resolve_lm(config.reader.model)
    tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    passages = {str(c["id"]): f"{c.get('title', '')}\n{c['text']}" if c.get("title") else c["text"]
                for ex in load_fid_examples(lists / "round-1" / "retrieve" / "train.jsonl")
                for c in ex["ctxs"][:config.n_passages]}
    n = sorted(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in passages.values())
    window = config.reader.passage_max_length
    return {"passages": len(n), "median": statistics.median(n), "p90": n[int(0.9 * (len(n) - 1))],
            "over_192": round(sum(v > 192 for v in n) / len(n), 3), "window": window,
            "over_window": round(sum(v > window for v in n) / len(n), 3)}


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
            "window": window_stats(config, lists) if spec.get("window_stats") else None,
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
