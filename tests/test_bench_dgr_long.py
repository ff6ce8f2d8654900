"""bench/dgr_long.py's snapshots: the trainable parameters saved at the chosen steps, read back into a student."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from dgr_long import Snapshots, load_snapshot, snapshot_path


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)  # a frozen layer stays out of the snapshot
    return model


def test_snapshots_save_trainable_parameters_at_their_steps_only(tmp_path):
    model = _model(0)
    trainer = SimpleNamespace(model=model, is_main_process=True, state=SimpleNamespace(global_step=0))
    callback = Snapshots(tmp_path, steps=(2,))
    for step in (1, 2, 3):
        trainer.state.global_step = step
        if step == 2:
            at_two = model[1].weight.detach().clone()
        if step == 3:
            with torch.no_grad():
                model[1].weight.add_(1.0)  # after the snapshot: must not reach it
        callback.on_step_end(trainer)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["step-2.safetensors"]

    student = SimpleNamespace(seq2seq=_model(1))
    frozen_before = student.seq2seq[0].weight.clone()
    load_snapshot(student, snapshot_path(tmp_path, 2))
    assert torch.equal(student.seq2seq[1].weight, at_two)
    assert torch.equal(student.seq2seq[1].bias, model[1].bias)
    assert torch.equal(student.seq2seq[0].weight, frozen_before)  # not in the snapshot: left as loaded


def test_a_resumed_run_keeps_the_snapshot_it_already_wrote(tmp_path):
    trainer = SimpleNamespace(model=_model(0), is_main_process=True, state=SimpleNamespace(global_step=2))
    Snapshots(tmp_path, steps=(2,)).on_step_end(trainer)
    first = snapshot_path(tmp_path, 2).read_bytes()
    with torch.no_grad():
        trainer.model[1].weight.mul_(2.0)
    Snapshots(tmp_path, steps=(2,)).on_step_end(trainer)
    assert snapshot_path(tmp_path, 2).read_bytes() == first


def test_a_snapshot_of_another_model_is_refused(tmp_path):
    trainer = SimpleNamespace(model=_model(0), is_main_process=True, state=SimpleNamespace(global_step=2))
    Snapshots(tmp_path, steps=(2,)).on_step_end(trainer)
    other = SimpleNamespace(seq2seq=nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(SystemExit, match="parameters the student does not have"):
        load_snapshot(other, snapshot_path(tmp_path, 2))
