"""O(1) random access to chunk tokens by chunk id: a memory-mapped token matrix.

Built once from the chunk shards by a shard stage (one output per chunk shard, so
appended shards are added alone and a crashed build resumes):

    DB/tokens/00000.npy     structured [rows]: tokens (uint16|uint32)[chunk_size],
                            doc_id int64, length int32; row i = chunk first_id + i
    DB/tokens/manifest.json

`TokenStore` memory-maps every shard; a look-up costs one binary search over shard
start ids plus the page reads. The neighbours stage and the trainer use it to fetch
a neighbour chunk and its continuation (the next chunk of the same document).
"""

from __future__ import annotations

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest, require_files
from ..exec.executors import ExecutorSpec
from ..exec.runner import run_stage
from ..exec.stage import Task, WorkerEnv

FEW_SHARDS = 16  # look-ups touching at most this many shards group ids by comparison


def token_dtype(token_dtype: str, chunk_size: int) -> np.dtype:
    """The structured row of a token shard."""
    return np.dtype([("tokens", token_dtype, (chunk_size,)), ("doc_id", "<i8"),
                     ("length", "<i4")])


class TokensStage:
    """The Stage (exec/stage.py) that builds DB/tokens from the chunk shards."""

    name, suffix, unit, label, ordered = "tokens", ".npy", "chunks", "token store", False

    def __init__(self, db: Database):
        self.db = db
        self.out = db.tokens
        cfg = db.config()
        self.dtype = token_dtype(cfg["token_dtype"], cfg["chunk_size"])

    def tasks(self, m: Manifest) -> list[Task]:
        chunks = Manifest(self.db.chunks, "chunks")
        return [Task(c["shard"], c, {"source_sha256": c["sha256"]}, c["rows"])
                for c in chunks.shards]

    def open_worker(self, env: WorkerEnv) -> "TokensStage":
        return self

    def run(self, task: Task, out) -> dict:
        """One chunk shard → one structured .npy (the worker is the stage itself)."""
        import pyarrow.parquet as pq

        src = task.source
        rows = src["rows"]
        if rows == 0:
            np.save(out.main(), np.zeros(0, dtype=self.dtype))
            return {"rows": 0}
        arr = np.lib.format.open_memmap(out.main(), mode="w+", dtype=self.dtype,
                                        shape=(rows,))
        cs = self.dtype["tokens"].shape[0]
        loc = self.db.chunks / src["file"]
        pf = pq.ParquetFile(loc.open())
        at = 0
        for b in pf.iter_batches(columns=["chunk_id", "doc_id", "tokens", "length"],
                                 batch_size=1 << 16):
            n = b.num_rows
            if b.column(0).to_numpy()[0] != src["first_id"] + at:
                raise RetrodbError(f"{loc}: chunk ids are not dense from {src['first_id']};"
                                   " rerun `retrodb chunk` to rebuild it")
            arr["tokens"][at:at + n] = b.column(2).flatten().to_numpy().reshape(n, cs)
            arr["doc_id"][at:at + n] = b.column(1).to_numpy()
            arr["length"][at:at + n] = b.column(3).to_numpy()
            at += n
        arr.flush()
        del arr
        return {"rows": rows}


def build_tokens(db, workers: int = 1) -> int:
    """Bring DB/tokens up to date with the chunk shards; return shards (re)built."""
    db = Database(db)
    src = Manifest(db.chunks, "chunks")
    if not src.shards:
        raise RetrodbError(f"{db.root}: no chunks; run `retrodb chunk INPUT --db "
                           f"{db.root}` first")
    require_files(src, "rerun `retrodb chunk` with the same inputs to rebuild it "
                       "(`retrodb verify` lists what is affected)")
    rep = run_stage(TokensStage(db), ExecutorSpec(workers=workers), check="size")
    return len(rep.entries)


