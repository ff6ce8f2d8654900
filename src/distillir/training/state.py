"""Where a training run is (`TrainerState`), the hooks into its loop (`TrainerCallback`), and the process
and schedule facts the loop is built on: Accelerate's process state, mixed precision, data order, LR schedule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from distillir.utils.dist import process_state
from distillir.utils.io import atomic_write

if TYPE_CHECKING:  # annotations only: the Trainer imports this module
    from distillir.training.trainer import Trainer


@dataclass
class TrainerState:
    """Where training is. Saved in every checkpoint as trainer_state.json."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps already taken in `epoch`
    max_steps: int = 0
    steps_per_epoch: int = 0
    elapsed: float = 0.0  # seconds spent training, summed over resumed runs
    num_examples: int = 0
    global_batch_size: int = 0
    num_processes: int = 1
    last_loss: float | None = None
    should_stop: bool = False  # a callback may set it to end training after the current step


class TrainerCallback:
    """Hooks into the loop; override the ones you need. Every hook runs on every process."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None:
        """After each optimizer step (trainer.state.global_step is the step just taken)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the last step of an epoch (trainer.state.epoch is the epoch just finished)."""

    def on_save(self, trainer: Trainer, checkpoint_dir: Path) -> None:
        """While a checkpoint is being written (main process only): add files to `checkpoint_dir`;
        they are published atomically with the rest of the checkpoint."""

    def on_resume(self, trainer: Trainer, checkpoint_dir: Path) -> None:
        """After the trainer restored `checkpoint_dir`: read back what `on_save` wrote."""

    def on_train_end(self, trainer: Trainer) -> None: ...


def resolve_mixed_precision(value: str) -> str:
    """'auto' becomes bf16 on a CUDA GPU that supports it, else 'no'; 'native' also picks bf16 on a CPU that has
    it natively (avx512_bf16 / AMX) and 'no' on one that would emulate it."""
    if value not in ("auto", "native"):
        return value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    from distillir.utils.dist import cpu_native_bf16

    return "bf16" if value == "native" and cpu_native_bf16() else "no"


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch`: depends on nothing but (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: rising linearly to 1 over the warmup, then falling linearly to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)  # never exactly 0, so step 1 already moves the weights
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


LossOutput = Tensor | Mapping[str, Tensor]


def trim_log(path: Path, step: int) -> None:
    """On resume, drop the log lines (JSONL) of steps after the checkpoint: they are about to be redone."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    with atomic_write(path) as f:
        f.write("".join(f"{line}\n" for line in kept))


def split_loss(output: LossOutput) -> tuple[Tensor, dict[str, float]]:
    """(the loss to minimise, detached float values to log) from a tensor or a {"loss": ...} dict."""
    if isinstance(output, Tensor):
        return output, {"loss": float(output.detach())}
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        parts = {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in output.items()}
        return output["loss"], parts
    raise TypeError(f"compute_loss must return a tensor or a dict with a 'loss' tensor, got {type(output).__name__}")


__all__ = ["LossOutput", "TrainerCallback", "TrainerState", "epoch_permutation", "linear_schedule", "process_state",
           "resolve_mixed_precision", "split_loss", "trim_log"]
