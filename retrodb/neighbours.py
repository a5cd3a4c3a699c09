"""Precomputed neighbours: reading them by chunk id.

Layout (one shard per query chunk shard, written by the neighbours stage):

    DB/neighbours/<set>/00000.parquet   chunk_id int64, neighbours list<int64>[k],
                                        scores list<float32>[k]; -1 = no neighbour
    DB/neighbours/<set>/manifest.json   shards (first_id, rows, ...) and the set's k,
                                        exclusion rules and query database
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from .db import Database
from .errors import RetrodbError
from .runner import Manifest


class NeighbourTable:
    """Neighbour ids and scores of query chunk ids, a few shards cached at a time."""

    def __init__(self, db_path: str | Path, set_name: str = "train", cache_shards: int = 4):
        self.directory = Database(db_path).root / "neighbours" / set_name
        m = Manifest(self.directory, "neighbours")
        if not m.shards:
            raise RetrodbError(f"{self.directory}: no neighbours; run `retrodb neighbours "
                               f"--db {db_path} --set {set_name}` first")
        self.manifest = m
        self.k: int = m.data["k"]
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.files = [self.directory / e["file"] for e in shards]
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.rows = np.array([e["rows"] for e in shards], dtype=np.int64)
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_shards = cache_shards

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if s in self.cache:
            self.cache.move_to_end(s)
            return self.cache[s]
        import pyarrow.parquet as pq

        t = pq.read_table(self.files[s], columns=["neighbours", "scores"])
        n = t.num_rows
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
