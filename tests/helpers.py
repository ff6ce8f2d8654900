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


def fid_kd_config(bert: str, data, out, *extra: str):
    """FiD-KD on the toy QA data with the tiny BERT as reader and retriever, sized for tests."""
    from distillir.recipes.fid_kd import FiDKDConfig
    from distillir.training.config import load_config

    return load_config(FiDKDConfig, None, [
        # BM25 first, and every round used (the guard's tests set on_worse themselves): the stage mechanics.
        f"output_dir={out}", f"dataset={data}", "seed=5", "rounds=2", "n_passages=4", "max_train_queries=null",
        "start=bm25", "on_worse=continue",
        "reader.init=encoder-decoder", f"reader.model={bert}", "reader.passage_max_length=32",
        "reader.answer_max_length=4", "reader.batch_size=4",
        "reader.trainer={per_device_batch_size: 2, max_steps: 2, learning_rate: 1.0e-3, save_steps: 1, log_steps: 1}",
        f"retriever.model={bert}", "retriever.normalize=true", "retriever.query_max_length=16",
        "retriever.passage_max_length=32", "retriever.agreement_sample=8",
        "retriever.trainer={per_device_batch_size: 2, max_steps: 4, learning_rate: 1.0e-3, save_steps: 2, log_steps: 1}",
        "encode.batch_size=16", f"eval.dataset={data}", "eval.split=dev", "eval.max_queries=null", "eval.top_k=5",
        *extra,
    ])
