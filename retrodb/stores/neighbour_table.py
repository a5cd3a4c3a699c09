"""Reading a neighbour set: ids and scores of query chunks, and the token blocks the
model reads.

    DB/neighbours/<set>/00000.parquet   chunk_id int64, neighbours list<int64>[k],
                                        scores list<float32>[k]; -1 = no neighbour
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest


class NeighbourTable:
    """Neighbour ids and scores of query chunk ids, a few shards cached at a time."""

    def __init__(self, db, set_name: str = "train", cache_shards: int = 4):
        db = Database(db)
        self.directory = db.neighbours(set_name)
        m = Manifest(self.directory, "neighbours")
        if not m.shards:
            raise RetrodbError(f"{self.directory}: no neighbours; run `retrodb neighbours "
                               f"--db {db.root} --set {set_name}` first")
        self.manifest = m
        self.k: int = m.data["k"]
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.entries = shards
        self.files = [m.path_of(e["file"]) for e in shards]
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.rows = np.array([e["rows"] for e in shards], dtype=np.int64)
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_shards = cache_shards

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if s in self.cache:
            self.cache.move_to_end(s)
            return self.cache[s]
        import pyarrow as pa
        import pyarrow.parquet as pq

        loc = self.files[s]
        try:
            t = pq.read_table(loc.open(), columns=["neighbours", "scores"])
        except (OSError, pa.ArrowInvalid) as e:
            raise RetrodbError(f"{loc}: cannot read this neighbour shard ({str(e)[:120]});"
                               " rerun `retrodb neighbours` to recompute it") from None
        n = t.num_rows
        if n != self.entries[s]["rows"]:
            raise RetrodbError(f"{loc}: {n} rows, its manifest entry says "
                               f"{self.entries[s]['rows']}; rerun `retrodb neighbours`")
        ids = t.column(0).combine_chunks().flatten().to_numpy().reshape(n, self.k)
        scores = t.column(1).combine_chunks().flatten().to_numpy().reshape(n, self.k)
        self.cache[s] = (ids, scores)
        if len(self.cache) > self.cache_shards:
            self.cache.popitem(last=False)
        return ids, scores

    def lookup(self, chunk_ids) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, scores float32), each of shape chunk_ids.shape + (k,)."""
        q = np.asarray(chunk_ids, dtype=np.int64)
        flat = q.reshape(-1)
        shard = np.searchsorted(self.first_ids, flat, side="right") - 1
        ok = (shard >= 0) & (flat < self.first_ids[shard] + self.rows[shard])
        if not ok.all():
            raise RetrodbError(f"chunk {int(flat[~ok][0])} has no neighbours in "
                               f"{self.directory}; rerun `retrodb neighbours`")
        ids = np.empty((len(flat), self.k), dtype=np.int64)
        scores = np.empty((len(flat), self.k), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            a, b = self._shard(int(s))
            ids[sel] = a[flat[sel] - self.first_ids[s]]
            scores[sel] = b[flat[sel] - self.first_ids[s]]
        return ids.reshape(q.shape + (self.k,)), scores.reshape(q.shape + (self.k,))


class Neighbours:
    """What the trainer reads: neighbour token blocks of query chunk ids.

    `blocks(ids)` → (ids.shape, k, 2 × chunk_size) int tokens: neighbour chunk then its
    continuation (the next chunk of the same document), padding (0) where there is none
    or the neighbour id is -1. `lengths(ids)` gives the real token counts to mask with.
    """

    def __init__(self, db, set_name: str = "train"):
        from .tokens import TokenStore

        self.table = NeighbourTable(db, set_name)
        self.tokens = TokenStore(db)
        self.k = self.table.k

    def ids(self, chunk_ids) -> np.ndarray:
        return self.table.lookup(chunk_ids)[0]

    def blocks(self, chunk_ids) -> np.ndarray:
        return self.tokens.neighbour_blocks(self.ids(chunk_ids))

    def lengths(self, chunk_ids) -> np.ndarray:
        """(..., k, 2): real tokens of each neighbour chunk and of its continuation."""
        nb = self.ids(chunk_ids)
        return np.stack([self.tokens.rows(nb)["length"],
                         self.tokens.rows(self.tokens.continuation_ids(nb))["length"]],
                        axis=-1)
