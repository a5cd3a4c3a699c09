"""The searcher over the merged index: centroids memory-mapped from the trained index,
nprobe set per call."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from index_fixtures import all_keys, copy_db
from retrodb.core.manifest import Manifest
from retrodb.stores.searcher import IndexSearcher


def manifest(db: Path) -> Manifest:
    return Manifest(db / "index", "index")


def test_searcher_maps_the_centroids_from_the_trained_index(indexed_db, tmp_path):
    """The searcher takes its coarse centroids memory-mapped from trained.faiss; without
    that file (or with one of other centroids) it keeps the merged index's own, and the
    results are the same either way."""
    from retrodb.stores.searcher import mapped_trained

    x = all_keys(indexed_db)[:200]
    mapped = IndexSearcher(indexed_db)
    trained = faiss.read_index(str(indexed_db / "index" / "trained.faiss"))
    assert mapped_trained(manifest(indexed_db), faiss.extract_index_ivf(trained))
    q = faiss.downcast_index(faiss.extract_index_ivf(mapped.index).quantizer)
    assert q.ntotal == 16
    want = mapped.search(x, 10, nprobe=4, candidates=40)
    alone = copy_db(indexed_db, tmp_path / "alone")
    (alone / "index" / "trained.faiss").unlink()
    np.testing.assert_array_equal(IndexSearcher(alone).search(x, 10, 4, 40)[1], want[1])
    other = copy_db(indexed_db, tmp_path / "other")
    t = faiss.read_index(str(other / "index" / "trained.faiss"))
    tq = faiss.extract_index_ivf(t).quantizer
    moved = tq.reconstruct_n(0, tq.ntotal)[::-1].copy()  # same size, other order
    tq.reset()
    tq.add(moved)
    faiss.write_index(t, str(other / "index" / "trained.faiss"))
    m = manifest(other)
    m.record(None, trained={**m.data["trained"],
                            "bytes": (other / "index" / "trained.faiss").stat().st_size})
    m.flush()
    assert mapped_trained(manifest(other), faiss.extract_index_ivf(trained)) is None
    np.testing.assert_array_equal(IndexSearcher(other).search(x, 10, 4, 40)[1], want[1])


def test_a_wide_probe_does_not_stay_in_force(fake_db, tmp_path):
    """An HNSW coarse quantizer searches max(16, nprobe) wide for the nprobe of each call,
    not the widest nprobe an earlier call asked for."""
    from retrodb.stores.searcher import set_nprobe

    index = faiss.index_factory(32, "IVF64_HNSW32,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    hnsw = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw
    assert set_nprobe(index, 48) == 48 and hnsw.efSearch == 48
    assert set_nprobe(index, 8) == 8 and hnsw.efSearch == 16
    assert set_nprobe(index, 500) == 64  # at most every list
