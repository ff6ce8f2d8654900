"""Vector indexes over passage embeddings, inner-product metric.

`ExactIndex` (torch matmul + top-k) is the default: exact, deterministic, and fast enough up to a few
hundred thousand passages. `FaissIndex` offers flat, HNSW and IVF-PQ from faiss-cpu (optional) for larger
corpora. Both return `(scores, rows)` of shape (num queries, k), best first; a row of -1 marks a slot an
approximate index could not fill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from distillir.errors import ConfigError, InputError
from distillir.utils.io import atomic_write, write_json

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
FAISS_FILE = "faiss.index"
STORE_DTYPES = ("float32", "float16")


def _as_float_tensor(x: Any) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.dim() != 2:
        raise ValueError(f"embeddings must be a 2-d (n, dim) array, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float32).contiguous()


def save_embeddings(path: Path, embeddings: Tensor, dtype: str = "float32") -> None:
    if dtype not in STORE_DTYPES:
        raise ConfigError(f"embeddings can be stored as {STORE_DTYPES}, not {dtype!r}")
    with atomic_write(path, "wb") as f:
        np.save(f, embeddings.numpy().astype(dtype, copy=False))


def load_embeddings(path: Path) -> Tensor:
    if not path.is_file():
        raise InputError(path, "embeddings file missing from the index directory")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise InputError(path, f"corrupt or truncated embeddings ({e}); rebuild the index") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise InputError(path, f"corrupt embeddings: expected a 2-d float array, got shape {array.shape} of "
                               f"{array.dtype}; rebuild the index")
    return torch.from_numpy(array.astype(np.float32, copy=False))


def topk_rows(scores: Tensor, k: int, row_offset: int = 0) -> tuple[Tensor, Tensor]:
    """Top-k per query row with ties broken by passage row ascending, even across the k-th place.

    torch.topk picks arbitrarily among equal scores; queries whose k-th score is tied with a score left
    out are redone with a stable full sort (rare with real embeddings, so nearly free).
    """
    k = min(k, scores.shape[1])
    top_scores, top_rows = torch.topk(scores, k, dim=1)
    if k == 0:
        return top_scores, top_rows + row_offset
    kth = top_scores[:, -1:]
    tied_beyond = (scores >= kth).sum(dim=1) > k
    # Order within the top k: sort by row, then stably by descending score.
    by_row = torch.argsort(top_rows, dim=1)
    top_rows, top_scores = top_rows.gather(1, by_row), top_scores.gather(1, by_row)
    by_score = torch.argsort(-top_scores, dim=1, stable=True)
    top_rows, top_scores = top_rows.gather(1, by_score), top_scores.gather(1, by_score)
    for q in torch.nonzero(tied_beyond).flatten().tolist():
        order = torch.argsort(-scores[q], stable=True)[:k]  # stable: equal scores keep row order
        top_rows[q], top_scores[q] = order, scores[q, order]
    return top_scores, top_rows + row_offset


def _merge(scores: Tensor, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best k of candidate (score, row) pairs, ordered by (-score, row)."""
    by_row = torch.argsort(rows, dim=1)
    rows, scores = rows.gather(1, by_row), scores.gather(1, by_row)
    by_score = torch.argsort(-scores, dim=1, stable=True)[:, :k]
    return scores.gather(1, by_score), rows.gather(1, by_score)


