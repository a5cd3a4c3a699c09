"""The embedding shards as one memory-mapped matrix: rows by chunk id, blocks in order.

    DB/embeddings/00000.npy      float16 [rows, dim], row i = chunk first_id + i,
                                 L2-normalised (inner product = cosine)
    DB/embeddings/manifest.json  stage "embeddings": shard, file, rows, first_id, ...

Nothing here loads a shard whole: rows are gathered from `np.load(mmap_mode="r")`
views (the page cache does the rest) and scans go block by block.
"""

from __future__ import annotations

import functools
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest, require_files
from ..core.util import ranges


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency; numpy is the fallback
        return None
    return torch


@contextmanager
def calling_thread_only(torch):
    """torch's kernels run in the calling thread alone inside this block. torch's
    OpenMP thread count is per thread, so other threads keep theirs; a pooled copy
    right after faiss's OpenMP search (two thread pools on the same cores) was slower,
    and 10-100× slower on a busy machine. Other torch builds: left as they are."""
    n = torch.get_num_threads()
    local = _openmp(torch)
    if local and n != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if local and n != 1:
            torch.set_num_threads(n)


@functools.lru_cache(maxsize=None)
def _openmp(torch) -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def as_tensor(torch, a: np.ndarray):
    """A torch view of `a`, also of a read-only map (torch warns that it could write
    to it; retrodb only reads through these views)."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def widen(half: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`half` (float16 rows) converted into `out` (float32, same shape), in this thread:
    by torch's vectorised conversion (F16C, ~10× numpy 1.26's) when torch imports.
    Rows of another dtype are copied by numpy."""
    torch = _torch()
    if torch is None or half.dtype != np.float16:
        np.copyto(out, half)
        return out
    with calling_thread_only(torch):
        torch.from_numpy(out).copy_(as_tensor(torch, half))
    return out


