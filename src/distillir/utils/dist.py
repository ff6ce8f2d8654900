"""The process facts every layer may ask (Accelerate's process state): how many processes run this job, which
one this is, and a barrier. Nothing here starts a process group that the launcher did not ask for."""

from __future__ import annotations

import functools


def _has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)  # torch >= 2.6 knows CUDA, MPS, XPU, ... in one place
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (avx512_bf16 or AMX). Without it bf16 autocast is emulated and
    measured 5-6x slower than float32 on the AVX2 CPUs here."""
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def process_state(cpu: bool = False):
    """Accelerate's process state, set up the way the Trainer sets it up (gloo on CPU under torchrun).

    Code that asks "am I the main process?" before a Trainer exists must use this: the first caller fixes
    the state for the whole process, and a plain `PartialState()` on a CPU machine under torchrun would
    settle on a single process.
    """
    from accelerate import PartialState  # accelerate's import costs ~1.7 s: only when asked

    return PartialState(cpu=cpu or not _has_accelerator())


def launched_processes() -> int:
    """How many processes the launcher started (torchrun's WORLD_SIZE), without building a process state."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def distributed_world() -> int:
    """Processes in the initialised torch.distributed group (1 when none is)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(local):
    """Every process's `local` rows, concatenated in rank order, with gradients flowing back to each rank's own
    rows: the backward sums what every process's loss puts on a row (an all-reduce, which every backend has,
    gloo included). Ranks may hold different numbers of rows. Returns (all rows, this rank's first row)."""
    import torch
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    width = max(sizes)
    padded = torch.nn.functional.pad(local, (0, 0, 0, width - local.shape[0]))
    gathered = _all_gather_with_grad().apply(padded)  # (world * width, dim)
    keep = torch.cat([torch.arange(width, device=local.device) < s for s in sizes])
    return gathered[keep], sum(sizes[:rank])


@functools.cache
def _all_gather_with_grad():
    """The autograd Function (built on first use: this module is imported without torch)."""
    import torch
    import torch.distributed as dist

    class AllGatherWithGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.contiguous())
            ctx.rows = x.shape[0]
            return torch.cat(parts)

        @staticmethod
        def backward(ctx, grad):
            grad = grad.contiguous().clone()
            dist.all_reduce(grad)  # every process's gradient on every row, summed
            start = dist.get_rank() * ctx.rows
            return grad[start : start + ctx.rows]

    return AllGatherWithGrad