class TokenStore:
    """Tokens, document ids and lengths of any chunk ids, memory-mapped."""

    def __init__(self, db, build: bool = True):
        db = Database(db)
        cfg = db.config()
        if build:
            build_tokens(db)
        m = Manifest(db.tokens, "tokens")
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.chunk_size: int = cfg["chunk_size"]
        self.dtype = np.dtype(cfg["token_dtype"])
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.maps = [np.load(m.path_of(e["file"]).local(), mmap_mode="r") if e["rows"]
                     else np.zeros(0, token_dtype(cfg["token_dtype"], cfg["chunk_size"]))
                     for e in shards]
        self.n_chunks = int(sum(e["rows"] for e in shards))
        self.row_dtype = token_dtype(cfg["token_dtype"], cfg["chunk_size"])

    def _check(self, flat: np.ndarray) -> None:
        bad = (flat < -1) | (flat >= self.n_chunks)
        if bad.any():
            raise RetrodbError(f"chunk id {int(flat[bad][0])} is outside the database "
                               f"(0..{self.n_chunks - 1})")

    def _gather(self, ids, field: str | None, fill) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        self._check(flat)
        dtype = self.row_dtype if field is None else self.row_dtype[field]
        out = np.zeros(len(flat), dtype=dtype)
        if field is None:
            out["doc_id"] = -1
        else:
            out[:] = fill
        for s, at in self._by_shard(flat):
            src = self.maps[s] if field is None else self.maps[s][field]
            out[at] = np.take(src, flat[at] - self.first_ids[s], axis=0)
        return out.reshape(ids.shape)

    def _by_shard(self, flat: np.ndarray):
        """(shard, positions in `flat` of its ids) for every shard `flat` touches; ids
        -1 in none. A few shards: one comparison pass each; many: one sort (a pass per
        shard would cost ids × shards). Boolean-mask gathers were ~4× slower."""
        shard = np.searchsorted(self.first_ids, flat, side="right") - 1
        shard[flat < 0] = -1
        counts = np.bincount(shard + 1, minlength=len(self.maps) + 1)[1:]
        present = np.flatnonzero(counts)
        if len(present) <= FEW_SHARDS:
            for s in present:
                yield int(s), np.flatnonzero(shard == s)
            return
        order = np.argsort(shard, kind="stable")[len(flat) - counts.sum():]  # -1s first
        ends = np.cumsum(counts)
        for s in present:
            yield int(s), order[ends[s] - counts[s]:ends[s]]

    def rows(self, ids) -> np.ndarray:
        """Structured rows for `ids` (any shape); id -1 gives an all-zero row."""
        return self._gather(ids, None, None)

    def tokens(self, ids) -> np.ndarray:
        """(..., chunk_size) token ids; zeros for id -1."""
        return self.rows(ids)["tokens"]

    def doc_ids(self, ids) -> np.ndarray:
        """Document ids of chunk ids (any shape); -1 for id -1. Reads only that field,
        not the tokens (the filters call it for every candidate)."""
        return self._gather(ids, "doc_id", -1)

    def continuation_ids(self, ids) -> np.ndarray:
        """c + 1 where it is the next chunk of c's document, else -1."""
        ids = np.asarray(ids, dtype=np.int64)
        nxt = np.where((ids >= 0) & (ids + 1 < self.n_chunks), ids + 1, -1)
        same = (self.doc_ids(nxt) == self.doc_ids(ids)) & (nxt >= 0)
        return np.where(same, nxt, -1)

    def neighbour_blocks(self, ids) -> np.ndarray:
        """(..., 2 × chunk_size): each chunk followed by its continuation (or padding).

        This is the paper's neighbour [N, F]: the retrieved chunk and the next chunk
        of its document; id -1 (no neighbour) gives all padding.
        """
        ids = np.asarray(ids, dtype=np.int64)
        return np.concatenate([self.tokens(ids), self.tokens(self.continuation_ids(ids))],
                              axis=-1)