class Scratch(threading.local):
    """Per-thread float16 and float32 row buffers, grown as needed and reused."""

    half = full = np.empty(0, dtype=np.float16)  # each thread starts with none

    def buffers(self, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
        size = rows * dim
        if self.half.size < size:
            self.half = np.empty(size, dtype=np.float16)
            self.full = np.empty(size, dtype=np.float32)
        return (self.half[:size].reshape(rows, dim), self.full[:size].reshape(rows, dim))


_SCRATCH = Scratch()


class EmbeddingStore:
    """Every embedding shard of a database, checked complete against the chunk shards."""

    def __init__(self, db):
        db = Database(db)
        self.db = db
        self.config = db.config()
        chunks = Manifest(db.chunks, "chunks")
        if not chunks.shards:
            raise RetrodbError(f"{db.root}: no chunks; run `retrodb chunk INPUT --db "
                               f"{db.root}` and `retrodb embed --db {db.root}` first")
        require_files(chunks, "rerun `retrodb chunk` with the same inputs to rebuild it "
                              "(`retrodb verify` lists what is affected)")
        m = Manifest(db.embeddings, "embeddings")
        self.manifest = m
        if not m.shards:
            raise RetrodbError(f"{db.embeddings}: no embeddings; run `retrodb embed "
                               f"--db {db.root}` first")
        missing, stale = [], []
        listing = m.listing()
        for c in chunks.shards:
            e = m.entry(c["shard"])
            if e is None or m.bad_files(e, "size", listing):
                missing.append(c["shard"])  # absent, or its file missing or truncated
            elif e.get("source_sha256") != c["sha256"] or e["rows"] != c["rows"] \
                    or e["first_id"] != c["first_id"]:
                stale.append(c["shard"])
        if missing or stale:
            parts = []
            if missing:
                parts.append(f"missing or truncated for chunk shard(s) {ranges(missing)}")
            if stale:
                parts.append(f"computed from an older version of chunk shard(s) "
                             f"{ranges(stale)}")
            raise RetrodbError(f"{db.embeddings}: embeddings are incomplete "
                               f"({len(missing) + len(stale)} of {len(chunks.shards)} "
                               f"shards: {'; '.join(parts)}); run `retrodb embed --db "
                               f"{db.root}` to finish them")
        self.entries = sorted((m.entry(c["shard"]) for c in chunks.shards),
                              key=lambda e: e["first_id"])
        self.first_ids = np.array([e["first_id"] for e in self.entries], dtype=np.int64)
        self.rows = np.array([e["rows"] for e in self.entries], dtype=np.int64)
        self.n = int(self.rows.sum())
        self._maps: dict[int, np.ndarray] = {}
        self._tensors: dict = {}  # torch views of the float16 maps, for `take`
        dims = {}
        for i, e in enumerate(self.entries):
            a = self.shard(i)
            if a.ndim != 2 or a.shape[0] != e["rows"]:
                raise RetrodbError(f"{m.path_of(e['file'])}: shape {a.shape}, manifest "
                                   f"says {e['rows']} rows; rerun `retrodb embed`")
            if a.dtype != np.float16:
                raise RetrodbError(f"{m.path_of(e['file'])}: {a.dtype} keys, retrodb "
                                   "stores float16; rerun `retrodb embed` to recompute it")
            dims.setdefault(a.shape[1], e["file"])
        spec = self.config.get("embedder") or {}
        if len(dims) > 1:
            desc = ", ".join(f"{d} ({f})" for d, f in dims.items())
            raise RetrodbError(f"{db.embeddings}: shards have different dimensions: "
                               f"{desc}, the embedder's is {spec.get('dim')}; rerun "
                               f"`retrodb embed --db {db.root}` to recompute the others")
        self.dim = next(iter(dims))
        if spec.get("dim") not in (None, self.dim):
            raise RetrodbError(f"{db.config_file}: embedder dim {spec['dim']}, the "
                               f"embedding shards have {self.dim}; rerun `retrodb embed`")

    @property
    def normalized(self) -> bool:
        """Whether retrodb.json says the keys are L2-normalised."""
        return bool((self.config.get("embedder") or {}).get("normalize"))

    def shard(self, i: int) -> np.ndarray:
        """The i-th shard (in id order), memory-mapped read-only."""
        a = self._maps.get(i)
        if a is None:
            loc = self.manifest.path_of(self.entries[i]["file"])
            try:
                a = np.load(loc.local(), mmap_mode="r" if self.entries[i]["rows"] else None,
                            allow_pickle=False)
            except (OSError, ValueError) as e:
                raise RetrodbError(f"{loc}: not a readable .npy key shard ({e}); rerun "
                                   "`retrodb embed` to recompute it") from None
            self._maps[i] = a
        return a

    def get(self, ids, scratch: bool = False) -> np.ndarray:
        """float32 rows of chunk ids (1-d array); ids must be in 0..n-1.

        With `scratch`, the rows are a view of this thread's reused buffer, valid until
        its next `get(..., scratch=True)`: no fresh pages to fault in per call."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        half, out = _SCRATCH.buffers(len(ids), self.dim) if scratch else (
            np.empty((len(ids), self.dim), dtype=np.float16),
            np.empty((len(ids), self.dim), dtype=np.float32))
        if not len(ids):
            return out
        if ids.min() < 0 or ids.max() >= self.n:
            bad = ids[(ids < 0) | (ids >= self.n)][0]
            raise RetrodbError(f"chunk id {int(bad)} is outside the embeddings "
                               f"(0..{self.n - 1})")
        ordered = bool((ids[1:] >= ids[:-1]).all())
        order = None if ordered else np.argsort(ids, kind="stable")  # sequential pages
        sids = ids if ordered else ids[order]
        shard = np.searchsorted(self.first_ids, sids, side="right") - 1
        bounds = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(sids)]):
            s = int(shard[lo])
            self.take(s, sids[lo:hi] - self.first_ids[s], half[lo:hi])
        if ordered:
            widen(half, out)
        else:
            out[order] = widen(half, np.empty_like(out))
        return out

    def take(self, i: int, rows: np.ndarray, out: np.ndarray) -> None:
        """Rows `rows` of shard i into `out` (float16), in this thread: by torch's
        index_select when torch imports (~1.6× numpy's take on random rows)."""
        torch = _torch()
        if torch is None:
            np.take(self.shard(i), rows, axis=0, out=out)
            return
        src = self._tensors.get(i)
        if src is None:
            src = self._tensors[i] = as_tensor(torch, self.shard(i))
        with calling_thread_only(torch):
            torch.index_select(src, 0, torch.from_numpy(rows), out=torch.from_numpy(out))

    def blocks(self, rows: int = 1 << 16) -> Iterator[tuple[int, np.ndarray]]:
        """(first chunk id, float32 block) over every row in id order."""
        for i, e in enumerate(self.entries):
            a = self.shard(i)
            for lo in range(0, len(a), rows):
                part = a[lo:lo + rows]
                yield e["first_id"] + lo, widen(part, np.empty(part.shape, np.float32))

    def sample_ids(self, size: int, seed: int) -> np.ndarray:
        """A uniform sample of `size` distinct chunk ids, sorted (O(size) memory)."""
        rng = np.random.default_rng(seed)
        if size >= self.n:
            return np.arange(self.n, dtype=np.int64)
        return np.sort(rng.choice(self.n, size=size, replace=False, shuffle=False))

