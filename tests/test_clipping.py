"""Gradient clipping over all parameters at once vs each parameter group alone (`trainer.clip_per_group`)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distillir.training.arguments import TrainingArguments
from distillir.training.clipping import clip_gradients
from distillir.training.trainer import Trainer


def two_parts(grad_a: float, grad_b: float) -> tuple[nn.Module, list[dict]]:
    """Two 1x4 weight parts whose gradients have norms 2 * grad_a and 2 * grad_b (four equal entries each)."""
    model = nn.ModuleDict({"a": nn.Linear(4, 1, bias=False), "b": nn.Linear(4, 1, bias=False)})
    model.a.weight.grad = torch.full((1, 4), grad_a)
    model.b.weight.grad = torch.full((1, 4), grad_b)
    return model, [{"params": [model.a.weight]}, {"params": [model.b.weight]}]


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def test_one_clip_shrinks_the_small_part_with_the_large(accelerator):
    model, groups = two_parts(5.0, 0.25)  # norms 10 and 0.5
    total = clip_gradients(accelerator, model, groups, 1.0, per_group=False)
    assert total == pytest.approx(math.sqrt(100 + 0.25))
    assert model.b.weight.grad.norm().item() == pytest.approx(0.5 / math.sqrt(100.25), rel=1e-4)


def test_per_group_clips_each_part_alone(accelerator):
    model, groups = two_parts(5.0, 0.25)
    total = clip_gradients(accelerator, model, groups, 1.0, per_group=True)
    assert total == pytest.approx(math.sqrt(100 + 0.25))  # the logged norm is still the total before clipping
    assert model.a.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-4)
    assert model.b.weight.grad.norm().item() == pytest.approx(0.5)  # under the limit: untouched


def test_no_limit_no_clip(accelerator):
    model, groups = two_parts(5.0, 0.25)
    assert clip_gradients(accelerator, model, groups, None, per_group=True) is None
    assert model.a.weight.grad.norm().item() == pytest.approx(10.0)


def test_per_group_on_a_one_part_step_is_one_clip(tmp_path):
    """A step without parameter groups of its own trains exactly as with one global clip (no refusal mid-run)."""
    def trained(per_group: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(2, 1)
        args = TrainingArguments(output_dir=tmp_path / str(per_group), max_steps=2, per_device_batch_size=2,
                                 save_steps=0, learning_rate=0.5, max_grad_norm=0.1, clip_per_group=per_group)
        data = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])]
        Trainer(model, args, data, torch.stack, loss_fn=lambda m, x: (m(x) ** 2).mean() * 100).train()
        return model.weight.detach().clone()

    assert torch.equal(trained(True), trained(False))
