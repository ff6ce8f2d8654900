"""Scale-out: corpus encoding throughput with 1 process and with N processes (torchrun, the sharded path of
`encode_corpus_cached(..., all_processes=True)`), on the same passages, same model, same precision, and the
agreement of the embeddings with the one-process ones. On one machine the processes share its cores: with
2 cores, 1 process x 2 threads against 2 processes x 1 thread measures the sharding's overhead, not a gain;
on a machine with one GPU per process it is the speed-up.

    .venv/bin/python bench/scaling.py                 # 4,096 squad-open passages, ~3 min on 2 cores
    .venv/bin/python bench/scaling.py --passages 1024 --processes 2 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import WORK_DIR, command_line, environment, write_results

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=4096)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on CPUs with native bf16), float32, bfloat16")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--name", default="scaling")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args) -> None:
    """One measurement: encode the subset into a fresh directory; the main process reports."""
    import numpy as np
    import torch

    from distillir.data.datasets import load_dataset
    from distillir.retrievers.dense.encoder import BiEncoder
    from distillir.retrievers.dense.inference import default_encoding_dtype, encode_corpus_cached
    from distillir.utils.dist import launched_processes, process_state

    out = Path(args.worker)
    corpus = load_dataset("squad-open", "dev").corpus
    ids = sorted(random.Random(SEED).sample(corpus.ids, args.passages), key=corpus.index_of.get)
    corpus = corpus.subset(ids)
    dtype = default_encoding_dtype() if args.dtype == "auto" else args.dtype
    encoder = BiEncoder.from_pretrained(MODEL)
    encoder.encode_corpus(corpus.subset(ids[:64]), args.batch_size, dtype=dtype, show_progress=False)  # warm-up
    world = launched_processes()
    state = process_state() if world > 1 else None
    if state is not None:
        state.wait_for_everyone()
    start, cpu = time.perf_counter(), time.process_time()
    emb = encode_corpus_cached(encoder, corpus, args.batch_size, dtype=dtype, directory=out / "cache",
                               all_processes=world > 1, show_progress=False)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    if state is None or state.is_main_process:
        np.save(out / "embeddings.npy", emb.numpy())
        (out / "result.json").write_text(json.dumps({
            "processes": world, "threads_per_process": torch.get_num_threads(), "passages": len(corpus),
            "dtype": dtype, "seconds": round(seconds, 3), "main_process_cpu_s": round(cpu_s, 3),
            "passages_per_s": round(len(corpus) / seconds, 2)}))
    if state is not None:
        torch.distributed.destroy_process_group()


def measure(args, processes: int, scratch: Path) -> dict:
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    me = [str(Path(__file__).resolve()), "--worker", str(scratch), "--passages", str(args.passages), "--dtype",
          args.dtype, "--batch-size", str(args.batch_size)]
    cmd = [sys.executable, *me] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *me]
    wall = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    result = json.loads((scratch / "result.json").read_text())
    result["job_wall_s"] = round(time.perf_counter() - wall, 1)  # with process start and model loading
    return result


def markdown(res: dict) -> str:
    from distillir.evaluation.report import format_table

    env = res["environment"]
    rows = [{"setup": f"{r['processes']} process(es) x {r['threads_per_process']} thread(s)",
             "passages/s": r["passages_per_s"], "vs 1 process": r.get("speedup"), "encode s": r["seconds"],
             "job s (with start-up)": r["job_wall_s"], "max |diff| to 1 process": r.get("max_abs_diff")}
            for r in res["runs"]]
    return "\n".join([
        "# Scale-out: sharded corpus encoding", "",
        (f"Run {env['date_utc']} on {env['cpu_model']} ({env['logical_cpus']} logical CPUs; flags "
         f"{', '.join(env['cpu_flags'])}; load {env['loadavg_at_start'][0]:.1f} at start), torch {env.get('torch')}. "
         f"{res['settings']['passages']:,} squad-open passages (seeded sample), {MODEL.split('/')[-1]}, "
         f"{res['runs'][0]['dtype']}, batch {res['settings']['batch_size']}; each setup in fresh processes with an "
         "empty embedding cache, timed from after the model is loaded and warmed up to the merged embeddings."), "",
        format_table(rows), "",
        reading(res), "",
        "## Command", "", "```", res["command"], "```"])


def reading(res: dict) -> str:
    """What the table says, from its numbers."""
    one, *more = res["runs"]
    parts = []
    for r in more:
        parts.append(f"{r['processes']} processes x {r['threads_per_process']} thread(s) encode at {r['speedup']:.2f}x "
                     f"the rate of 1 process x {one['threads_per_process']} thread(s) on the same "
                     f"{res['environment']['logical_cpus']} logical CPUs")
        parts.append("their embeddings are bit-identical to the one-process ones" if r["max_abs_diff"] == 0 else
                     f"their embeddings differ from the one-process ones by at most {r['max_abs_diff']:.2e} "
                     "(float32 summation order under other thread counts)")
    cores = res["environment"]["logical_cpus"]
    return ("; ".join(parts) + f". The processes share the machine's {cores} cores, so this is not more compute: "
            "a ratio above 1 is one process per core using the cores better than one multi-threaded process, and "
            "what remains is the sharding's cost (shard files, merge, barriers). With one GPU per process each process "
            "encodes 1/N of the batches; that speed-up is not measured here (no GPU was lent).")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    path = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    if args.render_only:
        res = json.loads(path.read_text())
    else:
        import numpy as np

        res = {"benchmark": "scaling", "command": command_line(), "environment": environment(),
               "settings": {"passages": args.passages, "processes": args.processes, "dtype": args.dtype,
                            "batch_size": args.batch_size}, "runs": []}
        base = None
        for n in (1, args.processes):
            scratch = WORK_DIR / "scaling" / f"p{n}"
            run = measure(args, n, scratch)
            emb = np.load(scratch / "embeddings.npy")
            if base is None:
                base, base_rate = emb, run["passages_per_s"]
            run["speedup"] = round(run["passages_per_s"] / base_rate, 3)
            run["max_abs_diff"] = float(np.abs(emb - base).max())
            res["runs"].append(run)
            print(json.dumps(run), flush=True)
    res["summary"] = [{"system": f"{r['processes']} process(es) x {r['threads_per_process']} thread(s)",
                       "dataset": "squad-open", "split": "corpus", "labels_used": False,
                       "metrics": {"passages/s": r["passages_per_s"], "vs 1 process": r["speedup"]}}
                      for r in res["runs"]]
    write_results(args.name, res, markdown(res))


if __name__ == "__main__":
    main()
