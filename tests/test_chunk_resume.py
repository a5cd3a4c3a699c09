"""An interrupted chunk run, rerun, gives byte-identical shards to an uninterrupted one.

Splits of 20 KB cut the larger documents into parts, so shards end mid-file and the
ordered commit (ids from the counts of earlier splits) is exercised."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from retrodb.core.errors import RetrodbError
from retrodb.core.manifest import Manifest
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.stages.chunk.shards import ShardWriter

from dbread import read_chunks, shard_bytes

CFG = ChunkConfig(split_size=20_000, row_group_rows=64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    db = tmp_path_factory.mktemp("ref") / "db"
    chunk_corpus(db, [str(corpus)], CFG)
    return shard_bytes(db)


def _no_leftovers(db):
    assert not [p for p in db.rglob(".tmp-*")], "temporary files left behind"
    assert not (db / "chunks" / ".work").exists(), "spills left behind"


def test_exception_while_writing_a_shard(tmp_path, corpus, reference, monkeypatch):
    db = tmp_path / "db"
    real = ShardWriter.close
    calls = {"n": 0}

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected crash")
        return real(self, *a, **kw)

    monkeypatch.setattr(ShardWriter, "close", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(corpus)], CFG)
    monkeypatch.undo()
    assert len(Manifest(db / "chunks", "chunks").shards) == 2
    assert not list(db.rglob(".tmp-*"))
    r = chunk_corpus(db, [str(corpus)], CFG)
    assert r.shards[0] == "00002.parquet" and r.inputs == 0  # the recorded plan, resumed
    assert shard_bytes(db) == reference
    _no_leftovers(db)


def test_crash_between_publishing_a_shard_and_recording_it(tmp_path, corpus, reference,
                                                           monkeypatch):
    db = tmp_path / "db"
    real = Manifest.record

    def failing(self, entry=None, **top):
        if entry is not None and entry["shard"] == 2:
            raise RuntimeError("injected crash")
        return real(self, entry, **top)

    monkeypatch.setattr(Manifest, "record", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(corpus)], CFG)
    monkeypatch.undo()
    assert (db / "chunks" / "00002.parquet").exists()  # published, not recorded
    chunk_corpus(db, [str(corpus)], CFG)
    assert shard_bytes(db) == reference


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_mid_run(tmp_path, corpus, reference, workers):
    """A real SIGKILL right after shard 3 is published, before it is recorded; with two
    workers, splits counted ahead are left as spills and reused by the rerun."""
    db = tmp_path / "db"
    script = textwrap.dedent(f"""
        import os, signal
        from retrodb.stages.chunk import ChunkConfig, chunk_corpus
        from retrodb.core.manifest import Manifest
        real = Manifest.record
        def record(self, entry=None, **top):
            if entry is not None and entry["shard"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, entry, **top)
        Manifest.record = record
        chunk_corpus({str(db)!r}, [{str(corpus)!r}],
                     ChunkConfig(split_size=20_000, row_group_rows=64, workers={workers}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    r = chunk_corpus(db, [str(corpus)], CFG)
    assert "00003.parquet" in r.shards and "00000.parquet" not in r.shards
    assert shard_bytes(db) == reference
    ids = read_chunks(db).column("chunk_id").to_pylist()
    assert ids == list(range(len(ids)))  # no duplicate, no gap
    _no_leftovers(db)


def test_resume_needs_the_interrupted_inputs(tmp_path, corpus, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(corpus, src)
    db = tmp_path / "db"
    real = ShardWriter.close
    calls = {"n": 0}

    def failing(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected crash")
        return real(self, *a, **kw)

    cfg = ChunkConfig(split_size=20_000, row_group_rows=64, root=str(tmp_path))
    monkeypatch.setattr(ShardWriter, "close", failing)
    with pytest.raises(RuntimeError):
        chunk_corpus(db, [str(src)], cfg)
    monkeypatch.undo()
    plan = Manifest(db / "chunks", "chunks").data["plan"]
    last = plan["splits"][-1]["pieces"][0]["input"]  # relative to --root
    assert last.startswith("src/")
    (tmp_path / last).rename(tmp_path / "moved.txt")
    with pytest.raises(RetrodbError, match="interrupted run was chunking"):
        chunk_corpus(db, [str(src)], cfg)


def test_ctrl_c_exits_130_and_resumes(tmp_path, corpus):
    """Ctrl-C mid-run: one line, exit 130, and the rerun completes identically."""
    db = tmp_path / "db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        # a terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a child
        # inherits SIG_IGN when something in the test process ignored it before
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from retrodb.core.manifest import Manifest
        real = Manifest.record
        def record(self, entry=None, **top):
            out = real(self, entry, **top)
            if entry is not None and entry["shard"] == 1:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            return out
        Manifest.record = record
        sys.argv = ["retrodb", "chunk", {str(corpus)!r}, "--db", {str(db)!r},
                    "--split-size", "20000", "--workers", "2"]
        from retrodb.cli.main import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted:")
    assert "Traceback" not in proc.stderr
    assert not list(db.rglob(".tmp-*"))
    cfg = ChunkConfig(split_size=20_000)
    chunk_corpus(db, [str(corpus)], cfg)
    ref = tmp_path / "ref"
    chunk_corpus(ref, [str(corpus)], cfg)
    assert shard_bytes(db) == shard_bytes(ref)
    _no_leftovers(db)
