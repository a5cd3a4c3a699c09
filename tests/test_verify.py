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
