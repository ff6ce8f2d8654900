"""What one training step costs on this CPU, by precision and attention dropout: the two passage-length steps
of this library, a bi-encoder list-distillation step with both towers trained (16 questions x 8 passages, the
student path of every distilling recipe) and a cross-encoder step (4 lists x 8 pairs of <= 192 tokens, the
shipped CPU ranker config's), each through the Trainer as a user runs it.

Variants: float32 or bf16 autocast (only where the CPU has native bf16), with the model's attention dropout (0.1)
or `trainer.attention_dropout: 0`. Seconds per step are the median of the timed steps after one warm-up step,
variants interleaved over rounds so drifting load hits them alike. Speed-up is against float32 with the model's
dropout (the default on a CPU). Quality at dropout 0 is measured where it is trained: bench/distill_student.py
(`lean_q20k` vs `lean_q20k_dropout`).

    .venv/bin/python bench/train_step.py            # --steps 3 --rounds 2   --render-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_DIR, command_line, environment, machine_line, summary_row, write_results

SEED = 42
KEYS = ("s/step", "speed-up")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the JSON")
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    return args


def variants() -> list[tuple[str, str, float | None]]:
    from distillir.retrievers.dense.inference import default_encoding_dtype

    found = [("float32", "no", None), ("float32", "no", 0.0)]
    if default_encoding_dtype() == "bfloat16":  # bf16 autocast only where native (elsewhere 5-6x slower)
        found += [("bf16", "native", None), ("bf16", "native", 0.0)]
    return found


def step_clock():
    """A TrainerCallback recording when each optimizer step ends; `.step_seconds()` after the warm-up step."""
    from distillir.training.state import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = [time.perf_counter()]

        def on_step_end(self, trainer) -> None:
            self.ends.append(time.perf_counter())

        def step_seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.ends[1:], self.ends[2:])]  # the first step is warm-up

    return StepClock()


def lists(n_questions: int):
    from distillir.data.datasets import load_dataset
    from distillir.recipes.common.candidates import answer_teacher, candidate_run
    from distillir.recipes.common.distill import list_examples
    from distillir.recipes.common.reading import qa_queries

    train = load_dataset("squad-open", "train", max_queries=4 * n_questions, seed=SEED)
    questions = qa_queries(train.queries)
    scores = answer_teacher(candidate_run(["bm25"], 8, train.corpus, questions), questions, train.corpus)
    scores = scores.subset([q for q in scores if max(scores[q][1]) > 0 and len(scores[q][0]) == 8][:n_questions])
    return train, list_examples(scores, questions, train.corpus, normalize="zscore", scale=5.0)


def bi_encoder_step(train, examples, precision: str, dropout, steps: int, out: Path) -> list[float]:
    import dataclasses

    from distillir.recipes.common.config import EncodeConfig, StudentConfig
    from distillir.recipes.common.distill import train_student

    cfg = StudentConfig(train_passages=True, shared=False, passage_max_length=256, random_negatives=0,
                        agreement_sample=0)
    cfg.trainer = dataclasses.replace(cfg.trainer, max_steps=steps + 1, per_device_batch_size=16, save_steps=0,
                                      mixed_precision=precision, attention_dropout=dropout)
    clock = step_clock()
    train_student(cfg, examples, train.corpus, out, encode=EncodeConfig(), seed=SEED, resume=False,
                  callbacks=[clock])
    return clock.step_seconds()


def cross_encoder_step(train, examples, precision: str, dropout, steps: int, out: Path) -> list[float]:
    import torch

    from distillir.models import DEFAULT_ENCODER
    from distillir.rankers.cross_encoder import CrossEncoder
    from distillir.training.arguments import TrainingArguments
    from distillir.training.trainer import Trainer

    ranker = CrossEncoder.from_pretrained(DEFAULT_ENCODER, max_length=192, query_max_length=32)

    def collate(chunk):
        queries = [ex.query for ex in chunk for _ in ex.pids]
        found = [train.corpus.passage(pid) for ex in chunk for pid in ex.pids]
        batch = ranker.tokenize(queries, [p["title"] for p in found], [p["text"] for p in found])
        return {"pairs": batch, "teacher": torch.tensor([ex.scores for ex in chunk], dtype=torch.float32)}

    def loss(model, batch):
        logits = model.list_scores(batch["pairs"], batch["teacher"].shape[1])
        return torch.nn.functional.cross_entropy(logits.float(), torch.softmax(batch["teacher"], -1))

    args = TrainingArguments(output_dir=out, seed=SEED, max_steps=steps + 1, per_device_batch_size=4, save_steps=0,
                             learning_rate=5e-5, mixed_precision=precision, attention_dropout=dropout)
    clock = step_clock()
    Trainer(ranker, args, examples, collate, loss_fn=loss, callbacks=[clock]).train()
    return clock.step_seconds()


STEPS = {"bi-encoder": (bi_encoder_step, "bi-encoder list distillation, both towers, 16 x 8 passages of <= 256 tokens"),
         "cross-encoder": (cross_encoder_step, "cross-encoder, 4 lists x 8 pairs of <= 192 tokens")}


def markdown(res: dict) -> str:
    env = res["environment"]
    out = ["# What one training step costs: precision and attention dropout", "",
           (machine_line(env) + f". The model is all-MiniLM-L6-v2; real squad-open "
           f"training lists (BM25 top 8, answer-string targets); median of {res['settings']['steps']} timed steps x "
           f"{res['settings']['rounds']} interleaved rounds after a warm-up step per run."), "",
           "| step | precision | attention dropout | s/step | speed-up vs float32, dropout 0.1 |",
           "|---|---|---:|---:|---:|"]
    for row in res["rows"]:
        dropout = "0.1 (the model's)" if row["dropout"] is None else row["dropout"]
        out.append(f"| {STEPS[row['step']][1]} | {row['precision']} | {dropout} | {row['s/step']:.2f} | "
                   f"{row['speed-up']:.2f}x |")
    out += ["", "## Reading", "", res["reading"], "", "## Command", "", f"`{res['command']}`"]
    return "\n".join(out)


def reading(rows: list[dict]) -> str:
    parts = []
    for step in STEPS:
        mine = {(r["precision"], r["dropout"]): r for r in rows if r["step"] == step}
        best = max(mine.values(), key=lambda r: r["speed-up"])
        dropout_alone = mine[("float32", 0.0)]["speed-up"]
        text = (f"{step}: turning attention dropout off alone is {dropout_alone:.2f}x in float32; the fastest is "
                f"{best['precision']} with dropout {best['dropout'] if best['dropout'] is not None else 0.1} at "
                f"{best['speed-up']:.2f}x")
        if ("bf16", None) in mine:
            text += f" (bf16 with the model's dropout: {mine[('bf16', None)]['speed-up']:.2f}x)"
        parts.append(text + ".")
    return " ".join(parts) + (" Dropout over the attention probabilities draws one random number per attention "
                              "weight (batch x heads x length^2) and takes SDPA off its fused kernel, so on a CPU "
                              "it costs more than the attention it regularises.")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only:
        res = json.loads((RESULTS_DIR / "train_step.json").read_text())
        write_results("train_step", res, markdown(res))
        return
    train, examples = lists(16 * (args.steps + 1))
    times: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for step, (fn, _) in STEPS.items():
                for name, precision, dropout in variants():
                    seconds = fn(train, examples, precision, dropout, args.steps, Path(tmp) / f"{step}-{name}-{r}")
                    times.setdefault((step, name, dropout), []).extend(seconds)
                    print(f"[{time.strftime('%H:%M:%S')}] {step} {name} dropout {dropout}: "
                          f"{statistics.median(seconds):.2f} s/step", flush=True)
    rows = []
    for (step, name, dropout), seconds in times.items():
        base = statistics.median(times[(step, "float32", None)])
        rows.append({"step": step, "precision": name, "dropout": dropout, "s/step": round(statistics.median(seconds), 3),
                     "speed-up": round(base / statistics.median(seconds), 2), "seconds": [round(s, 3) for s in seconds]})
    res = {"environment": environment(), "settings": {"steps": args.steps, "rounds": args.rounds, "seed": SEED},
           "command": command_line(), "rows": rows, "reading": reading(rows)}
    res["summary"] = [summary_row(f"{STEPS[r['step']][1]}, {r['precision']}, attention dropout "
                                  f"{0.1 if r['dropout'] is None else r['dropout']}", "squad-open", "train", False, r,
                                  KEYS) for r in rows]
    write_results("train_step", res, markdown(res))


if __name__ == "__main__":
    main()
