"""A database is a relocatable directory: it records inputs relative to --root (or as
URLs), never this machine's absolute paths, and every stage reads it wherever it lies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from index_fixtures import copy_db

ROOT = Path(__file__).resolve().parents[1]


def test_a_copied_database_works_anywhere(indexed_db, tmp_path, corpus):
    import retrodb
    from retrodb.ops.verify import verify
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours
    from retrodb.training.train import TrainConfig, train

    src = copy_db(indexed_db, tmp_path / "src")
    build_neighbours(src, NeighboursConfig(k=2, val_fraction=0.3))
    # nothing recorded names the place it was built in
    for p in src.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".parquet"):
            assert str(tmp_path).encode() not in p.read_bytes(), p
            assert str(ROOT).encode() not in p.read_bytes(), p
    moved = tmp_path / "a place with spaces" / "données été" / "db"
    shutil.copytree(src, moved)
    shutil.rmtree(src)
    # the inputs are found again from the directory they were recorded relative to
    rep = verify(moved, sample=1.0, root=str(corpus.parent.parent))
    assert rep.ok, rep.findings
    assert any(r.startswith("chunks/") for r in rep.recomputed)
    hit = retrodb.open(moved).search("How do I define a class?", k=1)[0][0]
    assert hit.source.startswith("examples/corpus/")
    r = build_neighbours(moved, NeighboursConfig(k=2, val_fraction=0.3))
    assert r.shards_done == 0  # nothing to redo: the set is the same set
    train(moved, TrainConfig(run="t", preset="tiny", steps=2, seq_chunks=2, batch_size=2,
                             val_fraction=0.3, eval_sequences=1, warmup=1))
    assert json.loads((moved / "models/t/metrics.jsonl").read_text().splitlines()[-1])[
        "step"] == 2
