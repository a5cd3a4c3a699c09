"""Neighbour sets for tests, written in the neighbours stage's layout.

The rule is deliberately simple and deterministic (no index): a chunk's neighbours are
the k chunks of *other* documents sharing the most distinct token ids with it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_neighbours(db: Path, set_name: str = "train", k: int = 2,
                     random_ids: bool = False, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrodb.core.manifest import Manifest, file_record, shard_name
    from retrodb.stores.tokens import TokenStore

    store = TokenStore(db)
    n = store.n_chunks
    ids = np.arange(n)
    rows = store.rows(ids)
    if random_ids:
        nb = np.random.default_rng(seed).integers(0, n, size=(n, k))
        scores = np.zeros((n, k), np.float32)
    else:
        valid = np.arange(store.chunk_size)[None] < rows["length"][:, None]
        toks = np.where(valid, rows["tokens"].astype(np.int64), -1)
        vocab, inv = np.unique(toks, return_inverse=True)
        bag = np.zeros((n, len(vocab)), np.float32)
        bag[np.repeat(ids, toks.shape[1]), inv.reshape(-1)] = 1
        bag[:, vocab == -1] = 0
        sim = bag @ bag.T
        sim[rows["doc_id"][:, None] == rows["doc_id"][None, :]] = -1  # other docs only
        nb = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(sim, nb, 1).astype(np.float32)
    out = Path(db) / "neighbours" / set_name
    out.mkdir(parents=True, exist_ok=True)
    m = Manifest(out, "neighbours")
    chunk_manifest = Manifest(Path(db) / "chunks", "chunks")
    for e in chunk_manifest.shards:
        a, b = e["first_id"], e["first_id"] + e["rows"]
        t = pa.table({
            "chunk_id": pa.array(ids[a:b], pa.int64()),
            "neighbours": pa.FixedSizeListArray.from_arrays(
                pa.array(nb[a:b].reshape(-1), pa.int64()), k),
            "scores": pa.FixedSizeListArray.from_arrays(
                pa.array(scores[a:b].reshape(-1), pa.float32()), k)})
        name = shard_name(e["shard"], ".parquet")
        pq.write_table(t, out / name)
        m.record({"shard": e["shard"], **file_record(out / name, name), "rows": b - a,
                  "first_id": a}, k=k)
    return out
