"""DGR trained longer on BEIR SciFact (issue 17): one pass over the training examples instead of a third of one,
plain against DGR's RankNet under the teacher that knows (SmolLM2's claim likelihood), with nDCG@10 along the way.

configs/dgr-smollm2-scifact-cpu.yaml with `teacher.scores` = the LM teacher's file (bench/dgr_teachers.py, fid-kd's
teacher stage) and `student.trainer.max_steps` = STEPS, for two variants at equal steps and example order:

  ranknet: identifier NLL + indexing + the distilled RankNet over the teacher-ordered list (the paper's method);
  plain:   identifier NLL + indexing (student.rank_weight 0).

The trainable layers are saved at SNAPSHOTS steps (a callback; about 50 MB each) and each snapshot searches the
300 test claims like the final student (constrained beam search, the config's beams), so every variant has a curve.
Beside them: BM25, all-MiniLM-L6-v2 and the untrained LM (bench/dgr.py's cached baselines). Paired 95% intervals:
RankNet against plain at every step, and each variant's last step against its first snapshot.

    .venv/bin/python bench/dgr_long.py              # runs what is missing (finished parts are read; resumable)
    .venv/bin/python bench/dgr_long.py --partial    # render what is finished, run nothing
    .venv/bin/python bench/dgr_long.py --render-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, summary_row, write_results
from dgr import CONFIG, baselines, claim, per_query
from dgr_teachers import lm_teacher_file, lm_teacher_knowledge

from distillir.training.state import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
STEPS = 750  # ~ one pass over the 809 lists + 5,183 indexing examples at batch 8
SNAPSHOTS = (250, 500)
VARIANTS = {"ranknet": [], "plain": ["student.rank_weight=0"]}
LABELS = {"ranknet": "DGR: + distilled RankNet (LM teacher)", "plain": "plain generative retriever (identifier NLL + indexing)"}
KEYS = ("nDCG@10", "MRR@10", "R@1", "R@5", "R@20")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="dgr_long")
    p.add_argument("--partial", action="store_true", help="render from the finished parts only, run nothing")
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON")
    p.add_argument("--note", help="a line under the wall times (e.g. what else ran on the cores)")
    return p.parse_args(argv)


def run_dir(variant: str) -> Path:
    return WORK_DIR / "runs" / f"dgr-smollm2-lm-long-{variant}"


def snapshot_path(out: Path, step: int) -> Path:
    return out / "snapshots" / f"step-{step}.safetensors"


class Snapshots(TrainerCallback):
    """Saves the trainable parameters at the given steps (atomically: a killed save leaves
    no file, and a resumed run that passes the step again writes it)."""

    def __init__(self, out: Path, steps):
        self.out, self.steps = Path(out), set(steps)

    def on_step_end(self, trainer) -> None:
        from safetensors.torch import save_file

        step = trainer.state.global_step
        path = snapshot_path(self.out, step)
        if step not in self.steps or path.is_file() or not trainer.is_main_process:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {n: p.detach().float().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}
        tmp = path.with_suffix(".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)


def load(sets=()):
    from distillir.recipes import get_recipe
    from distillir.training.config import load_config

    recipe = get_recipe("dgr")
    return recipe, load_config(recipe.Config, REPO / CONFIG, [f"teacher.scores={lm_teacher_file(run=False)}",
                                                              f"student.trainer.max_steps={STEPS}", *sets])


def variant_run(variant: str) -> dict:
    out = run_dir(variant)
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    recipe, config = load([f"output_dir={out}", f"resume={str(out.is_dir()).lower()}", *VARIANTS[variant]])
    started = time.time()
    results = recipe().run(config, callbacks=[Snapshots(out, SNAPSHOTS)])
    (out / "bench_wall_s.json").write_text(json.dumps({"wall_s": round(time.time() - started, 1)}))
    return results


def load_snapshot(student, path: Path) -> None:
    """The final student with the trainable parameters of an earlier step."""
    from safetensors.torch import load_file

    _, unexpected = student.seq2seq.load_state_dict(load_file(str(path)), strict=False)
    if unexpected:
        raise SystemExit(f"{path}: parameters the student does not have: {', '.join(unexpected[:3])}")


def snapshot_search(variant: str, step: int, ds, config):
    """The test claims searched by the student at `step` (cached as eval/step-N.trec, with its wall time)."""
    from distillir.data.run import Run
    from distillir.readers.generative_lm import load_generative_retriever

    out = run_dir(variant)
    trec = out / "eval" / f"step-{step}.trec"
    if not trec.is_file():
        started = time.perf_counter()
        student = load_generative_retriever(out / "final", dtype=config.eval.dtype)
        load_snapshot(student, snapshot_path(out, step))
        student.search(ds.queries, top_k=config.eval.top_k, batch_size=config.eval.batch_size).write_trec(trec, tag=f"step-{step}")
        (out / "eval" / f"step-{step}.wall_s").write_text(f"{time.perf_counter() - started:.1f}")
    return Run.read_trec(trec)


def measure(args) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.data.run import Run
    from distillir.evaluation import evaluate_run

    if not args.partial:
        lm_teacher_file()  # runs fid-kd's teacher stage when its scores are missing
    done = {v: json.loads((run_dir(v) / "results.json").read_text()) for v in VARIANTS
            if (run_dir(v) / "results.json").is_file()}
    ds, train = load_dataset("scifact", "test"), load_dataset("scifact", "train")
    _, config = load()
    if not args.partial:  # every variant trains before any snapshot searches
        for variant in VARIANTS:
            if variant not in done:
                done[variant] = variant_run(variant)
        for variant in VARIANTS:
            for step in SNAPSHOTS:
                snapshot_search(variant, step, ds, config)
    if not done:
        raise SystemExit("no finished long DGR run to render")
    cache = WORK_DIR / "runs" / "dgr-smollm2-baselines"
    base = baselines(ds, cache)
    rows, nd = [], {}
    for system, name in (("BM25", "bm25"), ("all-MiniLM-L6-v2 (dense, untrained here)", "minilm"),
                         ("SmolLM2 untrained, same prompt and prefix tree", "untrained")):
        nd[name] = per_query(base["runs"][name], ds)
        rows.append({"system": system, "key": name, "step": None, "labels_used": False,
                     **evaluate_run(base["runs"][name], qrels=ds.qrels), "wall_s": base["wall_s"][name]})
    curves = {}
    for variant in done:
        out = run_dir(variant)
        for step in (*SNAPSHOTS, STEPS):
            trec = out / "eval" / ("dgr.trec" if step == STEPS else f"step-{step}.trec")
            if not trec.is_file():
                continue
            run, name = Run.read_trec(trec), f"{variant}@{step}"
            nd[name] = per_query(run, ds)
            wall = out / "eval" / f"step-{step}.wall_s"
            rows.append({"system": f"{LABELS[variant]}, step {step}", "key": name, "step": step, "labels_used": True,
                         **evaluate_run(run, qrels=ds.qrels),
                         "wall_s": float(wall.read_text()) if wall.is_file() else None})
            curves.setdefault(variant, []).append((step, rows[-1]["nDCG@10"]))
    claims = []
    for step in (*SNAPSHOTS, STEPS):
        if f"ranknet@{step}" in nd and f"plain@{step}" in nd:
            claims.append(claim(nd, f"plain@{step}", f"ranknet@{step}",
                                f"DGR (+ RankNet) beats plain at step {step}" + (" (the paper's claim)" if step == STEPS else "")))
    for variant in done:
        first, last = f"{variant}@{SNAPSHOTS[0]}", f"{variant}@{STEPS}"
        if first in nd and last in nd:
            claims.append(claim(nd, first, last, f"{LABELS[variant]}: step {STEPS} beats step {SNAPSHOTS[0]}"))
        if last in nd:
            claims.append(claim(nd, "untrained", last, f"{LABELS[variant]}, step {STEPS}, beats the untrained LM"))
    logs = {v: [{k: r.get(k) for k in ("step", "loss", "lr")}
                for r in map(json.loads, (run_dir(v) / "student" / "log.jsonl").read_text().splitlines())]
            for v in done if (run_dir(v) / "student" / "log.jsonl").is_file()}
    knows = lm_teacher_knowledge(config, train, lm_teacher_file(run=False), cache)
    return {"rows": rows, "curves": curves, "claims": claims, "teacher_knowledge": knows, "train_logs": logs,
            "train": {v: done[v]["stages"]["student"].get("train") or {} for v in done},
            "stages_wall_s": {v: {s: (done[v]["stages"].get(s) or {}).get("wall_s") for s in ("teacher", "student", "eval")}
                              for v in done},
            "runs_missing": [v for v in VARIANTS if v not in done], "queries": len(ds.queries)}


def main(argv=None) -> None:
    import dgr_long_report

    args = parse_args(argv)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        data = json.loads(path.read_text())
        write_results(args.name, data, dgr_long_report.render(data, args.name))
        return
    res = measure(args)
    _, config = load()
    s = config.student
    data = {"benchmark": "dgr_long", "environment": environment(), "command": command_line(("--note", "--partial", "--render-only")),
            "config": CONFIG, "student": {"steps": STEPS, "snapshots": list(SNAPSHOTS), "batch": s.trainer.per_device_batch_size,
                                          "train_layers": s.seq2seq.lm.train_layers, "learning_rate": s.trainer.learning_rate,
                                          "beams": config.eval.top_k},
            "note": args.note, **res}
    data["summary"] = [summary_row(r["system"], "scifact", "test", r["labels_used"], r, KEYS) for r in res["rows"]]
    write_results(args.name, data, dgr_long_report.render(data, args.name))


if __name__ == "__main__":
    main()
