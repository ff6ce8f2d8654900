"""Gradient-norm clipping over all trained parameters at once, or over each optimizer parameter group alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def clip_gradients(accelerator, model, groups: Sequence[dict[str, Any]], max_norm: float | None,
                   per_group: bool) -> float | None:
    """Clip to `max_norm` and return the total gradient norm before clipping (None when not clipping).

    `per_group` clips each parameter group to `max_norm` on its own. A joint model whose parts get gradients of
    different sizes (Re2G: the re-ranker's marginal likelihood beside the query tower's alpha T^2 KL) then keeps
    each part's step: under one global clip the larger gradient scales the smaller one down with it.
    """
    if not max_norm:
        return None
    if not per_group:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return float(norm) if norm is not None else None
    norms = [accelerator.clip_grad_norm_(group["params"], max_norm) for group in groups if group["params"]]
    norms = [float(n) for n in norms if n is not None]
    return math.sqrt(sum(n * n for n in norms)) if norms else None


__all__ = ["clip_gradients"]
