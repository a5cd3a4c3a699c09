"""O(1) random access to chunk tokens by chunk id: a memory-mapped token matrix.

Built once from the chunk shards, through the shared runner (one output per chunk
shard, so appended shards are added alone and a crashed build resumes):

    DB/tokens/00000.npy     structured [rows]: tokens (uint16|uint32)[chunk_size],
                            doc_id int64, length int32; row i = chunk first_id + i
    DB/tokens/manifest.json

`TokenStore` memory-maps every shard; a look-up costs one binary search over shard
start ids plus the page reads. The neighbours stage and the trainer use it to fetch
a neighbour chunk and its continuation (the next chunk of the same document).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .db import Database
from .errors import RetrodbError
from .executor import local_executor
from .runner import (Manifest, ShardTask, pending_tasks, require_files, run_shard_stage,
                     stage_lock)


def _dtype(token_dtype: str, chunk_size: int) -> np.dtype:
    return np.dtype([("tokens", token_dtype, (chunk_size,)), ("doc_id", "<i8"),
                     ("length", "<i4")])


class _TokensShard:
    """The shard function: one chunk shard → one structured .npy (picklable)."""

    def __init__(self, chunks_dir: Path, dtype: np.dtype):
        self.chunks_dir = chunks_dir
        self.dtype = dtype

    def __call__(self, task: ShardTask, tmp: Path) -> dict:
        import pyarrow.parquet as pq

        rows = task.source["rows"]
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(rows,))
        cs = self.dtype["tokens"].shape[0]
        pf = pq.ParquetFile(self.chunks_dir / task.source["file"])
        at = 0
        for b in pf.iter_batches(columns=["chunk_id", "doc_id", "tokens", "length"],
                                 batch_size=1 << 16):
            n = b.num_rows
            ids = b.column(0).to_numpy()
            if ids[0] != task.source["first_id"] + at:
                raise RetrodbError(f"{pf.metadata}: chunk ids not dense")  # pragma: no cover
            flat = b.column(2).flatten().to_numpy()
            out["tokens"][at:at + n] = flat.reshape(n, cs)
            out["doc_id"][at:at + n] = b.column(1).to_numpy()
            out["length"][at:at + n] = b.column(3).to_numpy()
            at += n
        out.flush()
        del out
        return {"rows": rows}


def build_tokens(db_path: str | Path, workers: int = 1) -> int:
    """Bring DB/tokens up to date with the chunk shards; return shards (re)built."""
    db = Database(db_path)
    cfg = db.config()
    src = Manifest(db.chunks_dir, "chunks")
    if not src.shards:
        raise RetrodbError(f"{db.root}: no chunks; run `retrodb chunk INPUT --db "
                           f"{db.root}` first")
    require_files(src, "restore it, or rebuild the database from its inputs (`retrodb "
                       "verify` lists what is affected)")
    out_dir = db.root / "tokens"
    with stage_lock(out_dir, "tokens"):
        dst = Manifest(out_dir, "tokens")
        tasks, _ = pending_tasks(src, dst, ".npy", checksum=False)
        if tasks:
            fn = _TokensShard(db.chunks_dir, _dtype(cfg["token_dtype"], cfg["chunk_size"]))
            with local_executor(workers) as ex:
                run_shard_stage(tasks, fn, dst, ex)
    return len(tasks)


class TokenStore:
    """Tokens, document ids and lengths of any chunk ids, memory-mapped."""

    def __init__(self, db_path: str | Path, build: bool = True):
        db = Database(db_path)
        cfg = db.config()
        if build:
            build_tokens(db_path)
        m = Manifest(db.root / "tokens", "tokens")
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.chunk_size: int = cfg["chunk_size"]
        self.dtype = np.dtype(cfg["token_dtype"])
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.maps = [np.load(m.directory / e["file"], mmap_mode="r") for e in shards]
        self.n_chunks = int(sum(e["rows"] for e in shards))

    def rows(self, ids) -> np.ndarray:
        """Structured rows for `ids` (any shape); id -1 gives an all-zero row."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        bad = (flat < -1) | (flat >= self.n_chunks)
        if bad.any():
            raise RetrodbError(f"chunk id {int(flat[bad][0])} is outside the database "
                               f"(0..{self.n_chunks - 1})")
        out = np.zeros(len(flat), dtype=self.maps[0].dtype if self.maps else None)
        out["doc_id"] = -1
        valid = flat >= 0
        shard = np.searchsorted(self.first_ids, flat, side="right") - 1
        for s in np.unique(shard[valid]):
            sel = valid & (shard == s)
            out[sel] = self.maps[s][flat[sel] - self.first_ids[s]]
        return out.reshape(ids.shape)

    def tokens(self, ids) -> np.ndarray:
        """(..., chunk_size) token ids; zeros for id -1."""
        return self.rows(ids)["tokens"]

    def doc_ids(self, ids) -> np.ndarray:
        """Document ids of chunk ids (any shape); -1 for id -1. Reads only that field,
        not the tokens (the filters call it for every candidate)."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        bad = (flat < -1) | (flat >= self.n_chunks)
        if bad.any():
            raise RetrodbError(f"chunk id {int(flat[bad][0])} is outside the database "
                               f"(0..{self.n_chunks - 1})")
        out = np.full(len(flat), -1, dtype=np.int64)
        valid = flat >= 0
        shard = np.searchsorted(self.first_ids, flat, side="right") - 1
        for s in np.unique(shard[valid]):
            sel = valid & (shard == s)
            out[sel] = self.maps[s]["doc_id"][flat[sel] - self.first_ids[s]]
        return out.reshape(ids.shape)

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
