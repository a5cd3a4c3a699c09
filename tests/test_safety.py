"""Safety: no pickle on any load path, manifests cannot escape the DB, one writer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.core.db import Database
from retrodb.core.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]


def test_no_pickle_load_paths():
    """Nothing in the package loads pickles; torch.load only with weights_only=True."""
    bad = []
    for f in [*ROOT.joinpath("retrodb").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]:
        text = f.read_text()
        for m in re.finditer(r"pickle\.loads?\(|cloudpickle\.loads?\(|np\.load\([^)]*"
                             r"allow_pickle\s*=\s*True|torch\.load\((?![^)]*weights_only"
                             r"\s*=\s*True)", text):
            bad.append(f"{f.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, bad


def test_manifest_entry_outside_the_database_is_refused(tmp_path, corpus_files):
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus_files[0])], ChunkConfig())
    path = db / "chunks" / "manifest.json"
    data = json.loads(path.read_text())
    data["shards"][0]["extra"][0]["file"] = "../../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(RetrodbError, match="outside the database"):
        Manifest(db / "chunks", "chunks")


def test_second_writer_is_refused(tmp_path, corpus_files):
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus_files[0])], ChunkConfig())
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from retrodb.core.db import Database
        with Database({str(db)!r}).chunks.lock("chunk"):
            print("locked", flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RetrodbError, match=rf"another retrodb process \(pid {holder.pid}\)"):
            chunk_corpus(db, [str(corpus_files[1])], ChunkConfig())
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder
    r = chunk_corpus(db, [str(corpus_files[1])], ChunkConfig())
    assert r.docs == 1
    with Database(db).chunks.lock("chunk"):
        pass
