"""retrodb verify: finds what is wrong, recomputes shards from their inputs."""

from __future__ import annotations

import json
import shutil

import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.stores.tokens import build_tokens
from retrodb.ops.verify import verify


@pytest.fixture()
def db(tmp_path, corpus):
    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    db = tmp_path / "db"
    chunk_corpus(db, [str(src / "tutorial")], ChunkConfig(split_size=40_000))
    chunk_corpus(db, [str(src)], ChunkConfig(split_size=40_000))  # an appended run
    build_tokens(db)
    return db


def _errors(rep):
    return [f.message for f in rep.findings if f.level == "error"]


def test_clean_database_verifies_with_every_shard_recomputed(db):
    rep = verify(db, sample=1.0)
    assert rep.ok, rep.findings
    # 7 chunk shards (one per file), each with its docs shard and token shard
    assert len(rep.recomputed) == 7 and rep.checked_files == 21


def test_corrupt_and_truncated_shards_are_found(db):
    p = db / "chunks" / "00001.parquet"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    q = db / "tokens" / "00002.npy"
    q.write_bytes(q.read_bytes()[:-10])
    errors = _errors(verify(db, sample=0))
    assert any("00001.parquet: sha256 differs" in e for e in errors)
    assert any("00002.npy" in e and "truncated" in e for e in errors)


def test_deleted_shard_and_edited_manifest(db):
    (db / "docs" / "00003.parquet").unlink()
    m = db / "chunks" / "manifest.json"
    data = json.loads(m.read_text())
    data["shards"][2]["first_id"] += 5
    m.write_text(json.dumps(data))
    errors = _errors(verify(db, sample=0))
    assert any("docs/00003.parquet: missing" in e for e in errors)
    assert any("shard 2: first_id" in e for e in errors)
    assert any("00002.parquet: chunk ids" in e for e in errors)


def test_recompute_detects_a_consistently_rewritten_shard(db, tmp_path):
    """A shard replaced along with its checksum is caught only by recomputation."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrodb.core.manifest import file_record

    p = db / "chunks" / "00000.parquet"
    t = pq.read_table(p)
    texts = t.column("text").to_pylist()
    texts[3] = texts[3].upper()
    t = t.set_column(t.schema.get_field_index("text"), "text", pa.array(texts))
    pq.write_table(t, p)
    m = db / "chunks" / "manifest.json"
    data = json.loads(m.read_text())
    data["shards"][0].update(file_record(p, p.name))
    m.write_text(json.dumps(data))
    rep = verify(db, sample=1.0)
    errors = sorted(_errors(rep))
    assert len(errors) == 2
    assert any(e.endswith("tokens/00000.npy: computed from an older chunk shard 0; rerun "
                          "the tokens stage") for e in errors)
    assert any(e.endswith("chunks/00000.parquet: recomputed from its inputs it differs "
                          "from the stored shard") for e in errors)


def test_stale_derived_shard(db):
    m = db / "tokens" / "manifest.json"
    data = json.loads(m.read_text())
    data["shards"][1]["source_sha256"] = "0" * 64
    m.write_text(json.dumps(data))
    assert any("computed from an older chunk shard 1" in e for e in _errors(verify(db, 0)))


def test_verify_finds_a_merged_index_that_does_not_hold_the_current_keys(indexed_db,
                                                                         tmp_path):
    """RELIABILITY.md: verify checks that the merged index holds exactly the current
    keys, and that its files are the ones recorded."""
    import numpy as np

    from retrodb.core.manifest import Manifest, file_record

    db = tmp_path / "db"
    shutil.copytree(indexed_db, db)
    assert verify(db, sample=0).ok
    # keys of shard 1 recomputed (here: changed) without rebuilding the index
    p = db / "embeddings" / "00001.npy"
    keys = np.load(p)
    np.save(p, keys[::-1].copy())
    m = Manifest(db / "embeddings", "embeddings")
    m.record({**m.entry(1), **file_record(p, p.name)})
    # the embeddings stage itself is consistent; the index now is not
    errors = _errors(verify(db, sample=0))
    assert any("merged index holds 874 vectors built from other embeddings" in x and
               "shard(s) 1" in x for x in errors), errors


def test_verify_finds_damaged_index_files(indexed_db, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(indexed_db, db)
    lists = next((db / "index").glob("merged.*.ivfdata"))
    data = bytearray(lists.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lists.write_bytes(bytes(data))
    errors = _errors(verify(db, sample=0))
    assert any(lists.name in x and "changed since it was written" in x for x in errors)


def test_readers_never_see_a_half_written_file(tmp_path, corpus, monkeypatch):
    """While a run writes shards, everything under a final name is complete: every
    Parquet shard reads whole and the manifest always parses. (Writing is slowed down,
    one row group of 32 rows at a time, so that a reader would catch a half-written
    shard if one ever had its final name.)"""
    import threading
    import time

    import pyarrow.parquet as pq

    from retrodb.stages.chunk.shards import ShardWriter

    real = ShardWriter.write

    def slow(self, batch):
        time.sleep(0.01)
        return real(self, batch)

    monkeypatch.setattr(ShardWriter, "write", slow)
    db = tmp_path / "db"
    seen, problems, stop = set(), [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for p in list((db / "chunks").glob("[0-9]*.parquet")) + \
                    list((db / "docs").glob("[0-9]*.parquet")):
                try:
                    pq.read_table(p)
                    seen.add(p.name)
                except FileNotFoundError:
                    pass
                except Exception as e:  # noqa: BLE001 - any half-written read
                    problems.append(f"{p.name}: {e}")
            m = db / "chunks" / "manifest.json"
            try:
                json.loads(m.read_text())
            except FileNotFoundError:
                pass
            except ValueError as e:
                problems.append(f"manifest: {e}")

    t = threading.Thread(target=watch)
    t.start()
    try:
        chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=10_000, row_group_rows=32))
    finally:
        stop.set()
        t.join()
    assert not problems, problems
    assert len(seen) >= 10  # the watcher did see shards appear during the run
