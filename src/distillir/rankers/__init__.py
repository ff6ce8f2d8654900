"""Re-rankers: score (query, passage) pairs and re-order the head of a run.

`Ranker` is the contract; `CrossEncoder` (torch + transformers, imported on first use) is the backend.
"""

from __future__ import annotations

from distillir.rankers.base import Passage, Ranker

__all__ = ["CrossEncoder", "Passage", "Ranker"]


def __getattr__(name: str):
    # Keep `import distillir.rankers` free of torch until a cross-encoder is asked for.
    if name == "CrossEncoder":
        from distillir.rankers.cross_encoder import CrossEncoder

        return CrossEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