class ExactIndex:
    """Brute-force inner product, chunked over queries and passages to bound memory.

    Scores for a (query chunk x passage chunk) block are at most `block_elements` floats (256 MB).
    """

    kind = "exact"

    def __init__(self, embeddings: Any = None, device: str | None = None, block_elements: int = 1 << 26):
        self.device = torch.device(device or "cpu")
        self.block_elements = block_elements
        self.embeddings = torch.empty((0, 0), dtype=torch.float32)
        self._on_device: Tensor | None = None  # a copy on the search device, when that is not the CPU
        if embeddings is not None:
            self.add(embeddings)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def add(self, embeddings: Any) -> None:
        """Append passages; their rows continue from the current size."""
        new = _as_float_tensor(embeddings)
        if len(self) and new.shape[1] != self.dim:
            raise ValueError(f"embedding dim {new.shape[1]} differs from the index's {self.dim}")
        self.embeddings = new if not len(self) else torch.cat([self.embeddings, new])
        self._on_device = None

    def _passages_on_device(self) -> Tensor:
        if self.device.type == "cpu":
            return self.embeddings
        if self._on_device is None:
            self._on_device = self.embeddings.to(self.device)
        return self._on_device

    def search(self, queries: Any, k: int) -> tuple[Tensor, Tensor]:
        """(scores, rows), each (num queries, min(k, size)), best first, ties by row ascending."""
        q_all = _as_float_tensor(queries)
        if len(self) and q_all.shape[1] != self.dim:
            raise ValueError(f"query dim {q_all.shape[1]} differs from the index's {self.dim}")
        k = min(k, len(self))
        passages = self._passages_on_device()
        q_chunk = max(1, min(len(q_all), 1024))
        p_chunk = max(k, self.block_elements // q_chunk)
        out_scores, out_rows = [], []
        with torch.inference_mode():
            for qs in range(0, len(q_all), q_chunk):
                q = q_all[qs : qs + q_chunk].to(self.device)
                cand_scores, cand_rows = [], []
                for ps in range(0, len(self), p_chunk):
                    s, r = topk_rows(q @ passages[ps : ps + p_chunk].T, k, ps)
                    cand_scores.append(s)
                    cand_rows.append(r)
                if len(cand_scores) > 1:
                    s, r = _merge(torch.cat(cand_scores, 1), torch.cat(cand_rows, 1), k)
                elif cand_scores:
                    s, r = cand_scores[0], cand_rows[0]
                else:
                    s, r = torch.empty((len(q), 0)), torch.empty((len(q), 0), dtype=torch.long)
                out_scores.append(s.cpu())
                out_rows.append(r.cpu())
        if not out_scores:
            return torch.empty((0, k)), torch.empty((0, k), dtype=torch.long)
        return torch.cat(out_scores).clone(), torch.cat(out_rows).clone()

    def save(self, directory: str | Path, embeddings_dtype: str = "float32") -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_embeddings(directory / EMBEDDINGS_FILE, self.embeddings, embeddings_dtype)
        write_json(
            directory / INDEX_FILE,
            {"kind": self.kind, "size": len(self), "dim": self.dim, "embeddings_dtype": embeddings_dtype},
        )

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> ExactIndex:
        return cls(load_embeddings(Path(directory) / EMBEDDINGS_FILE), device=device)


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "faiss is not installed; approximate indexes (flat, hnsw, ivfpq) need it: pip install faiss-cpu "
            "(or use the exact index)"
        ) from None
    return faiss


