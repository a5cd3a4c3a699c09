"""An interrupted chunk run, rerun, gives byte-identical shards to an uninterrupted one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from retrodb.chunk import ChunkConfig, ShardWriter, chunk_corpus
from retrodb.errors import RetrodbError
from retrodb.runner import Manifest

from dbread import read_chunks, shard_bytes

CFG = ChunkConfig(shard_size=200, row_group_rows=64)  # shard boundaries fall mid-document


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    db = tmp_path_factory.mktemp("ref") / "db"
    chunk_corpus(db, [str(corpus)], CFG)
    return shard_bytes(db)


def _no_leftovers(db):
    assert not [p for p in db.rglob(".tmp-*")], "temporary files left behind"


def test_exception_before_a_commit(tmp_path, corpus, reference, monkeypatch):
    db = tmp_path / "db"
    real = ShardWriter.commit
    calls = {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected crash")
        real(self)

    monkeypatch.setattr(ShardWriter, "commit", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(corpus)], CFG)
    monkeypatch.undo()
    _no_leftovers(db)
    assert len(Manifest(db / "chunks", "chunks").shards) == 2
    chunk_corpus(db, [str(corpus)], CFG)
    assert shard_bytes(db) == reference


def test_crash_between_publishing_a_shard_and_recording_it(tmp_path, corpus, reference,
                                                           monkeypatch):
    db = tmp_path / "db"
    real = Manifest.record

    def failing(self, entry=None, **top):
        if entry is not None and entry["shard"] == 2:
            raise RuntimeError("injected crash")
        real(self, entry, **top)

    monkeypatch.setattr(Manifest, "record", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(corpus)], CFG)
    monkeypatch.undo()
    assert (db / "chunks" / "00002.parquet").exists()  # published, not recorded
    chunk_corpus(db, [str(corpus)], CFG)
    assert shard_bytes(db) == reference


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_run(tmp_path, corpus, reference, workers):
    """A real SIGKILL right after shard 3 is published, before it is recorded."""
    db = tmp_path / "db"
    script = textwrap.dedent(f"""
        import os, signal
        from retrodb.chunk import ChunkConfig, chunk_corpus
        from retrodb.runner import Manifest
        real = Manifest.record
        def record(self, entry=None, **top):
            if entry is not None and entry["shard"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, entry, **top)
        Manifest.record = record
        chunk_corpus({str(db)!r}, [{str(corpus)!r}],
                     ChunkConfig(shard_size=200, row_group_rows=64, workers={workers}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9
    r = chunk_corpus(db, [str(corpus)], CFG)
    assert r.shards[0] == "00003.parquet"
    assert shard_bytes(db) == reference
    ids = read_chunks(db).column("chunk_id").to_pylist()
    assert ids == list(range(len(ids)))  # no duplicate, no gap
    _no_leftovers(db)


def test_resume_needs_the_interrupted_input(tmp_path, corpus, corpus_files, monkeypatch):
    db = tmp_path / "db"
    real = ShardWriter.commit
    calls = {"n": 0}

    def failing(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected crash")
        real(self)

    monkeypatch.setattr(ShardWriter, "commit", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(corpus)], CFG)
    monkeypatch.undo()
    cursor = Manifest(db / "chunks", "chunks").data["cursor"]
    others = [str(f) for f in corpus_files if str(f) != cursor["path"]]
    with pytest.raises(RetrodbError, match="interrupted run was chunking"):
        chunk_corpus(db, others, CFG)


def test_ctrl_c_exits_130_and_resumes(tmp_path, corpus):
    """Ctrl-C mid-run: one line, exit 130, and the rerun completes identically."""
    db = tmp_path / "db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from retrodb.runner import Manifest
        real = Manifest.record
        def record(self, entry=None, **top):
            real(self, entry, **top)
            if entry is not None and entry["shard"] == 1:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
        Manifest.record = record
        sys.argv = ["retrodb", "chunk", {str(corpus)!r}, "--db", {str(db)!r},
                    "--shard-size", "200", "--workers", "2"]
        from retrodb.cli.main import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted:")
    assert "Traceback" not in proc.stderr
    _no_leftovers(db)
    chunk_corpus(db, [str(corpus)], ChunkConfig(shard_size=200))
    ref = tmp_path / "ref"
    chunk_corpus(ref, [str(corpus)], ChunkConfig(shard_size=200))
    assert shard_bytes(db) == shard_bytes(ref)
