"""The shared Trainer: exact resumption, checkpoints, logging, accumulation, schedule, multi-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import KillAt, state_dicts_equal
from torch import nn

from distillir.errors import ConfigError
from distillir.losses.contrastive import ContrastiveLoss
from distillir.training.arguments import TrainConfig, TrainingArguments
from distillir.training.checkpoint import list_checkpoints, load_checkpoint
from distillir.training.state import TrainerCallback, epoch_permutation, linear_schedule, resolve_mixed_precision
from distillir.training.trainer import Trainer

PAIRS = [
    (f"question number {i} about topic {i % 5}", f"passage {i} explains topic {i % 5} in detail")
    for i in range(24)
]


# ------------------------------------------------------------------------------------------ helpers


class TinyDualEncoder(nn.Module):
    """The tiny random BERT (dropout on) as a shared-tower encoder: enough to exercise real training."""

    def __init__(self, bert_dir: str):
        super().__init__()
        from transformers import AutoTokenizer, BertModel

        self.bert = BertModel.from_pretrained(bert_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(bert_dir)
        self.loss = ContrastiveLoss()

    def embed(self, batch):
        out = self.bert(**batch).last_hidden_state
        return out[:, 0]


def bert_collate(tokenizer):
    def collate(pairs):
        q = tokenizer([p[0] for p in pairs], padding=True, return_tensors="pt")
        p = tokenizer([p[1] for p in pairs], padding=True, return_tensors="pt")
        return {"q": dict(q), "p": dict(p)}

    return collate


def bert_loss(model, batch):
    loss = model.loss(model.embed(batch["q"]), model.embed(batch["p"]))
    return {"loss": loss, "scaled": loss * 2}


def bert_trainer(bert_dir, out, callbacks=(), **overrides) -> Trainer:
    torch.manual_seed(0)
    model = TinyDualEncoder(bert_dir)
    settings = {"seed": 3, "learning_rate": 1e-3, "per_device_batch_size": 4, "max_steps": 6, "warmup_steps": 2,
                "save_steps": 2, "log_steps": 1}
    args = TrainingArguments(output_dir=out, **{**settings, **overrides})
    return Trainer(model, args, PAIRS, bert_collate(model.tokenizer), loss_fn=bert_loss, callbacks=callbacks)


class Toy(nn.Module):
    """Pointwise regression without dropout: per-example losses do not interact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x, y):
        return {"loss": ((self.head(self.emb(x)).squeeze(-1) - y) ** 2).mean()}


TOY_DATA = [(i, float(i % 7) / 7) for i in range(40)]


def toy_collate(rows):
    return {"x": torch.tensor([r[0] for r in rows]), "y": torch.tensor([r[1] for r in rows])}


def read_log(out):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ resume


def test_resume_reaches_bit_identical_weights(tiny_bert_dir, tmp_path):
    a = bert_trainer(tiny_bert_dir, tmp_path / "a")
    a.train()

    # Killed after step 5: step-2 and step-4 exist, step 5 is lost and must be redone identically
    # (same batch, same dropout masks: the checkpoint's RNG states are restored).
    with pytest.raises(KeyboardInterrupt):
        bert_trainer(tiny_bert_dir, tmp_path / "b", callbacks=[KillAt(5)]).train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [2, 4]
    torch.manual_seed(1234)  # whatever the global RNG holds now must not matter
    b = bert_trainer(tiny_bert_dir, tmp_path / "b", resume=True)
    summary = b.train()
    assert summary["resumed_from"].endswith("step-4") and summary["global_step"] == 6

    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The log of the resumed run is the uninterrupted one: redone steps replace the killed run's lines.
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]
    assert [(r["loss"], r["lr"]) for r in log_a] == [(r["loss"], r["lr"]) for r in log_b]

    # Resuming a finished run restores its final checkpoint and trains no further.
    again = bert_trainer(tiny_bert_dir, tmp_path / "b", resume=True)
    summary = again.train()
    assert summary["global_step"] == 6 and summary["resumed_from"].endswith("step-6")
    assert all(torch.equal(sa[k], again.model.state_dict()[k]) for k in sa)
    assert len(read_log(tmp_path / "b")) == 6


