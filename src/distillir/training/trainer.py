"""The training loop every recipe shares, on Hugging Face Accelerate.

A recipe supplies a model, a list of training examples, a `collate_fn` that turns a list of examples into
a batch, and the loss: override `Trainer.compute_loss(batch)` or pass `loss_fn(model, batch)`. Everything
else is here: AdamW with linear warmup and decay, gradient accumulation, clipping, mixed precision,
progress bar, `log.jsonl`, checkpoints and exact resumption.

Data order is a function of (seed, epoch) alone: epoch e visits the examples in the permutation drawn from
a generator seeded with (seed, e), and optimizer step s of that epoch takes the s-th slice of it. So a
checkpoint only needs (epoch, step in epoch) to continue, and together with the saved model, optimizer,
scheduler and RNG states a resumed run reaches bit-identical weights to one that was never stopped.

Multi-process: launch with `torchrun --nproc_per_node N` (on CPU Accelerate uses gloo). Every process
takes its own micro-batch of each global batch; `compute_loss` may call any method of the model
(`self.model.encode_query(...)`): it runs inside the forward of a wrapper that DistributedDataParallel
wraps, so gradients are synchronised whichever methods it calls.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distillir.errors import ConfigError
from distillir.training import checkpoint as ckpt
from distillir.training.arguments import TrainingArguments
from distillir.training.clipping import clip_gradients
from distillir.training.dropout import set_attention_dropout
from distillir.training.interrupt import StopOnSignal, TrainingInterrupted
from distillir.training.state import (
    LossOutput,
    TrainerCallback,
    TrainerState,
    epoch_permutation,
    linear_schedule,
    resolve_mixed_precision,
    split_loss,
    trim_log,
)
from distillir.utils.dist import _has_accelerator
from distillir.utils.io import append_jsonl
from distillir.utils.log import get_logger
from distillir.utils.memory import keep_freed_memory

logger = get_logger(__name__)

LOG_FILE = "log.jsonl"


class _LossForward(nn.Module):
    """Runs `compute_loss` as this module's forward, so DDP's gradient hooks see every parameter it uses."""

    def __init__(self, model: nn.Module, compute_loss: Callable[[Any], LossOutput]):
        super().__init__()
        self.model = model
        self._compute_loss = compute_loss

    def forward(self, batch: Any) -> LossOutput:
        return self._compute_loss(batch)


class Trainer:
    """Train `model` on `train_examples`. Override `compute_loss` (or pass `loss_fn`); call `train()`.

    Args:
        model: any nn.Module, possibly wrapping several (a retriever and a re-ranker).
        args: TrainingArguments.
        train_examples: a sequence; `collate_fn(list_of_examples)` makes a batch (tensors anywhere inside
            dicts/lists/BatchEncodings are moved to the device).
        loss_fn: `loss_fn(model, batch) -> Tensor | {"loss": Tensor, "part": Tensor, ...}`, used by the
            default `compute_loss`. Extra dict entries are logged.
        param_groups: AdamW parameter groups, e.g. `[{"params": retriever, "lr": 1e-5}, {"params": ranker,
            "lr": 1e-6}]` ("params" may be a module). Default: every trainable parameter, with no weight
            decay on biases and norm weights.
        callbacks: TrainerCallback instances.
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        train_examples: Sequence[Any],
        collate_fn: Callable[[list[Any]], Any],
        *,
        loss_fn: Callable[[nn.Module, Any], LossOutput] | None = None,
        param_groups: list[dict[str, Any]] | None = None,
        callbacks: Sequence[TrainerCallback] = (),
    ):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedDataParallelKwargs

        self.model = model
        self.args = args
        self.train_examples = train_examples
        self.collate_fn = collate_fn
        self.loss_fn = loss_fn
        self.param_groups = param_groups
        self.callbacks = list(callbacks)
        self.output_dir = Path(args.output_dir)
        self.state = TrainerState()
        keep_freed_memory()  # a step's large activations reuse the last step's pages (utils/memory.py)
        if args.attention_dropout is not None and not set_attention_dropout(model, args.attention_dropout):
            logger.warning("trainer.attention_dropout: %s has no attention module whose dropout could be set",
                           type(model).__name__)

        mixed_precision = resolve_mixed_precision(args.mixed_precision)
        state = AcceleratorState._shared_state
        if state and state.get("_mixed_precision") not in (None, mixed_precision):
            # Accelerate keeps one process-wide state and refuses a second Accelerator with another
            # precision; a process running several trainers (a recipe's phases, tests) needs that.
            AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            # Accelerate only runs several CPU processes (gloo, under torchrun) when told cpu=True.
            cpu=args.cpu or not _has_accelerator(),
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.ddp_find_unused_parameters)],
        )

    # ------------------------------------------------------------------------------- to override

    def compute_loss(self, batch: Any) -> LossOutput:
        """The loss of one micro-batch: a scalar, or a dict with "loss" (what is minimised) and parts to log."""
        if self.loss_fn is not None:
            return self.loss_fn(self.model, batch)
        output = self.model(**batch) if isinstance(batch, Mapping) else self.model(batch)
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", output)
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"{type(self.model).__name__} returned no loss; pass loss_fn= or override Trainer.compute_loss"
            )
        return loss

    # Hooks: by default they call the callbacks; a subclass may override and call super().
    def on_train_begin(self) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(self)

    def on_step_end(self) -> None:
        for cb in self.callbacks:
            cb.on_step_end(self)

    def on_epoch_end(self) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self)

    def on_save(self, checkpoint_dir: Path) -> None:
        for cb in self.callbacks:
            cb.on_save(self, checkpoint_dir)

    def on_resume(self, checkpoint_dir: Path) -> None:
        for cb in self.callbacks:
            cb.on_resume(self, checkpoint_dir)

    def on_train_end(self) -> None:
        for cb in self.callbacks:
            cb.on_train_end(self)

    # ------------------------------------------------------------------------------- properties

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def global_batch_size(self) -> int:
        a = self.args
        return a.per_device_batch_size * a.gradient_accumulation_steps * self.accelerator.num_processes

    # ------------------------------------------------------------------------------- setup

    def _plan(self) -> None:
        n = len(self.train_examples)
        steps_per_epoch = n // self.global_batch_size  # the incomplete last batch of an epoch is dropped
        if steps_per_epoch == 0:
            raise ConfigError(
                f"{n} training examples are fewer than one global batch ({self.args.per_device_batch_size} per "
                f"device x {self.args.gradient_accumulation_steps} accumulation x {self.accelerator.num_processes} "
                "processes); lower trainer.per_device_batch_size or add examples"
            )
        max_steps = self.args.max_steps or steps_per_epoch * self.args.num_epochs
        s = self.state
        s.steps_per_epoch, s.max_steps, s.num_examples = steps_per_epoch, max_steps, n
        s.global_batch_size, s.num_processes = self.global_batch_size, self.accelerator.num_processes

    def _optimizer_groups(self) -> list[dict[str, Any]]:
        if self.param_groups is not None:
            groups = []
            for group in self.param_groups:
                params = group["params"]
                if isinstance(params, nn.Module):
                    params = params.parameters()
                groups.append({**group, "params": [p for p in params if p.requires_grad]})
            return groups
        decay, no_decay = [], []
        for _, param in self.model.named_parameters():
            if param.requires_grad:
                # Biases and norm weights are vectors; decaying them only hurts (BERT's recipe).
                (no_decay if param.ndim < 2 else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def _warmup_steps(self) -> int:
        if self.args.warmup_steps > 0:
            return self.args.warmup_steps
        return math.ceil(self.args.warmup_ratio * self.state.max_steps)

    # ------------------------------------------------------------------------------- the loop

    def train(self) -> dict[str, Any]:
        """Run (or continue, with args.resume) training to max_steps. Returns a summary dict."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        args, acc = self.args, self.accelerator
        set_seed(args.seed)
        self._plan()
        resume_from, restored = ckpt.resume_point(self.output_dir, args.resume, acc.is_main_process, logger)
        if restored is not None:
            try:
                self.model.load_state_dict(restored["model"])
            except RuntimeError as e:
                raise ConfigError(f"{resume_from} does not fit this model (another model or config?): {e}") from None

        optimizer = torch.optim.AdamW(self._optimizer_groups(), lr=args.learning_rate, weight_decay=args.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(self._warmup_steps(), self.state.max_steps))
        wrapper = _LossForward(self.model, self.compute_loss)
        # The scheduler is stepped here, once per optimizer step: Accelerate's wrapper would step it once per
        # process, which is meant for sharded dataloaders, not for this loop's global step count.
        ddp_model, optimizer = acc.prepare(wrapper, optimizer)
        self.optimizer, self.scheduler = optimizer, scheduler
        if restored is not None:
            optimizer.load_state_dict(restored["optimizer"])
            scheduler.load_state_dict(restored["scheduler"])
            self._restore_state(restored, resume_from)
            del restored

        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            trim_log(self.output_dir / LOG_FILE, self.state.global_step)
        self.model.train()
        self.on_train_begin()
        bar = tqdm(total=self.state.max_steps, initial=self.state.global_step, desc="train",
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        with StopOnSignal() as stop:
            try:
                self._loop(ddp_model, optimizer, scheduler, bar, stop)
            finally:
                bar.close()
        self.on_train_end()
        acc.wait_for_everyone()
        # loss: the last log window's mean, as log.jsonl's last row says (a resumed, finished run: the last step's)
        return {"global_step": self.state.global_step, "epoch": self.state.epoch,
                "loss": getattr(self, "_logged_loss", self.state.last_loss), "last_step_loss": self.state.last_loss,
                "elapsed": round(self.state.elapsed, 3),
                "resumed_from": str(resume_from) if resume_from is not None else None}

    def _loop(self, ddp_model, optimizer, scheduler, bar, stop: StopOnSignal) -> None:
        """Optimizer steps to max_steps (or should_stop), logging and checkpointing; on a signal, a checkpoint
        at the current step and `TrainingInterrupted`."""
        args = self.args
        window: dict[str, float] = {}
        window_micro = window_examples = 0
        window_start = session_start = time.perf_counter()
        elapsed_before = self.state.elapsed
        while self.state.global_step < self.state.max_steps and not self.state.should_stop:
            parts, grad_norm = self._optimizer_step(ddp_model, optimizer, scheduler)
            for key, value in parts.items():
                window[key] = window.get(key, 0.0) + value
            window_micro += args.gradient_accumulation_steps
            window_examples += self.global_batch_size
            self.state.global_step += 1
            self.state.step_in_epoch += 1
            self.state.elapsed = elapsed_before + time.perf_counter() - session_start
            self.state.last_loss = parts["loss"] / args.gradient_accumulation_steps
            bar.update(1)
            self.on_step_end()
            if self.state.step_in_epoch == self.state.steps_per_epoch:
                self.on_epoch_end()
                self.state.epoch += 1
                self.state.step_in_epoch = 0
            last = self.state.global_step >= self.state.max_steps or self.state.should_stop
            if self.state.global_step % args.log_steps == 0 or last:
                seconds = time.perf_counter() - window_start
                row = self._log_row(window, window_micro, window_examples / max(seconds, 1e-9), grad_norm)
                bar.set_postfix(loss=f"{row['loss']:.4f}", ex_s=f"{row['examples_per_s']:.1f}")
                self._logged_loss = row["loss"]
                window, window_micro, window_examples = {}, 0, 0
                window_start = time.perf_counter()
            saved = None
            if args.save_steps and (self.state.global_step % args.save_steps == 0 or last):
                save_start = time.perf_counter()
                saved = self.save_checkpoint()
                window_start += time.perf_counter() - save_start  # examples/s measures training only
            if stop.signum is not None and not last:
                saved = saved or self.save_checkpoint()
                logger.warning("interrupted at step %d: checkpoint %s; resume the run to continue from it",
                               self.state.global_step, saved)
                raise TrainingInterrupted(stop.signum, self.state.global_step, saved)

    def _optimizer_step(self, ddp_model: nn.Module, optimizer, scheduler) -> tuple[dict[str, float], float | None]:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns summed loss parts."""
        acc, args = self.accelerator, self.args
        sums: dict[str, float] = {}
        for micro in range(args.gradient_accumulation_steps):
            batch = self._micro_batch(micro)
            with acc.accumulate(ddp_model):
                output = ddp_model(batch)
                loss, parts = split_loss(output)
                acc.backward(loss)  # divides by gradient_accumulation_steps
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
        # A step with no parts of its own (the default groups only split off weight decay) is one part: one clip.
        per_group = args.clip_per_group and self.param_groups is not None
        grad_norm = clip_gradients(acc, self.model, optimizer.param_groups, args.max_grad_norm, per_group)
        self._step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return sums, grad_norm

    def _micro_batch(self, micro: int) -> Any:
        from accelerate.utils import send_to_device

        a, s = self.args, self.state
        order = self._order_for(s.epoch)
        per_device = a.per_device_batch_size
        step_start = s.step_in_epoch * self.global_batch_size
        start = step_start + (micro * self.accelerator.num_processes + self.accelerator.process_index) * per_device
        examples = [self.train_examples[int(i)] for i in order[start:start + per_device]]
        return send_to_device(self.collate_fn(examples), self.device)

    def _order_for(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_order_cache", None)
        if cached is None or cached[0] != (epoch, len(self.train_examples)):
            self._order_cache = ((epoch, len(self.train_examples)), epoch_permutation(len(self.train_examples), self.args.seed, epoch))
        return self._order_cache[1]

    # ------------------------------------------------------------------------------- logging

    def _log_row(self, window: dict[str, float], micro_batches: int, examples_per_s: float, grad_norm) -> dict:
        keys = sorted(window)
        values = torch.tensor([window[k] / max(micro_batches, 1) for k in keys], dtype=torch.float64, device=self.device)
        values = self.accelerator.reduce(values, reduction="mean")  # same keys on every process
        row: dict[str, Any] = {"step": self.state.global_step, "epoch": self.state.epoch}
        row.update({k: round(float(v), 6) for k, v in zip(keys, values.tolist())})
        row["lr"] = self._step_lr
        if grad_norm is not None:
            row["grad_norm"] = round(grad_norm, 6)
        row["examples_per_s"] = round(examples_per_s, 2)
        row["elapsed"] = round(self.state.elapsed, 3)
        if self.is_main_process:
            append_jsonl(self.output_dir / LOG_FILE, row)
        return row

    # ------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> Path:
        """Write output_dir/checkpoints/step-N (atomically) and prune old ones. Call on every process."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        path = ckpt.checkpoint_path(self.output_dir, self.state.global_step)
        rng_states = gather_object([ckpt.capture_rng_state()]) if acc.num_processes > 1 else [ckpt.capture_rng_state()]
        if acc.is_main_process:
            ckpt.save_checkpoint(
                path,
                model_state=self.model.state_dict(),
                optimizer_state=self.optimizer.state_dict(),
                scheduler_state=self.scheduler.state_dict(),
                rng_states=rng_states,
                trainer_state=dataclasses.asdict(self.state),
                extra=self.on_save,
            )
            ckpt.prune_checkpoints(self.output_dir, self.args.save_total_limit)
        acc.wait_for_everyone()
        return path

    def _restore_state(self, restored: dict[str, Any], path: Path) -> None:
        saved = restored["state"]
        known = {f.name for f in dataclasses.fields(TrainerState)}
        previous = TrainerState(**{k: v for k, v in saved.items() if k in known})
        if previous.num_examples != self.state.num_examples or previous.global_batch_size != self.global_batch_size:
            logger.warning(
                "%s was saved with %d examples and global batch %d; now %d and %d: the data order will not "
                "match an uninterrupted run", path, previous.num_examples, previous.global_batch_size,
                self.state.num_examples, self.global_batch_size,
            )
        s = self.state
        s.global_step, s.epoch, s.step_in_epoch = previous.global_step, previous.epoch, previous.step_in_epoch
        s.elapsed, s.last_loss = previous.elapsed, previous.last_loss
        rng = restored["rng"]
        index = self.accelerator.process_index
        if len(rng) != self.accelerator.num_processes:
            logger.warning("%s holds RNG states of %d processes, this run has %d", path, len(rng),
                           self.accelerator.num_processes)
        ckpt.restore_rng_state(rng[index % len(rng)])
        self.on_resume(path)
        logger.info("resumed from %s (step %d of %d)", path, s.global_step, s.max_steps)
