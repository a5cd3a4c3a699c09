"""A database built by the previous release (format 1) still opens, answers queries,
verifies, and feeds the later stages: the database format is kept readable."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from retrodb.core.errors import RetrodbError

FIXTURE = Path(__file__).parent / "fixtures" / "v1db.tar.gz"


@pytest.fixture
def v1db(tmp_path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    return tmp_path / "v1db"


def test_open_query_info_and_verify(v1db):
    import retrodb
    from retrodb.ops.verify import verify
    from retrodb.query.info import db_info

    assert json.loads((v1db / "retrodb.json").read_text())["format"] == 1
    hits = retrodb.open(v1db).search("exceptions", k=1)[0]
    assert hits[0].chunk_id == 35 and abs(hits[0].score - 0.582924) < 1e-4
    assert hits[0].source.endswith("errors.rst.txt") and hits[0].continuation_id == 36
    info = db_info(v1db)
    assert info["stages"]["chunks"]["rows"] == 211 and info["stages"]["index"]["merged"]
    rep = verify(v1db, sample=1.0)
    assert rep.ok, rep.findings
    # its chunk shards record absolute inputs (format 1): not recomputed, and said so;
    # its neighbour set was searched by the earlier release's search: the same
    assert any("format 1" in f.message for f in rep.findings)
    assert any("computed by an earlier retrodb" in f.message for f in rep.findings)
    # its index (2-bit codes, no layout record) is searched as it is, and `retrodb
    # index` says how to get the current default
    from retrodb.stages.index import IndexConfig, build_index

    notes = build_index(v1db, IndexConfig()).notes
    assert any("--rebuild" in n and "earlier retrodb" in n for n in notes), notes


def test_later_stages_read_it_and_appending_is_refused(v1db, corpus_files):
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus
    from retrodb.stores.neighbour_table import Neighbours

    nb = Neighbours(v1db, "train")
    assert nb.blocks([0, 1]).shape == (2, 2, 128)
    with pytest.raises(RetrodbError, match="format 1"):
        chunk_corpus(v1db, [str(corpus_files[0])], ChunkConfig())
