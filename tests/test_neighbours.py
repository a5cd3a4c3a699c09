"""The neighbours stage: filtered kNN of every chunk through the merged index."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.stages.neighbours import NeighboursConfig, build_neighbours, neighbours_report
from retrodb.stores.neighbour_table import NeighbourTable, Neighbours
from retrodb.stores.split import load_split
from retrodb.stores.tokens import TokenStore

from embed_contract import fill_embeddings
from index_fixtures import all_keys, copy_db

# 7 documents: with 0.3 held out by seed 0, some are validation documents
CFG = NeighboursConfig(k=2, val_fraction=0.3, split_seed=0)


@pytest.fixture(scope="module")
def built(indexed_db, tmp_path_factory) -> Path:
    db = copy_db(indexed_db, tmp_path_factory.mktemp("neighbours") / "db")
    build_neighbours(db, CFG)
    return db


def shard_bytes(db: Path, set_name: str = "train") -> dict[str, bytes]:
    d = db / "neighbours" / set_name
    return {p.name: p.read_bytes() for p in sorted(d.glob("[0-9]*.parquet"))}


def exact_filtered(db: Path, k: int, val_fraction: float, seed: int):
    """Brute-force top-k over every key, own document and validation documents removed."""
    keys = all_keys(db)
    store = TokenStore(db)
    doc = store.doc_ids(np.arange(len(keys)))
    from retrodb.stores.split import Split

    val = Split(val_fraction, seed).is_validation(doc)
    s = keys @ keys.T
    s[doc[:, None] == doc[None, :]] = -np.inf
    s[:, val] = -np.inf
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, top, axis=1), top, s


def test_every_chunk_gets_k_neighbours_none_from_its_own_document(built):
    t = NeighbourTable(built)
    store = TokenStore(built)
    n = store.n_chunks
    ids, scores = t.lookup(np.arange(n))
    assert ids.shape == (n, 2) and scores.shape == (n, 2)
    assert (ids >= 0).all() and (ids < n).all()  # 7 documents: never short here
    doc = store.doc_ids(np.arange(n))
    assert not (store.doc_ids(ids) == doc[:, None]).any()
    split = load_split(built)
    assert split is not None and split.is_validation(np.unique(doc)).any()
    assert not split.is_validation(store.doc_ids(ids)).any()
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # the shards line up with the chunk shards and hold every id once
    got = np.concatenate([pq.read_table(p, columns=["chunk_id"]).column(0).to_numpy()
                          for p in sorted((built / "neighbours/train").glob("*.parquet"))])
    assert np.array_equal(got, np.arange(n))


def test_neighbours_agree_with_brute_force(built):
    """Measured on the example corpus (874 chunks, IVF16,PQ32x4): at the calibrated
    nprobe, 94% of the stage's neighbours are exact filtered top-2 neighbours (ties
    counted) and 89% of chunks have both; the calibration's own estimate agrees."""
    import json

    ids, _ = NeighbourTable(built).lookup(np.arange(TokenStore(built).n_chunks))
    gt_s, gt_i, s = exact_filtered(built, 2, CFG.val_fraction, CFG.split_seed)
    got_s = np.take_along_axis(s, ids, axis=1)  # exact scores of what the stage returned
    hit = got_s >= gt_s[:, -1:] - 1e-4
    per_neighbour, per_query = float(hit.mean()), float(hit.all(axis=1).mean())
    print(f"filtered neighbours equal to brute force: {per_neighbour:.3f} of neighbours, "
          f"{per_query:.3f} of queries")
    assert per_neighbour >= 0.9 and per_query >= 0.85
    rec = json.loads((built / "neighbours/train/manifest.json").read_text())["recall"]
    assert rec["reached"] and rec["recall"] >= 0.9
    assert abs(rec["recall"] - per_neighbour) < 0.03  # all chunks were the sample
    index_nprobe = json.loads((built / "index/manifest.json").read_text())["recall"][
        "chosen"]["nprobe"]
    assert rec["nprobe"] >= index_nprobe and rec["points"][0]["nprobe"] == index_nprobe