def test_resume_passes_over_a_damaged_newest_checkpoint(tiny_bert_dir, tmp_path, caplog):
    a = bert_trainer(tiny_bert_dir, tmp_path / "a")
    a.train()
    with pytest.raises(KeyboardInterrupt):
        bert_trainer(tiny_bert_dir, tmp_path / "b", callbacks=[KillAt(5)]).train()
    model = tmp_path / "b" / "checkpoints" / "step-4" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    with caplog.at_level("WARNING", logger="distillir"):
        summary = bert_trainer(tiny_bert_dir, tmp_path / "b", resume=True).train()
    assert summary["resumed_from"].endswith("step-2") and summary["global_step"] == 6
    assert "step-4 is unusable" in caplog.text and "resuming from step-2" in caplog.text
    b = bert_trainer(tiny_bert_dir, tmp_path / "b", resume=True)
    b.train()  # the finished run's step-6 restores
    assert state_dicts_equal(a.model, b.model)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_checkpoints_the_current_step_and_resumes_exactly(tiny_bert_dir, tmp_path, signum):
    """Ctrl-C (or SIGTERM) at step 3 with no periodic checkpoint due: the step finishes, a checkpoint is written
    at it, TrainingInterrupted names it, the handlers are restored, and resuming ends on the uninterrupted
    run's weights."""
    from distillir.training.interrupt import TrainingInterrupted

    class SignalAt(TrainerCallback):
        def on_step_end(self, trainer):
            if trainer.state.global_step == 3:
                os.kill(os.getpid(), signum)

    a = bert_trainer(tiny_bert_dir, tmp_path / "a", save_steps=0)
    a.train()
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as info:
        bert_trainer(tiny_bert_dir, tmp_path / "b", callbacks=[SignalAt()], save_steps=0).train()
    assert signal.getsignal(signum) is before
    assert info.value.step == 3 and info.value.checkpoint.name == "step-3" and info.value.checkpoint.is_dir()
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [3]
    b = bert_trainer(tiny_bert_dir, tmp_path / "b", resume=True, save_steps=0)
    assert b.train()["resumed_from"].endswith("step-3")
    assert state_dicts_equal(a.model, b.model)


# --------------------------------------------------------------------------------- checkpoints, log


def test_checkpoints_hold_everything_and_are_pruned(tmp_path):
    args = TrainingArguments(output_dir=tmp_path, max_steps=5, per_device_batch_size=8, save_steps=1,
                             save_total_limit=2, log_steps=2, learning_rate=0.1)
    trainer = Trainer(Toy(), args, TOY_DATA, toy_collate)
    trainer.train()
    found = list_checkpoints(tmp_path)
    assert [s for s, _ in found] == [4, 5]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp dirs left
    state = load_checkpoint(found[-1][1])
    assert state["state"]["global_step"] == 5
    assert state["state"]["epoch"] == 1 and state["state"]["step_in_epoch"] == 0  # 40 examples / 8 = 5 steps
    assert torch.equal(state["model"]["head.weight"], trainer.model.head.weight)
    assert len(state["rng"]) == 1 and "torch" in state["rng"][0]
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [2, 4, 5]  # every log_steps, and the last step
    assert {"loss", "lr", "grad_norm", "examples_per_s", "elapsed", "epoch"} <= set(log[0])
    assert log[0]["loss"] > log[-1]["loss"]


def test_summary_loss_is_the_logged_one(tmp_path):
    args = TrainingArguments(output_dir=tmp_path, max_steps=6, per_device_batch_size=8, save_steps=0, log_steps=4,
                             learning_rate=0.1)
    summary = Trainer(Toy(), args, TOY_DATA, toy_collate).train()
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == [4, 6] and summary["loss"] == log[-1]["loss"]  # the mean of steps 5-6
    assert summary["last_step_loss"] != summary["loss"]


def test_save_steps_zero_writes_no_checkpoint(tmp_path):
    args = TrainingArguments(output_dir=tmp_path, max_steps=2, per_device_batch_size=8, save_steps=0)
    Trainer(Toy(), args, TOY_DATA, toy_collate).train()
    assert list_checkpoints(tmp_path) == []


def test_callbacks_see_steps_epochs_and_can_stop(tmp_path):
    events = []

    class Recorder(TrainerCallback):
        def on_step_end(self, trainer):
            events.append(("step", trainer.state.global_step))
            if trainer.state.global_step == 9:
                trainer.state.should_stop = True

        def on_epoch_end(self, trainer):
            events.append(("epoch", trainer.state.epoch))

        def on_save(self, trainer, checkpoint_dir):
            (checkpoint_dir / "extra.txt").write_text(str(trainer.state.global_step))

    args = TrainingArguments(output_dir=tmp_path, num_epochs=3, per_device_batch_size=10, save_steps=3,
                             save_total_limit=None)
    summary = Trainer(Toy(), args, TOY_DATA, toy_collate, callbacks=[Recorder()]).train()
    assert summary["global_step"] == 9  # of 12 (3 epochs of 40 // 10 steps)
    assert events.index(("epoch", 0)) == events.index(("step", 4)) + 1
    assert events.index(("epoch", 1)) == events.index(("step", 8)) + 1 and ("epoch", 2) not in events
    assert (tmp_path / "checkpoints" / "step-6" / "extra.txt").read_text() == "6"
    assert (tmp_path / "checkpoints" / "step-9" / "extra.txt").read_text() == "9"


# ------------------------------------------------------------------------------ data order, math


