"""Generation: chunk-by-chunk sampling with live retrieval for every completed chunk."""

from __future__ import annotations


import pytest

from retrodb.core.db import Database
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.training.generate import generate
from retrodb.training.train import TrainConfig, train

from neighbour_fixture import write_neighbours


@pytest.fixture(scope="module")
def db(tmp_path_factory, corpus):
    db = tmp_path_factory.mktemp("gen") / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=40_000))
    write_neighbours(db, "train", k=2)
    cfg = TrainConfig(run="g", preset="tiny", steps=2, seq_chunks=2, batch_size=2,
                      val_fraction=0.2, eval_sequences=1)
    train(db, cfg)
    return db


class FakeIndex:
    """Stands in for retrodb.open(DB): returns fixed chunk ids, records the queries."""

    def __init__(self):
        self.queries = []

    def search(self, texts, k):
        self.queries.extend(texts)
        return [[{"chunk_id": 10 + i}, {"chunk_id": 500 + i}][:k] for i in range(len(texts))]


PROMPT = ("Python is an easy to learn, powerful programming language. It has efficient "
          "high-level data structures and a simple but effective approach to "
          "object-oriented programming. ") * 2


def test_every_completed_chunk_is_retrieved_once(db):
    idx = FakeIndex()
    g = generate(db, "g", PROMPT, max_tokens=80, retriever=idx)
    n_prompt = len(Database(db).tokenizer().load()
                   .encode(PROMPT, add_special_tokens=False).ids)
    complete = (n_prompt + 80 - 1) // 64  # chunks complete before the last sample
    assert [r.chunk for r in g.retrieved] == list(range(complete))
    assert len(idx.queries) == complete and len(g.tokens) == 80 and g.text
    hit = g.retrieved[0].hits[0]
    from retrodb.stores.chunks import ChunkReader

    reader = ChunkReader(db)
    row = reader.row(10)
    assert hit == {"chunk_id": 10, "doc_id": row["doc_id"], "text": row["text"],
                   "source": reader.doc(row["doc_id"])["source"]}
    # the same seed gives the same sample; no retrieval never calls the index
    assert generate(db, "g", PROMPT, max_tokens=80, retriever=FakeIndex()).tokens == g.tokens
    idle = FakeIndex()
    generate(db, "g", PROMPT, max_tokens=5, retrieval=False, retriever=idle)
    assert idle.queries == []


def test_live_retrieval_from_the_real_index(indexed_db, tmp_path):
    """No stand-in: the prompt's completed chunks are embedded and searched in the
    database's merged index (retrodb.open), and the hits are real chunks."""
    import shutil

    db = tmp_path / "db"
    shutil.copytree(indexed_db, db)
    write_neighbours(db, "train", k=2)
    train(db, TrainConfig(run="g", preset="tiny", steps=1, seq_chunks=2, batch_size=2,
                          val_fraction=0.2, eval_sequences=1))
    g = generate(db, "g", PROMPT, max_tokens=8)
    assert g.retrieved and g.retrieved[0].hits
    # the best hit of the prompt's first chunk is its exact nearest key
    import numpy as np

    from index_fixtures import all_keys
    from retrodb.stages.embed import load_embedder

    emb = load_embedder(Database(db).config()["embedder"])
    q = emb.encode_texts([g.retrieved[0].query])[0]
    scores = all_keys(db) @ q
    best = g.retrieved[0].hits[0]["chunk_id"]
    assert scores[best] >= scores.max() - 1e-3, (best, int(np.argmax(scores)))


def test_generate_errors(db):
    with pytest.raises(RetrodbError, match="PROMPT"):
        generate(db, "g", "   ", retriever=FakeIndex())
    with pytest.raises(RetrodbError, match="--run nope"):
        generate(db, "nope", "x", retriever=FakeIndex())