def test_continuation_is_the_next_chunk_of_the_same_document(built):
    nb = Neighbours(built)
    store = TokenStore(built)
    q = np.arange(0, store.n_chunks, 7)
    blocks = nb.blocks(q)
    ids = nb.ids(q)
    m = store.chunk_size
    assert blocks.shape == (len(q), 2, 2 * m)
    assert np.array_equal(blocks[..., :m], store.tokens(ids))
    nxt = ids + 1
    same = (nxt < store.n_chunks) & (store.doc_ids(np.minimum(nxt, store.n_chunks - 1))
                                     == store.doc_ids(ids))
    assert same.any()
    cont = np.where(same[..., None], store.tokens(np.where(same, nxt, -1)), 0)
    assert np.array_equal(blocks[..., m:], cont)
    lens = nb.lengths(q)
    assert ((lens[..., 1] == 0) == ~same).all()
    # the last chunk of every document, and the chunk before it, as neighbours: the
    # last has only padding as its continuation, the one before has the last
    doc = store.doc_ids(np.arange(store.n_chunks))
    last = np.flatnonzero(np.r_[doc[1:] != doc[:-1], True])
    ids2 = np.stack([last, last - 1], axis=1)  # (docs, 2): shaped like neighbour ids
    b2 = store.neighbour_blocks(ids2)
    assert (b2[:, 0, m:] == 0).all()
    assert np.array_equal(b2[:, 1, m:], store.tokens(last))
    assert np.array_equal(b2[:, 1, :m], store.tokens(last - 1))


def test_two_workers_equal_one_and_rerun_adds_nothing(built, tmp_path):
    db = copy_db(built, tmp_path / "db")
    shutil.rmtree(db / "neighbours")
    r = build_neighbours(db, NeighboursConfig(**{**CFG.__dict__, "workers": 2}))
    assert r.shards_done == 3 and r.queries == TokenStore(db).n_chunks
    assert shard_bytes(db) == shard_bytes(built)
    again = build_neighbours(db, CFG)
    assert again.shards_done == 0 and again.queries == 0


def test_resume_after_a_crash_is_identical(built, tmp_path, monkeypatch):
    import retrodb.stages.neighbours.stage as nmod

    db = copy_db(built, tmp_path / "db")
    shutil.rmtree(db / "neighbours")
    real = nmod.NeighboursWorker.run

    def crash_on_shard_1(self, task, out):
        if task.shard == 1:
            raise RuntimeError("injected crash")
        return real(self, task, out)

    monkeypatch.setattr(nmod.NeighboursWorker, "run", crash_on_shard_1)
    with pytest.raises(RuntimeError, match="injected"):
        build_neighbours(db, CFG)
    monkeypatch.setattr(nmod.NeighboursWorker, "run", real)
    r = build_neighbours(db, CFG)
    assert r.shards_done == 2  # shard 0 was finished before the crash
    assert shard_bytes(db) == shard_bytes(built)
    # a corrupted shard is found by its checksum and recomputed
    p = db / "neighbours/train/00002.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    assert build_neighbours(db, CFG).redone == 1
    assert shard_bytes(db) == shard_bytes(built)


def test_no_exclusion_returns_the_chunk_itself_and_warns(built, tmp_path):
    db = copy_db(built, tmp_path / "db")
    notes = []
    cfg = NeighboursConfig(set="self", k=1, exclude_same_doc=False,
                           exclude_validation=False)
    build_neighbours(db, cfg, on_note=notes.append)
    ids, _ = NeighbourTable(db, "self").lookup(np.arange(50))
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.9  # itself (or an identical chunk)
    assert any("finds itself" in n for n in notes)


