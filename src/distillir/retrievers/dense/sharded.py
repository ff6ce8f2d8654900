"""Corpus encoding split across the processes of a torchrun / `accelerate launch` job.

Each rank encodes every world-th of the length-sorted batches a single process would run (so each passage's
embedding comes from the same batch, the same shapes, as in one process), and writes its rows as a shard
(`KEY.shard-R-of-N.npz`, atomically). Rank 0 then writes the shards' manifest (rows, sizes, sha256), merges
them into the one embeddings file every process reads, and removes them. A killed job resumes: a rank whose
shard is already written does not encode again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distillir.utils.dist import process_state
from distillir.utils.io import atomic_write, file_digest
from distillir.utils.log import get_logger

logger = get_logger(__name__)


def shard_path(target: Path, rank: int, world: int) -> Path:
    return target.with_name(f"{target.stem}.shard-{rank}-of-{world}.npz")


def encode_corpus_sharded(encoder: Any, corpus: Any, target: Path, batch_size: int = 64, **options: Any) -> Tensor:
    """Embeddings of `corpus` (corpus order) encoded by all processes together, saved at `target` (.npy)."""
    state = process_state()
    rank, world = state.process_index, state.num_processes
    mine = shard_path(target, rank, world)
    if not target.is_file() and not mine.is_file():
        from distillir.retrievers.dense.inference import batch_plan, encode_features

        features = encoder._passage_features(corpus.titles, corpus.texts)  # tokenized once, for both uses
        rows_done = encode_features(encoder, encoder.passage_model, features, batch_size, shard=(rank, world),
                                    desc="passages", **options)
        rows = np.array(sorted(r for batch in batch_plan(features, batch_size, rank, world) for r in batch), dtype=np.int64)
        with atomic_write(mine, "wb") as f:
            np.savez(f, rows=rows, embeddings=rows_done[torch.from_numpy(rows)].numpy())
        logger.info("rank %d/%d: encoded %d of %d passages into %s", rank, world, len(rows), len(corpus), mine)
    state.wait_for_everyone()
    if state.is_main_process and not target.is_file():
        merge_shards(target, world, len(corpus))
    state.wait_for_everyone()
    return torch.from_numpy(np.ascontiguousarray(np.load(target), dtype=np.float32))


def merge_shards(target: Path, world: int, n: int) -> None:
    """Shards -> one (n, dim) array at `target`; their manifest (`KEY.shards.json`) records what was merged."""
    shards = [shard_path(target, r, world) for r in range(world)]
    manifest = {"world": world, "passages": n, "shards": {}}
    merged = None
    for rank, path in enumerate(shards):
        with np.load(path) as data:
            rows, emb = data["rows"], data["embeddings"]
        merged = np.zeros((n, emb.shape[1]), dtype=np.float32) if merged is None else merged
        merged[rows] = emb
        manifest["shards"][str(rank)] = {"rows": len(rows), **file_digest(path)}
    covered = sum(s["rows"] for s in manifest["shards"].values())
    if covered != n:
        raise RuntimeError(f"shards of {target.name} hold {covered} rows, the corpus {n}")
    with atomic_write(target, "wb") as f:
        np.save(f, merged)
    with atomic_write(target.with_name(f"{target.stem}.shards.json")) as f:
        json.dump(manifest, f, indent=2)
    for path in shards:
        path.unlink(missing_ok=True)
