"""Searching by text: `retrodb.open(DB).search(...)` and `retrodb query`."""

from __future__ import annotations

import json

import os
import subprocess
import sys
from collections import Counter

import pytest

from dbread import read_chunks, read_docs
from embed_contract import StubEmbedder
from retrodb.core.errors import RetrodbError

pytest.importorskip("faiss")


def test_query_with_a_chunks_own_text_returns_that_chunk(indexed_db):
    import retrodb

    chunks = read_chunks(indexed_db).to_pylist()
    docs = {d["doc_id"]: d for d in read_docs(indexed_db).to_pylist()}
    counts = Counter(c["text"].strip() for c in chunks)
    # chunks with a unique, full-length text (a duplicate would be an equally good hit)
    picks = [c for c in chunks if counts[c["text"].strip()] == 1 and c["length"] == 64]
    picks = picks[:: max(1, len(picks) // 12)][:12]
    r = retrodb.open(indexed_db, embedder=StubEmbedder())
    hits = r.search([c["text"] for c in picks], k=4)
    assert len(hits) == len(picks)
    for c, row in zip(picks, hits):
        top = row[0]
        assert top.chunk_id == c["chunk_id"] and top.score > 0.99
        assert top.text == c["text"] and top.doc_id == c["doc_id"] and top.pos == c["pos"]
        nxt = chunks[c["chunk_id"] + 1] if c["chunk_id"] + 1 < len(chunks) else None
        if nxt is not None and nxt["doc_id"] == c["doc_id"]:
            assert top.continuation == nxt["text"]
            assert top.continuation_id == c["chunk_id"] + 1
        else:
            assert top.continuation is None and top.continuation_id is None
        doc = docs[c["doc_id"]]
        assert (top.source, top.position) == (doc["source"], doc["position"])
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
        assert len(row) == 4 and len({h.chunk_id for h in row}) == 4


def test_last_chunk_of_a_document_has_no_continuation(indexed_db):
    import retrodb

    chunks = read_chunks(indexed_db).to_pylist()
    last = [c for i, c in enumerate(chunks)
            if i + 1 == len(chunks) or chunks[i + 1]["doc_id"] != c["doc_id"]]
    r = retrodb.open(indexed_db, embedder=StubEmbedder())
    hit = r.hit(last[0]["chunk_id"], 1.0)
    assert hit.continuation is None and hit.text == last[0]["text"]


def test_search_vectors_and_hit_dicts(indexed_db):
    import numpy as np

    import retrodb

    r = retrodb.open(indexed_db, embedder=StubEmbedder())
    x = np.load(indexed_db / "embeddings" / "00001.npy")[:3].astype(np.float32)
    first = json.loads((indexed_db / "embeddings" / "manifest.json").read_text())[
        "shards"][1]["first_id"]
    scores, ids = r.search_vectors(x, k=2)
    assert ids.shape == (3, 2) and list(ids[:, 0]) == [first, first + 1, first + 2]
    d = r.search("How do I define a class in Python?", k=1)[0][0].to_dict()
    assert set(d) == {"chunk_id", "score", "text", "continuation", "continuation_id",
                      "doc_id", "pos", "source", "position"}
    assert "class" in d["text"].lower()


def test_empty_queries_are_refused(indexed_db):
    import retrodb

    r = retrodb.open(indexed_db, embedder=StubEmbedder())
    with pytest.raises(RetrodbError, match="the query is empty"):
        r.search("   ")
    with pytest.raises(RetrodbError, match="query 2 is empty"):
        r.search(["classes", ""])
    with pytest.raises(RetrodbError, match="-k 0"):
        r.search("classes", k=0)
    assert r.search([]) == []


def test_query_on_a_database_without_a_merged_index(fake_db):
    import retrodb

    with pytest.raises(RetrodbError, match="no merged index"):
        retrodb.open(fake_db)


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_query_errors(fake_db):
    p = run("query", str(fake_db), "")
    assert p.returncode == 2 and "the query is empty" in p.stderr
    p = run("query", str(fake_db), "classes")
    assert p.returncode == 2 and "no merged index" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_open_does_not_import_faiss_at_package_import():
    code = ("import sys, retrodb; f = retrodb.open; "
            "print('faiss' in sys.modules, 'torch' in sys.modules, callable(f))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.stdout.split() == ["False", "False", "True"], p.stderr


def test_two_corpora_each_query_finds_its_own(tmp_path, corpus, perl_corpus):
    """The Python docs and Perl's docs in one database (chunk → embed → index →
    query): a question about each language is answered from that language's docs."""
    import retrodb
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus
    from retrodb.stages.embed import EmbedConfig, embed_db
    from retrodb.stages.index import IndexConfig, build_index

    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus), str(perl_corpus)],
                 ChunkConfig(split_size=120_000, root=str(corpus.parent)))
    embed_db(db, EmbedConfig())
    build_index(db, IndexConfig(factory="IVF16,PQ32x4", recall_queries=500))
    r = retrodb.open(db)
    perl = r.search("In Perl, how do I declare a hash and look up a value by key?", k=3)[0]
    python = r.search("How do I define a class with a constructor in Python?", k=3)[0]
    assert all(h.source.startswith("corpus-perl/") for h in perl), [h.source for h in perl]
    assert all(h.source.startswith("corpus/") for h in python), [h.source for h in python]
    assert any("%" in h.text for h in perl)  # Perl's hash sigil