@pytest.fixture(scope="module")
def dup_pair(corpus_files, tmp_path_factory):
    """A database of 3 documents and a query database holding a copy of one of them."""
    from retrodb.stages.index import IndexConfig, build_index

    root = tmp_path_factory.mktemp("dup")
    files = sorted(corpus_files, key=lambda p: p.stat().st_size)[:3]
    (root / "src").mkdir()
    (root / "val").mkdir()
    for f in files:
        shutil.copy(f, root / "src" / f.name)
    shutil.copy(files[-1], root / "val" / ("copy-" + files[-1].name))
    db, qdb = root / "db", root / "qdb"
    chunk_corpus(db, [str(root / "src")], ChunkConfig(split_size=40_000))
    chunk_corpus(qdb, [str(root / "val")], ChunkConfig(split_size=40_000))
    fill_embeddings(db)
    fill_embeddings(qdb)
    build_index(db, IndexConfig(factory="IVF4,Flat", recall_queries=200))
    return db, qdb


def test_leakage_filter_removes_a_planted_duplicate(dup_pair):
    db, qdb = dup_pair
    notes = []
    base = dict(k=2, queries=str(qdb), exclude_validation=False)
    build_neighbours(db, NeighboursConfig(set="leaky", **base), on_note=notes.append)
    n = TokenStore(qdb).n_chunks
    ids, scores = NeighbourTable(db, "leaky").lookup(np.arange(n))
    qt, dt = TokenStore(qdb), TokenStore(db)
    # every query chunk has its verbatim copy in the database, found first
    assert (dt.tokens(ids[:, 0]) == qt.tokens(np.arange(n))).all(axis=1).mean() >= 0.95
    assert any("verbatim (r = 1)" in x for x in notes)
    # r is measured on the chunk the neighbours help predict, C_{u+1}, against the
    # copy and its continuation: 1 wherever the next chunk is a whole one
    nxt = qt.continuation_ids(np.arange(n))
    whole = (nxt >= 0) & (qt.rows(nxt)["length"] == 64)
    rep = neighbours_report(db, "leaky")
    assert rep["r_hist"][-1] >= 0.95 * whole.sum()
    assert rep["duplicates"] == rep["r_hist"][-1]

    build_neighbours(db, NeighboursConfig(set="clean", exclude_overlap=0.2, **base))
    ids, _ = NeighbourTable(db, "clean").lookup(np.arange(n))
    copied = (dt.tokens(ids[:, 0]) == qt.tokens(np.arange(n))).all(axis=1)
    assert not copied[whole].any()
    rep = neighbours_report(db, "clean")
    assert rep["dropped_overlap"] >= whole.sum() and sum(rep["r_hist"][5:]) == 0
    # the copies dropped, the search widened: every query still has its k neighbours
    assert rep["short"] == 0 and (ids >= 0).all()
    from retrodb.stores.overlap import block_rows, leakage, predicted_rows

    target = predicted_rows(qt, np.arange(n))
    blocks, lengths = block_rows(dt, ids)
    r = leakage(target["tokens"], target["length"], blocks, lengths, 64)
    assert (r <= 0.2).all()
    # the filter keeps nothing the unfiltered set would have dropped for that reason
    assert r.shape == (n, 2)


def test_appended_query_shards_are_searched_alone(dup_pair, corpus_files, tmp_path):
    db, qdb = dup_pair
    db = copy_db(db, tmp_path / "db")
    qdb = copy_db(qdb, tmp_path / "qdb")
    cfg = NeighboursConfig(set="val", k=2, queries=str(qdb), exclude_validation=False)
    build_neighbours(db, cfg)
    before = shard_bytes(db, "val")
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(sorted(corpus_files)[0], extra / "more.rst.txt")
    chunk_corpus(qdb, [str(extra)], ChunkConfig(split_size=40_000))
    fill_embeddings(qdb)
    r = build_neighbours(db, cfg)
    after = shard_bytes(db, "val")
    assert r.shards_done == len(after) - len(before) > 0
    assert {k: after[k] for k in before} == before


