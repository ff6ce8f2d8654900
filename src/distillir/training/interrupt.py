"""Ctrl-C and SIGTERM during training: finish the current step, write a checkpoint at it, then stop.

The first SIGINT or SIGTERM only sets a flag that the training loop reads at the next step boundary (a
checkpoint is written there and `TrainingInterrupted` raised, naming it); a second one interrupts at once, as
Python does by default. Handlers are installed only in the main thread, and restored on exit.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing `checkpoint` (resume the run to continue from it)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: " + (f"checkpoint written to {checkpoint}" if checkpoint
                                                        else "no checkpoint written"))


class StopOnSignal:
    """Context manager: `.signum` is the first SIGINT/SIGTERM received inside it, else None."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


__all__ = ["StopOnSignal", "TrainingInterrupted"]