def test_each_epoch_visits_every_example_once_in_a_seeded_order(tmp_path):
    seen = []

    def collate(rows):
        seen.extend(r[0] for r in rows)
        return toy_collate(rows)

    args = TrainingArguments(output_dir=tmp_path, num_epochs=2, per_device_batch_size=8, save_steps=0, seed=5)
    Trainer(Toy(), args, TOY_DATA, collate).train()
    assert sorted(seen[:40]) == list(range(40)) and sorted(seen[40:]) == list(range(40))
    assert seen[:40] == epoch_permutation(40, 5, 0).tolist()
    assert seen[:40] != seen[40:]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    def final_weights(batch, accumulation, out):
        args = TrainingArguments(output_dir=out, max_steps=3, per_device_batch_size=batch,
                                 gradient_accumulation_steps=accumulation, save_steps=0, learning_rate=0.05,
                                 max_grad_norm=None)
        trainer = Trainer(Toy(), args, TOY_DATA, toy_collate)
        trainer.train()
        return trainer.model.state_dict()

    big = final_weights(8, 1, tmp_path / "big")
    small = final_weights(4, 2, tmp_path / "small")
    assert all(torch.allclose(big[k], small[k], atol=1e-6) for k in big)


def test_linear_warmup_and_decay():
    f = linear_schedule(warmup_steps=3, total_steps=10)
    assert [round(f(s), 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(10) == 0.0 and f(9) == pytest.approx(1 / 7)


def test_param_groups_keep_their_own_learning_rates(tmp_path):
    model = Toy()
    groups = [{"params": model.emb, "lr": 1e-2}, {"params": model.head.parameters(), "lr": 1e-4}]
    seen = []

    class LRs(TrainerCallback):
        def on_step_end(self, trainer):
            seen.append([g["lr"] for g in trainer.optimizer.param_groups])

    args = TrainingArguments(output_dir=tmp_path, max_steps=3, per_device_batch_size=8, save_steps=0)
    Trainer(model, args, TOY_DATA, toy_collate, param_groups=groups, callbacks=[LRs()]).train()
    assert seen[0] == pytest.approx([1e-2 * 2 / 3, 1e-4 * 2 / 3])  # both decay linearly, each from its own lr


def test_loss_dict_parts_are_logged_and_subclass_loss_works(tmp_path):
    class Custom(Trainer):
        def compute_loss(self, batch):
            loss = self.model(**batch)["loss"]
            return {"loss": loss, "half": loss / 2}

    args = TrainingArguments(output_dir=tmp_path, max_steps=2, per_device_batch_size=8, save_steps=0, log_steps=1)
    Custom(Toy(), args, TOY_DATA, toy_collate).train()
    row = read_log(tmp_path)[0]
    assert row["half"] == pytest.approx(row["loss"] / 2, rel=1e-5)


def test_too_few_examples_for_a_batch_is_a_config_error(tmp_path):
    args = TrainingArguments(output_dir=tmp_path, max_steps=2, per_device_batch_size=64, save_steps=0)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        Trainer(Toy(), args, TOY_DATA, toy_collate).train()


# ---------------------------------------------------------------------------------- multi-process


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[3])
    from test_trainer import bert_trainer
    trainer = bert_trainer(sys.argv[1], sys.argv[2], max_steps=2, save_steps=2)
    trainer.train()
    rank = trainer.accelerator.process_index
    assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
    torch.save(trainer.model.state_dict(), f"{sys.argv[2]}/rank{rank}.pt")
    """
)


@pytest.mark.slow
def test_torchrun_two_processes_keep_weights_in_sync(tiny_bert_dir, tmp_path):
    script = tmp_path / "train2.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), tiny_bert_dir, str(out), str(Path(__file__).parent)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    initial = TinyDualEncoder(tiny_bert_dir).state_dict()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert any(not torch.equal(r0[k], initial[k]) for k in r0)  # and they did train
    state = load_checkpoint(out / "checkpoints" / "step-2")
    assert len(state["rng"]) == 2 and state["state"]["num_processes"] == 2
    print(f"torchrun test took {time.perf_counter() - start:.1f}s")


def test_max_grad_norm_must_be_positive_or_null():
    assert TrainConfig(max_grad_norm=None).max_grad_norm is None
    for bad in (0.0, -1.0):  # -1 would flip every gradient in clip_grad_norm_; 0 would silently not clip
        with pytest.raises(ConfigError, match="max_grad_norm must be positive"):
            TrainConfig(max_grad_norm=bad)


@pytest.mark.parametrize("native", [True, False])
def test_native_mixed_precision_follows_the_cpu(monkeypatch, native):
    from distillir.utils import dist

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dist, "cpu_native_bf16", lambda: native)
    assert resolve_mixed_precision("native") == ("bf16" if native else "no")
    assert resolve_mixed_precision("auto") == "no"  # auto keeps a CPU in float32 whatever it has
    assert resolve_mixed_precision("bf16") == "bf16"
