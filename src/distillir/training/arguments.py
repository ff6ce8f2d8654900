"""How to optimise: the `trainer:` section of every recipe config (`TrainConfig`), and one resolved run of it
(`TrainingArguments`: plus where the run lives, its seed, and whether to resume). No torch here: configs load
without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distillir.errors import ConfigError

MixedPrecision = Literal["no", "bf16", "fp16", "auto", "native"]


@dataclass
class TrainConfig:
    """How to optimise: the `trainer:` section of every recipe config."""

    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0  # when > 0, wins over warmup_ratio
    warmup_ratio: float = 0.0
    max_steps: int | None = None  # optimizer steps; when set, wins over num_epochs
    num_epochs: int = 1
    per_device_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    # Clip each part a recipe trains with its own rate (its parameter group) to max_grad_norm on its own, so one
    # part's large gradient does not shrink another's step (Re2G: the query tower's T^2-scaled KD beside the ranker).
    # A recipe that trains one part clips it once, as without.
    clip_per_group: bool = False
    # auto: bf16 on a GPU that supports it, else no; native: also bf16 on a CPU with native bf16 (avx512_bf16/AMX)
    mixed_precision: MixedPrecision = "auto"
    # Dropout on the attention probabilities while training; null: the model's own (BERT: 0.1). 0 makes a
    # passage-length CPU step 1.3-3.4x faster (training/dropout.py; bench/train_step.py).
    attention_dropout: float | None = None
    save_steps: int = 500  # 0: no checkpoints at all
    save_total_limit: int | None = 2
    log_steps: int = 10
    # Multi-process only: tolerate parameters a step leaves without gradient (a BERT pooler the loss never
    # reads, the idle model of an AR2 phase). False saves a graph walk per step when every parameter is used.
    ddp_find_unused_parameters: bool = True
    # Multi-process only: the contrastive loss (DPR) takes every process's passages as negatives, list
    # distillation's in-batch negatives every process's lists (gathered with gradients), so N processes x
    # batch B train as one process with batch N x B.
    cross_device_negatives: bool = False
    cpu: bool = False  # train on CPU even when a GPU is there
    # The seed of training's own randomness (dropout, example order, fresh heads); null: the run's seed. Setting it
    # alone repeats a run on the same sampled data with other random draws, to measure run-to-run spread.
    training_seed: int | None = None

    def __post_init__(self) -> None:
        positive = ("per_device_batch_size", "gradient_accumulation_steps", "num_epochs", "log_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1 (or null to use num_epochs), got {self.max_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("warmup_steps", "save_steps", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be at least 1 (or null to keep all), got {self.save_total_limit}")
        check_max_grad_norm(self.max_grad_norm)
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"attention_dropout must be in [0, 1) (or null: the model's own), "
                              f"got {self.attention_dropout}")
        if self.training_seed is not None:
            check_seed("training_seed", self.training_seed, " (or null: the run's seed)")


def check_seed(name: str, seed: int, alternative: str = "") -> None:
    """A seed in numpy's range [0, 2**32), or a ConfigError naming the field."""
    if not 0 <= seed < 2**32:
        raise ConfigError(f"{name} must be in [0, 2**32){alternative}, got {seed}")


def check_max_grad_norm(max_grad_norm: float | None) -> None:
    # A negative norm would flip every gradient's sign in clip_grad_norm_; 0 would read as "no clipping".
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ConfigError(f"max_grad_norm must be positive (or null: no clipping), got {max_grad_norm}")


@dataclass(kw_only=True)
class TrainingArguments(TrainConfig):
    """A `TrainConfig` plus where the run lives, its seed, and whether to continue its last checkpoint."""

    output_dir: str | Path
    seed: int = 42
    resume: bool = False

    @classmethod
    def from_config(cls, config: TrainConfig, *, output_dir: str | Path, seed: int, resume: bool = False):
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)}
        seed = config.training_seed if config.training_seed is not None else seed
        return cls(**values, output_dir=output_dir, seed=seed, resume=resume)


__all__ = ["MixedPrecision", "TrainConfig", "TrainingArguments", "check_max_grad_norm", "check_seed"]
