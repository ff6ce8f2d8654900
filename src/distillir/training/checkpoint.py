"""Training checkpoints: everything needed to continue a killed run exactly where it stopped.

A checkpoint is a directory `output_dir/checkpoints/step-N` holding

* `model.pt` - the model's state_dict (torch.save: tied/shared tensors survive, unlike safetensors),
* `optimizer.pt`, `scheduler.pt` - their state_dicts,
* `rng.pt` - the Python, NumPy, torch CPU and CUDA generator states of every process (dropout and any
  random choice made while collating depend on them, so restoring them makes resumed steps identical),
* `trainer_state.json` - step, epoch, position in the epoch and bookkeeping, readable by people,

plus whatever recipe callbacks add through `on_save`. It is written with `atomic_dir`, so a directory
named `step-N` is always complete; half-written ones keep a hidden temporary name and are ignored.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillir.errors import InputError
from distillir.utils.io import atomic_dir, clean_stale_temporaries_in, file_digests, verify_digests

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, directory), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (None keeps all); returns what was deleted."""
    if keep is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(len(found) - max(keep, 0), 0)]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states, as plain lists and tensors (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------------------- save / load


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    trainer_state: dict[str, Any],
    extra=None,
) -> Path:
    """Write one checkpoint atomically. `extra(tmp_dir)` may add files before the directory is published."""
    with atomic_dir(path) as tmp:
        torch.save(model_state, tmp / MODEL_FILE)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(scheduler_state, tmp / SCHEDULER_FILE)
        torch.save(rng_states, tmp / RNG_FILE)
        if extra is not None:
            extra(tmp)
        # Written last: list_checkpoints only counts directories that have it. It records every other
        # file's size and sha256, so a damaged checkpoint is found on load, not mid-training.
        state = {**trainer_state, "files": file_digests(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The parts of a checkpoint: model, optimizer, scheduler, rng (list per process), state."""
    path = Path(path)
    missing = [name for name in (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE, STATE_FILE)
               if not (path / name).is_file()]
    if missing:
        raise InputError(path, f"incomplete checkpoint: missing {', '.join(missing)}")
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path / STATE_FILE, f"invalid JSON: {e.msg}", line=e.lineno) from None
    if isinstance(state.get("files"), dict):  # checkpoints written before checksums have none
        verify_digests(path, state.pop("files"), what="checkpoint")
    return {"model": _load(path / MODEL_FILE), "optimizer": _load(path / OPTIMIZER_FILE),
            "scheduler": _load(path / SCHEDULER_FILE), "rng": _load(path / RNG_FILE), "state": state}


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, EOFError, ... for damage
        # Never pass torch's own advice on (retry with weights_only=False): that would run untrusted pickles.
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(path, f"corrupt or truncated checkpoint file ({first})") from None


def load_latest_intact(output_dir: str | Path, log=None) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, falling back past damaged ones (each reported through `log`);
    None when there is none. All damaged: the newest one's error."""
    found = list_checkpoints(output_dir)
    first_error = None
    for _, path in reversed(found):
        try:
            return path, load_checkpoint(path)
        except InputError as e:
            first_error = first_error or e
            if log is not None:
                log(f"checkpoint {path.name} is unusable ({e}); trying the one before it")
    if first_error is not None:
        raise first_error
    return None


def resume_point(output_dir: str | Path, resume: bool, main_process: bool, logger) -> tuple[Path | None, dict | None]:
    """Where a (resumed) training run starts: first what a killed run left half-written goes (on the main
    process), then, with `resume`, the newest intact checkpoint and its contents (None, None: step 0)."""
    if main_process:
        clean_stale_temporaries_in(Path(output_dir) / CHECKPOINTS)
    found = load_latest_intact(output_dir, log=logger.warning) if resume else None
    if found is None:
        if resume:
            logger.info("resume requested but %s has no checkpoint yet: starting from step 0", output_dir)
        return None, None
    if found[0] != latest_checkpoint(output_dir):
        logger.warning("resuming from %s, the newest intact checkpoint", found[0].name)
    return found

