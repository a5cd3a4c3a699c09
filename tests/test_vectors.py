"""The embedding store: float16 key rows by chunk id, widened exactly, refused when
stored in another dtype."""

from __future__ import annotations

import numpy as np
import pytest

from index_fixtures import all_keys
from retrodb.core.errors import RetrodbError
from retrodb.core.manifest import Manifest


def test_key_rows_in_any_order_equal_the_stored_rows(fake_db):
    """store.get widens float16 rows exactly, for ids in any order, repeated or not, and
    the same through the per-thread buffer."""
    from retrodb.stores.vectors import EmbeddingStore

    store = EmbeddingStore(fake_db)
    x = all_keys(fake_db)
    rng = np.random.default_rng(0)
    for ids in (np.arange(store.n), rng.integers(0, store.n, 500), np.sort(
            rng.integers(0, store.n, 300)), np.array([store.n - 1, 0, store.n - 1])):
        np.testing.assert_array_equal(store.get(ids), x[ids])
        np.testing.assert_array_equal(store.get(ids, scratch=True), x[ids])
    assert store.get(np.array([], dtype=np.int64)).shape == (0, store.dim)


def test_key_rows_without_torch_and_torch_threads_kept(fake_db, monkeypatch):
    """The rows are the same by numpy alone, and a gather leaves torch's thread count
    (this thread's and another's) as it was: it runs in the calling thread only."""
    import threading

    import torch

    import retrodb.stores.vectors as vectors

    store = vectors.EmbeddingStore(fake_db)
    x = all_keys(fake_db)
    ids = np.random.default_rng(1).integers(0, store.n, 400)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    t = threading.Thread(target=lambda: (torch.set_num_threads(3), store.get(ids),
                                         seen.append(torch.get_num_threads())))
    try:
        np.testing.assert_array_equal(store.get(ids), x[ids])
        t.start()
        t.join()
        assert torch.get_num_threads() == 2 and seen == [3]
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(vectors, "_torch", lambda: None)
    np.testing.assert_array_equal(vectors.EmbeddingStore(fake_db).get(ids), x[ids])


def test_float32_key_shards_are_refused(fake_db):
    from retrodb.stores.vectors import EmbeddingStore

    f = sorted((fake_db / "embeddings").glob("[0-9]*.npy"))[0]
    np.save(f, np.load(f).astype(np.float32))
    m = Manifest(fake_db / "embeddings", "embeddings")
    e = m.entry(0)
    m.record({**e, "bytes": f.stat().st_size})
    m.flush()
    with pytest.raises(RetrodbError, match=r"00000.npy: float32 keys, retrodb stores "
                                           r"float16; rerun `retrodb embed`"):
        EmbeddingStore(fake_db)
