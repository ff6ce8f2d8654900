"""Helpers the recipe and trainer tests share (imported as `helpers`; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import torch

from distillir.training.state import TrainerCallback


class KillAt(TrainerCallback):
    """Interrupt (KeyboardInterrupt, as Ctrl-C would) the training run whose output_dir ends with `where` once
    it has taken `step` optimizer steps."""

    def __init__(self, step: int, where: str = ""):
        self.step = step
        self.where = where

    def on_step_end(self, trainer):
        if trainer.state.global_step == self.step and Path(trainer.output_dir).as_posix().endswith(self.where):
            raise KeyboardInterrupt(f"killed {trainer.output_dir} at step {self.step}")


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved model directory's model.safetensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