class FaissIndex:
    """A faiss index, inner-product metric. Kinds and their parameters:

    - "flat": exact search by faiss.
    - "hnsw": graph search; `M` (links per node, 32), `efConstruction` (200), `efSearch` (128; raise for
      recall, it is clamped to at least k).
    - "ivfpq": inverted lists of product-quantized vectors; `nlist` (clusters, ~sqrt(n)), `m` (sub-vectors,
      must divide dim; default dim/8), `nbits` (8), `nprobe` (16), `train_size` (vectors the quantizers
      are trained on, a seeded sample; default max(64 * nlist, 40 * 2^nbits), as faiss advises: training
      on every vector is slow and barely better). IVF-PQ alone has poor recall, so by default the best
      `rescore` (256) candidates are re-scored exactly from the float32 embeddings (0 turns it off).
    """

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "flat": {},
        "hnsw": {"M": 32, "efConstruction": 200, "efSearch": 128},
        "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 16, "rescore": 256, "train_size": None},
    }

    def __init__(self, kind: str = "hnsw", **params: Any):
        if kind not in self.DEFAULTS:
            raise ConfigError(f"faiss index kind must be one of {sorted(self.DEFAULTS)}, got {kind!r}")
        unknown = set(params) - set(self.DEFAULTS[kind])
        if unknown:
            raise ConfigError(
                f"unknown {kind} index parameter(s) {sorted(unknown)}; known: {sorted(self.DEFAULTS[kind]) or 'none'}"
            )
        self.kind = kind
        self.params = {**self.DEFAULTS[kind], **params}
        self.index: Any = None
        self.embeddings: Tensor | None = None  # kept only to re-score IVF-PQ candidates
        self.faiss = _import_faiss()

    def __len__(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _build(self, data: np.ndarray) -> Any:
        faiss, (n, d), p = self.faiss, data.shape, self.params
        if self.kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(p["efConstruction"])
            return index
        nlist = int(p["nlist"] or max(1, min(int(4 * np.sqrt(n)), n // 39)))
        # d/8 sub-vectors (48 bytes a vector for 384 dims): d/4 doubles memory and the build for ~1 point of recall
        m = int(p["m"] or next(c for c in (d // 8, d // 4, d // 2, d) if c and d % c == 0))
        if d % m:
            raise ConfigError(f"ivfpq: m={m} must divide the embedding dim {d}")
        if n < max(nlist, 2 ** int(p["nbits"])):
            raise ConfigError(
                f"ivfpq: {n} passages are too few to train nlist={nlist} clusters and "
                f"{2 ** int(p['nbits'])} PQ centroids; use hnsw or flat"
            )
        self.params.update(nlist=nlist, m=m)
        train_size = int(p["train_size"] or max(64 * nlist, 40 * 2 ** int(p["nbits"])))
        self.params.update(train_size=min(train_size, n))
        sample = data
        if train_size < n:
            sample = data[np.sort(np.random.default_rng(0).choice(n, size=train_size, replace=False))]
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, int(p["nbits"]), faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        return index

    def add(self, embeddings: Any) -> None:
        """Add passages (the first call also trains IVF-PQ on them)."""
        data = _as_float_tensor(embeddings)
        if self.index is None:
            self.index = self._build(data.numpy())
        self.index.add(data.numpy())
        if self.kind == "ivfpq" and self.params["rescore"]:
            self.embeddings = data if self.embeddings is None else torch.cat([self.embeddings, data])

    def search(self, queries: Any, k: int) -> tuple[Tensor, Tensor]:
        """(scores, rows), best first; rows of -1 (score -inf) where the index found fewer than k."""
        q = _as_float_tensor(queries)
        k = min(k, len(self))
        if k == 0 or len(q) == 0:
            return torch.empty((len(q), k)), torch.empty((len(q), k), dtype=torch.long)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(int(self.params["efSearch"]), k)
        if self.kind == "ivfpq":
            self.index.nprobe = int(self.params["nprobe"])
        fetch = max(k, int(self.params.get("rescore") or 0)) if self.embeddings is not None else k
        scores, rows = self.index.search(q.numpy(), min(fetch, len(self)))
        scores, rows = torch.from_numpy(scores), torch.from_numpy(rows).long()
        if self.embeddings is not None:
            # Exact inner products for the candidates; PQ's approximate ones only chose them.
            cand = self.embeddings[rows.clamp(min=0)]
            scores = torch.einsum("qd,qcd->qc", q, cand)
        missing = rows < 0
        scores = scores.masked_fill(missing, float("-inf"))
        # faiss orders equal scores arbitrarily: order by (-score, row) like ExactIndex, missing slots last.
        last = torch.iinfo(torch.long).max
        scores, rows = _merge(scores, rows.masked_fill(missing, last), k)
        return scores, rows.masked_fill(rows == last, -1)

    def save(self, directory: str | Path, embeddings_dtype: str = "float32") -> None:
        if self.index is None:
            raise ValueError("nothing to save: add embeddings first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_write(directory / FAISS_FILE, "wb") as f:
            f.write(self.faiss.serialize_index(self.index).tobytes())
        if self.embeddings is not None:
            save_embeddings(directory / EMBEDDINGS_FILE, self.embeddings, embeddings_dtype)
        write_json(
            directory / INDEX_FILE,
            {"kind": self.kind, "size": len(self), "params": self.params, "embeddings_dtype": embeddings_dtype},
        )

    @classmethod
    def load(cls, directory: str | Path) -> FaissIndex:
        directory = Path(directory)
        meta = read_index_meta(directory)
        index = cls(meta["kind"], **meta.get("params", {}))
        path = directory / FAISS_FILE
        if not path.is_file():
            raise InputError(path, "faiss index file missing from the index directory")
        index.index = index.faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        if index.kind == "ivfpq" and index.params["rescore"]:
            index.embeddings = load_embeddings(directory / EMBEDDINGS_FILE)
        return index


def read_index_meta(directory: Path) -> dict[str, Any]:
    path = directory / INDEX_FILE
    if not path.is_file():
        raise InputError(path, "missing: not a vector index directory")
    return json.loads(path.read_text(encoding="utf-8"))


def make_index(kind: str = "exact", params: dict[str, Any] | None = None, device: str | None = None):
    """An empty index by name: "exact", or a faiss kind ("flat", "hnsw", "ivfpq")."""
    if kind == "exact":
        if params:
            raise ConfigError(f"the exact index takes no parameters, got {sorted(params)}")
        return ExactIndex(device=device)
    return FaissIndex(kind, **(params or {}))


def load_vector_index(directory: str | Path, device: str | None = None):
    """Open a saved ExactIndex or FaissIndex, whichever `index.json` names."""
    directory = Path(directory)
    kind = read_index_meta(directory)["kind"]
    return ExactIndex.load(directory, device=device) if kind == "exact" else FaissIndex.load(directory)
