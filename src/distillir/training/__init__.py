"""Training foundation shared by every recipe: the Trainer, its arguments and checkpoints, and config loading.

    from distillir.training import Trainer, TrainingArguments, TrainerCallback, load_config

Names are served lazily (PEP 562): `distillir.training.config` needs no torch, and the CLI imports it
before it knows whether it will train anything.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Trainer": "trainer",
    "TrainingArguments": "arguments",
    "TrainConfig": "arguments",
    "TrainerCallback": "state",
    "TrainerState": "state",
    "load_config": "config",
    "config_from_dict": "config",
    "config_to_dict": "config",
    "save_config": "config",
    "latest_checkpoint": "checkpoint",
    "list_checkpoints": "checkpoint",
    "load_checkpoint": "checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