@pytest.mark.parametrize("change, message", [
    (dict(k=3), "other settings"),
    (dict(set="../x"), "--set"),
    (dict(k=0), "-k 0"),
    (dict(exclude_overlap=1.5), "--exclude-overlap"),
])
def test_bad_options_and_changed_settings(built, change, message):
    with pytest.raises(RetrodbError, match=message):
        build_neighbours(built, NeighboursConfig(**{**CFG.__dict__, **change}))


def test_bad_inputs(built, dup_pair, tmp_path):
    db, qdb = dup_pair
    with pytest.raises(RetrodbError, match="only 874 chunks"):
        build_neighbours(built, NeighboursConfig(k=1000))
    with pytest.raises(RetrodbError, match="another database"):
        build_neighbours(db, NeighboursConfig(set="x", queries=str(qdb),
                                              exclude_same_doc=True))
    # a query database with another chunk size
    other = tmp_path / "other"
    chunk_corpus(other, [str(qdb.parent / "val")], ChunkConfig(chunk_size=32))
    with pytest.raises(RetrodbError, match="chunk size 32"):
        build_neighbours(db, NeighboursConfig(set="y", queries=str(other)))
    # no index; then an index built before more chunks were embedded
    noidx = copy_db(db, tmp_path / "noidx")
    shutil.rmtree(noidx / "index")
    with pytest.raises(RetrodbError, match="no index"):
        build_neighbours(noidx, NeighboursConfig(set="z"))
    stale = copy_db(db, tmp_path / "stale")
    chunk_corpus(stale, [str(qdb.parent / "val")], ChunkConfig(split_size=40_000))
    fill_embeddings(stale)
    with pytest.raises(RetrodbError, match="other embeddings"):
        build_neighbours(stale, NeighboursConfig(set="z"))


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_build_report_and_errors(built, tmp_path):
    db = copy_db(built, tmp_path / "db")
    p = run("neighbours", "--db", str(db), "--set", "cli", "-k", "3", "--workers", "2")
    assert p.returncode == 0, p.stderr
    assert "874 query chunks × k 3" in p.stderr
    p = run("neighbours", "report", "--db", str(db), "--set", "cli")
    assert p.returncode == 0 and "r = 1 (copy)" in p.stdout
    p = run("neighbours", "report", "--db", str(db), "--set", "cli", "--json")
    import json

    assert sum(json.loads(p.stdout)["r_hist"]) == 874 * 3
    for args, msg in [(["--db", str(db), "--set", "cli", "-k", "2"], "other settings"),
                      (["--db", str(tmp_path / "none")], "retrodb.json"),
                      (["report", "--db", str(db), "--set", "nope"], "no neighbours")]:
        p = run("neighbours", *args)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_verify_checks_and_recomputes_neighbour_shards(built, tmp_path):
    import pyarrow as pa

    from retrodb.core.manifest import Manifest, file_record
    from retrodb.ops.verify import verify

    db = copy_db(built, tmp_path / "db")
    rep = verify(db, sample=1.0)
    assert rep.ok, rep.findings
    assert sum(r.startswith("neighbours/train/") for r in rep.recomputed) == 3
    # a shard rewritten with an id outside the database, its manifest entry updated to
    # match (so only the content checks can tell)
    d = db / "neighbours/train"
    t = pq.read_table(d / "00001.parquet")
    nb = t.column("neighbours").combine_chunks().flatten().to_numpy().copy()
    nb[0] = 10**9
    t = t.set_column(1, "neighbours", pa.FixedSizeListArray.from_arrays(pa.array(nb), 2))
    pq.write_table(t, d / "00001.parquet")
    m = Manifest(d, "neighbours")
    m.record({**m.entry(1), **file_record(d / "00001.parquet", "00001.parquet")})
    rep = verify(db, sample=1.0)
    msgs = [f.message for f in rep.findings if f.level == "error"]
    assert any("outside the database" in x for x in msgs)
    assert any("differs from the stored shard" in x for x in msgs)
