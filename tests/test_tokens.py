"""The memory-mapped token store: random access by chunk id, continuations."""

from __future__ import annotations

import numpy as np
import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.stores.tokens import TokenStore, build_tokens

from dbread import read_chunks


def test_token_store_matches_chunks_and_appends(tmp_path, corpus_files):
    db = tmp_path / "db"
    chunk_corpus(db, [str(f) for f in corpus_files[:4]], ChunkConfig(split_size=40_000))
    store = TokenStore(db)
    t = read_chunks(db).to_pydict()
    n = len(t["chunk_id"])
    assert store.n_chunks == n
    rng = np.random.default_rng(0)
    ids = rng.integers(0, n, size=(7, 3))
    toks = store.tokens(ids)
    assert toks.shape == (7, 3, 64) and toks.dtype == np.uint16
    for i in ids.reshape(-1):
        assert store.tokens([i])[0].tolist() == t["tokens"][i]
        assert store.doc_ids([i])[0] == t["doc_id"][i]

    blocks = store.neighbour_blocks(np.array([[0, -1]]))
    assert blocks.shape == (1, 2, 128)
    assert blocks[0, 0, :64].tolist() == t["tokens"][0]
    assert blocks[0, 0, 64:].tolist() == t["tokens"][1]  # continuation, same document
    assert not blocks[0, 1].any()  # no neighbour: padding
    last = max(i for i in range(n) if t["doc_id"][i] == 0)  # last chunk of document 0
    assert store.continuation_ids([last, n - 1]).tolist() == [-1, -1]
    with pytest.raises(RetrodbError, match="outside the database"):
        store.tokens([n])

    # appended chunk shards are added alone
    before = len(list((db / "tokens").glob("0*.npy")))
    r = chunk_corpus(db, [str(f) for f in corpus_files], ChunkConfig(split_size=40_000))
    assert build_tokens(db) == len(r.shards) > 0
    assert len(list((db / "tokens").glob("0*.npy"))) == before + len(r.shards)
    assert build_tokens(db) == 0
    assert TokenStore(db).n_chunks == read_chunks(db).num_rows


@pytest.mark.parametrize("few", [16, 0])  # ids grouped by comparison, and by one sort
def test_lookups_across_shards_match_the_chunks(tmp_path, corpus_files, monkeypatch, few):
    import retrodb.stores.tokens as tokens_mod

    monkeypatch.setattr(tokens_mod, "FEW_SHARDS", few)
    db = tmp_path / "db"
    chunk_corpus(db, [str(f) for f in corpus_files[:4]], ChunkConfig(split_size=20_000))
    store = TokenStore(db)
    assert len(store.maps) > 2
    t = read_chunks(db).to_pydict()
    docs, toks = np.array(t["doc_id"]), np.array(t["tokens"])
    rng = np.random.default_rng(1)
    ids = rng.integers(-1, store.n_chunks, size=(50, 9))
    ids[0, :3] = [-1, store.n_chunks - 1, 0]
    want = np.where(ids >= 0, docs[np.maximum(ids, 0)], -1)
    assert np.array_equal(store.doc_ids(ids), want)
    got = store.tokens(ids)
    assert np.array_equal(got[ids >= 0], toks[ids[ids >= 0]])
    assert not got[ids < 0].any()  # id -1: zero tokens
