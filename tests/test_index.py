"""The index stage: sharded = single index, recall against exact search, resume, append,
bad input, and the pinned faiss/autofaiss behaviour it relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from index_fixtures import FAKE_FACTORY, all_keys, copy_db
from embed_contract import fake_embeddings
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.stages.index import (IndexConfig, add_parts, build_index, choose_factory,
                                  merge_index, train_index)
from retrodb.stores.searcher import IndexSearcher
from retrodb.core.db import Database
from retrodb.core.manifest import Manifest
from retrodb.core.storage import sha256_file

faiss = pytest.importorskip("faiss")


def manifest(db: Path) -> Manifest:
    return Manifest(db / "index", "index")


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force with numpy, independent of retrodb: scores and ids, best first."""
    s = q @ x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


# --------------------------------------------------------------------------------------
# Correctness


def one_in_ram_index(db: Path):
    """The trained index with every key added by one `add_with_ids`, in RAM."""
    x = all_keys(db)
    ref = faiss.read_index(str(db / "index" / "trained.faiss"))
    ref.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return ref


def test_sharded_add_and_packed_merge_equal_one_in_ram_index(indexed_db):
    """3 parts added by 2 workers and merged into fast-scan lists on disk = faiss's own
    fast-scan conversion of one in-RAM index.add of everything: the same packed bytes
    and ids in every list, the same results at every nprobe."""
    m = manifest(indexed_db)
    assert [e["shard"] for e in m.shards] == [0, 1, 2]
    assert m.data["merged"]["format"] == "fast-scan"
    x = all_keys(indexed_db)
    plain = one_in_ram_index(indexed_db)
    ref = faiss.IndexIVFPQFastScan(faiss.downcast_index(plain))
    s = IndexSearcher(indexed_db, candidates=0)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(s.index))
    assert isinstance(ivf, faiss.IndexIVFPQFastScan) and s.ntotal == len(x)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)  # memory-mapped, not in RAM
    for i in range(ivf.nlist):
        n = ref.invlists.list_size(i)
        assert lists.list_size(i) == n
        nbytes = (n + 31) // 32 * 32 * ivf.code_size
        np.testing.assert_array_equal(
            faiss.rev_swig_ptr(lists.get_codes(i), nbytes),
            faiss.rev_swig_ptr(ref.invlists.get_codes(i), nbytes))
        np.testing.assert_array_equal(faiss.rev_swig_ptr(lists.get_ids(i), n),
                                      faiss.rev_swig_ptr(ref.invlists.get_ids(i), n))
    for nprobe in (1, 4, 16):
        ref.nprobe = nprobe
        d_ref, i_ref = ref.search(x, 10)
        d, i = s.search(x, 10, nprobe=nprobe, candidates=0)
        np.testing.assert_array_equal(i, i_ref)
        np.testing.assert_array_equal(d, d_ref)


def test_codes_other_than_4_bit_are_merged_as_they_are(fake_db):
    """2-bit PQ (no fast-scan layout): the merged on-disk lists = one in-RAM index."""
    build_index(fake_db, IndexConfig(factory="IVF8,PQ8x2", workers=2, recall_queries=50))
    assert "format" not in manifest(fake_db).data["merged"]
    x = all_keys(fake_db)
    ref = one_in_ram_index(fake_db)
    s = IndexSearcher(fake_db, candidates=0)
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(s.index)),
                      faiss.IndexIVFPQ)
    for nprobe in (1, 8):
        faiss.extract_index_ivf(ref).nprobe = nprobe
        np.testing.assert_array_equal(s.search(x, 10, nprobe=nprobe, candidates=0)[1],
                                      ref.search(x, 10)[1])


def test_fast_scan_finds_what_the_plain_pq_scan_finds(indexed_db):
    """Fast-scan rounds its lookup tables to 8 bits: near-identical rankings to the
    plain PQ scan of the same codes; re-ranked, the scores are exact."""
    x = all_keys(indexed_db)
    fast = IndexSearcher(indexed_db, candidates=0)
    plain = one_in_ram_index(indexed_db)
    faiss.extract_index_ivf(plain).nprobe = 16
    _, i_fast = fast.search(x, 10, nprobe=16, candidates=0)
    _, i_plain = plain.search(x, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_fast, i_plain)])
    assert overlap >= 0.95
    s_fast, r_fast = fast.search(x, 10, nprobe=16, candidates=40)
    got = np.einsum("qkd,qd->qk", x[np.maximum(r_fast, 0)], x)
    np.testing.assert_allclose(s_fast, got, rtol=1e-5, atol=1e-5)


def test_a_plain_4_bit_merge_of_an_earlier_release_is_refused_then_migrated(
        indexed_db, tmp_path, monkeypatch):
    """4-bit lists merged in the plain layout (as the previous release did): searching
    says how to re-merge; `retrodb index` re-merges them as fast-scan lists without
    retraining, and the searches then equal a fresh build's."""
    import retrodb.stages.index.merge as merge_mod

    x = all_keys(indexed_db)[:100]
    want = IndexSearcher(indexed_db).search(x, 10, 4, 40)
    db = copy_db(indexed_db, tmp_path / "old")
    monkeypatch.setattr(merge_mod, "packable", lambda index: False)
    m = manifest(db)
    merge_mod.merge_parts(Database(db), m, m.shards, [
        {"shard": e["shard"], "sha256": e["sha256"]} for e in m.shards], None)
    assert "format" not in manifest(db).data["merged"]
    with pytest.raises(RetrodbError, match="earlier retrodb in the plain layout; run "
                       f"`retrodb index --db {db}` once"):
        IndexSearcher(db)
    monkeypatch.undo()
    trained = manifest(db).data["trained"]["sha256"]
    r = build_index(db, IndexConfig(factory="IVF16,PQ32x4", recall_queries=50))
    assert r.merged and manifest(db).data["trained"]["sha256"] == trained
    assert [n for n in r.notes if "merged again as fast-scan lists" in n]
    assert manifest(db).data["merged"]["format"] == "fast-scan"
    np.testing.assert_array_equal(IndexSearcher(db).search(x, 10, 4, 40)[1], want[1])

    def no_read(path):  # a current fast-scan merge is not re-examined
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(merge_mod, "read_index", no_read)
    r = build_index(db, IndexConfig(factory="IVF16,PQ32x4", recall_queries=50))
    assert not r.merged and not r.notes


def test_recall_at_chosen_operating_point_reaches_target(indexed_db):
    """recall@10 vs exact search (numpy brute force here) ≥ 0.9, as the manifest says."""
    rec = manifest(indexed_db).data["recall"]
    chosen = rec["chosen"]
    assert rec["reached"] and rec["queries"] >= 874
    x = all_keys(indexed_db)
    gt_s, _ = exact_topk(x, x, 10)
    _, ids = IndexSearcher(indexed_db).search(x, 10)  # the chosen nprobe and candidates
    assert ids.shape == (874, 10)
    # a hit is a result whose exact score reaches the 10th exact score (ties counted)
    got = np.where(ids >= 0, np.einsum("qkd,qd->qk", x[np.maximum(ids, 0)], x), -np.inf)
    recall = float((got >= gt_s[:, 9:10] - 1e-4).mean())
    assert recall >= 0.9
    # chosen on half of the queries, reported on the other half: not flattered
    held = rec["held_out"]
    assert held["queries"] + rec["tuning_queries"] == rec["queries_used"] == 874
    assert abs(held["recall@10"] - recall) < 0.03 and held["recall@10"] >= 0.88
    # re-ranking is what gets there: PQ codes alone stay well below at the same nprobe
    pq_only = [p for p in rec["sweep"] if p["candidates"] == 0 and
               p["nprobe"] == chosen["nprobe"]]
    assert chosen["candidates"] > 0 and pq_only[0]["recall@10"] < 0.9
    # the chosen nprobe is the smallest reaching the target, with the fewest candidates
    assert all(p["recall@10"] < rec["target"] for p in rec["sweep"]
               if p["nprobe"] < chosen["nprobe"] or (p["nprobe"] == chosen["nprobe"] and
                                                     p["candidates"] < chosen["candidates"]))


def test_parts_are_identical_for_any_number_of_workers(fake_db, tmp_path):
    other = copy_db(fake_db, tmp_path / "other")
    cfg = IndexConfig(factory=FAKE_FACTORY, recall_queries=100)
    build_index(fake_db, cfg)
    build_index(other, IndexConfig(factory=FAKE_FACTORY, recall_queries=100, workers=2))
    a, b = manifest(fake_db), manifest(other)
    assert a.data["trained"]["sha256"] == b.data["trained"]["sha256"]
    assert [e["sha256"] for e in a.shards] == [e["sha256"] for e in b.shards]


def test_add_resumes_after_a_crash(fake_db, tmp_path, monkeypatch):
    clean = copy_db(fake_db, tmp_path / "clean")
    cfg = IndexConfig(factory=FAKE_FACTORY, recall_queries=200)
    train_index(fake_db, cfg)
    from retrodb.stages.index.add import AddWorker

    real = AddWorker.run

    def crash_on_shard_1(self, task, out):
        if task.shard == 1:
            out.main().write_bytes(b"half a part")  # what a killed worker leaves behind
            raise KeyboardInterrupt
        return real(self, task, out)

    monkeypatch.setattr(AddWorker, "run", crash_on_shard_1)
    with pytest.raises(KeyboardInterrupt):
        add_parts(fake_db, cfg)
    m = manifest(fake_db)
    assert [e["shard"] for e in m.shards] == [0]
    part0 = fake_db / "index" / "00000.invlists"
    before = (sha256_file(part0), part0.stat().st_mtime_ns)
    with pytest.raises(RetrodbError, match=r"no current part for embedding shard\(s\) 1-2"):
        merge_index(fake_db, cfg)
    monkeypatch.setattr(AddWorker, "run", real)
    (fake_db / "index" / ".tmp-00001.invlists").write_bytes(b"left by a SIGKILL")
    result = add_parts(fake_db, cfg)
    assert result.parts_added == 2 and result.vectors_added == 874 - m.shards[0]["rows"]
    assert (sha256_file(part0), part0.stat().st_mtime_ns) == before  # not redone
    assert not list((fake_db / "index").glob(".tmp-*"))
    merge_index(fake_db, cfg)
    build_index(clean, cfg)
    assert [e["sha256"] for e in manifest(fake_db).shards] == \
        [e["sha256"] for e in manifest(clean).shards]
    x = all_keys(fake_db)
    assert manifest(fake_db).data["recall"]["chosen"] == {
        **manifest(clean).data["recall"]["chosen"],
        "ms_per_query": manifest(fake_db).data["recall"]["chosen"]["ms_per_query"]}
    for nprobe, cand in ((2, 0), (8, 40)):
        np.testing.assert_array_equal(IndexSearcher(fake_db).search(x, 5, nprobe, cand)[1],
                                      IndexSearcher(clean).search(x, 5, nprobe, cand)[1])
    # a rerun does nothing
    again = build_index(fake_db, cfg)
    assert not again.trained and again.parts_added == 0 and not again.merged


def test_appended_shards_are_added_alone(fake_db, tmp_path):
    cfg = IndexConfig(factory=FAKE_FACTORY, recall_queries=200)
    first = build_index(fake_db, cfg)
    assert first.trained and first.parts_added == 3 and first.merged
    m = manifest(fake_db)
    old = m.data["merged"]
    parts = {e["shard"]: e["sha256"] for e in m.shards}
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "appended.txt").write_text(" ".join(f"appended sentence number {i} about "
                                                 f"the retrieval index." for i in range(300)))
    chunk_corpus(fake_db, [str(extra)], ChunkConfig(split_size=40_000))
    fake_embeddings(fake_db)
    n = sum(e["rows"] for e in Manifest(fake_db / "chunks", "chunks").shards)
    second = build_index(fake_db, cfg)
    assert not second.trained and second.parts_added >= 1 and second.merged
    assert second.vectors_added == n - 874 and second.ntotal == n
    m = manifest(fake_db)
    assert all(parts[s] == e["sha256"] for s, e in ((e["shard"], e) for e in m.shards)
               if s in parts)  # old parts untouched
    assert m.data["merged"]["generation"] == old["generation"] + 1
    assert not (fake_db / "index" / old["file"]).exists()  # the old generation is gone
    assert m.data["recall"]["merged"] == m.data["merged"]["file"]
    x = all_keys(fake_db)
    _, ids = IndexSearcher(fake_db).search(x[-5:], 1, nprobe=8, candidates=50)
    assert list(ids[:, 0]) == list(range(n - 5, n))


# --------------------------------------------------------------------------------------
# Choosing the index


def test_autofaiss_choice_for_vector_counts():
    def auto(*a, **kw):
        return choose_factory(*a, chooser="autofaiss", **kw)

    assert auto(874, 384, "8G")[0] == "IVF1,Flat"
    key, how = auto(5_000, 384, "8G")
    assert key == "IVF128,Flat" and "lowered" in how  # 39 × 128 ≤ 5000
    key, how = auto(51_000, 384, "8G")  # codes capped at 64 B (re-ranked)
    assert key == "OPQ64_448,IVF1024_HNSW32,PQ64x8" and "codes ≤ 64 B" in how
    key, _ = auto(51_000, 384, "8G", max_code_bytes=256)  # autofaiss alone
    assert key == "OPQ256_512,IVF1024_HNSW32,PQ256x8"
    key, _ = auto(51_000, 384, "1500K")  # ~30 B/vector: the budget decides
    assert key.endswith(",PQ16x8")
    with pytest.raises(RetrodbError, match="--memory-budget 1M: too small for 10,000,000"):
        auto(10_000_000, 384, "1M")


def test_retrodb_rule_for_vector_counts():
    """~4√n lists (≥ 39 training vectors each), HNSW from 8,192 lists, one 4-bit
    sub-quantizer per 4 dimensions, codes within --max-code-bytes."""
    assert choose_factory(874, 32, "8G")[0] == "IVF16,PQ8x4"
    assert choose_factory(1_200_000, 384, "8G")[0] == "IVF4096,PQ96x4"
    assert choose_factory(5_000_000, 384, "8G")[0] == "IVF8192_HNSW32,PQ96x4"
    assert choose_factory(30_000_000_000, 384, "2T")[0] == "IVF524288_HNSW32,PQ96x4"
    assert choose_factory(1_000_000, 768, "8G")[0] == "IVF4096,PQ128x4"  # 64 B cap
    assert choose_factory(1_000_000, 384, "8G", max_code_bytes=16)[0].endswith(",PQ32x4")
    # too few to train a 16-centroid codebook: exact float32 lists
    assert choose_factory(100, 384, "8G")[0] == "IVF2,Flat"
    assert choose_factory(20, 384, "8G")[0] == "IVF1,Flat"
    with pytest.raises(RetrodbError, match="--memory-budget 1M: 1,000,000 vectors need"):
        choose_factory(1_000_000, 384, "1M")


def test_default_factory_on_the_example_corpus(fake_db):
    r = build_index(fake_db, IndexConfig(recall_queries=100))
    assert r.factory == "IVF16,PQ8x4" and r.chosen_by.startswith("retrodb rule")
    assert r.recall["reached"] and r.recall["chosen"]["recall@10"] >= 0.9
    t = manifest(fake_db).data["trained"]
    assert t["kmeans"] == "flat" and t["layout"] == 2
    r = build_index(fake_db, IndexConfig(recall_queries=100, chooser="autofaiss",
                                         rebuild=True))
    assert r.trained and r.factory == "IVF1,Flat"  # --rebuild replaced it


def test_pinned_versions_and_the_faiss_behaviour_relied_on():
    assert metadata.version("faiss-cpu").startswith("1.15.")
    assert metadata.version("autofaiss") == "2.18.0"
    assert int(np.__version__.split(".")[0]) < 2
    # why autofaiss's own builder is not used: keyword constructors are refused
    with pytest.raises(TypeError):
        faiss.OPQMatrix(384, M=32)
    for name in ("OnDiskInvertedLists", "read_InvertedLists", "write_InvertedLists",
                 "IO_FLAG_ONDISK_SAME_DIR", "IO_FLAG_READ_ONLY", "ResultHeap"):
        assert hasattr(faiss, name)


# --------------------------------------------------------------------------------------
# Bad input


def test_missing_or_incomplete_embeddings(chunked_db, tmp_path):
    db = copy_db(chunked_db, tmp_path / "db")
    with pytest.raises(RetrodbError, match=r"no embeddings; run `retrodb embed"):
        build_index(db, IndexConfig(factory=FAKE_FACTORY))
    fake_embeddings(db, shards=[0, 2])
    with pytest.raises(RetrodbError, match=r"incomplete \(1 of 3 shards: missing or truncated for "
                                           r"chunk shard\(s\) 1\)"):
        build_index(db, IndexConfig(factory=FAKE_FACTORY))


def test_dimension_mismatch_between_index_and_embeddings(fake_db):
    train_index(fake_db, IndexConfig(factory=FAKE_FACTORY))
    import shutil

    shutil.rmtree(fake_db / "embeddings")
    fake_embeddings(fake_db, dim=16)
    with pytest.raises(RetrodbError, match="dimension 32, the embeddings have 16"):
        build_index(fake_db, IndexConfig())
    with pytest.raises(RetrodbError, match="dimension 32, the embeddings have 16"):
        add_parts(fake_db, IndexConfig())


@pytest.mark.parametrize("factory,message", [
    ("IVF16(IVF4),PQ8", r"--factory 'IVF16\(IVF4\),PQ8': faiss rejects it \(could not "
                        r"parse index string"),
    ("IVF8,PQ7x8", r"--factory 'IVF8,PQ7x8': faiss rejects it \("),
    ("HNSW32", r"not an IVF index"),
    ("IVF8,PQ8x4fs", r"cannot be sharded and merged on disk; give plain 4-bit PQ"),
    ("IVF1024,PQ8x4", r"at least 39 × 1024 lists = 39,936 training vectors, the sample "
                      r"has 874"),
    ("IVF8,PQ4x8", r"at least 39 × 256 codebook centroids = 9,984 training vectors"),
])
def test_bad_factory_strings(fake_db, factory, message):
    with pytest.raises(RetrodbError, match=message):
        train_index(fake_db, IndexConfig(factory=factory))
    assert manifest(fake_db).data.get("trained") is None


def test_a_different_factory_is_refused_not_mixed(fake_db):
    train_index(fake_db, IndexConfig(factory=FAKE_FACTORY))
    with pytest.raises(RetrodbError, match="trained with --factory 'IVF8,PQ8x4', not "
                                           "'IVF4,Flat'; remove"):
        build_index(fake_db, IndexConfig(factory="IVF4,Flat"))


def test_metric_must_match_normalised_keys(chunked_db, tmp_path):
    db = copy_db(chunked_db, tmp_path / "db")
    fake_embeddings(db, normalize=False)
    with pytest.raises(RetrodbError, match="not marked normalize=true; the index uses "
                                           "inner product"):
        train_index(db, IndexConfig(factory=FAKE_FACTORY))
    from retrodb.core.db import Database

    d = Database(db)
    d.update_config(embedder={**d.config()["embedder"], "normalize": True})
    with pytest.raises(RetrodbError, match="sampled keys are not unit length"):
        train_index(db, IndexConfig(factory=FAKE_FACTORY))


def test_search_needs_a_merged_index(fake_db):
    train_index(fake_db, IndexConfig(factory=FAKE_FACTORY))
    with pytest.raises(RetrodbError, match=r"no merged index; build it with `retrodb index"):
        IndexSearcher(fake_db)


@pytest.mark.parametrize("cfg,message", [
    (dict(target_recall=1.5), "--target-recall 1.5"),
    (dict(candidates=(0, 5)), "at least k=10"),
    (dict(memory_budget="lots"), "--memory-budget 'lots'"),
    (dict(workers=0), "--workers 0"),
    (dict(train_size=0), "--train-size 0"),
])
def test_bad_options(cfg, message):
    with pytest.raises(RetrodbError, match=message):
        IndexConfig(**cfg).validate()


# --------------------------------------------------------------------------------------
# Command line


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_index_steps_json_and_info(fake_db):
    p = run("index", "train", "--db", str(fake_db), "--factory", FAKE_FACTORY, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["trained"] is True
    p = run("index", "add", "--db", str(fake_db), "--workers", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["parts_added"] == 3
    p = run("index", "merge", "--db", str(fake_db), "--recall-queries", "200")
    assert p.returncode == 0, p.stderr
    assert "chosen: nprobe" in p.stderr and p.stdout == ""
    # in a log the recall sweep is tab-separated lines, not a box-drawn table
    assert "nprobe\tcandidates\trecall@1" in p.stderr and "┃" not in p.stderr
    p = run("index", "--db", str(fake_db), "--recall-queries", "200", "--json")
    result = json.loads(p.stdout)  # stdout is JSON only (faiss's notices are silenced)
    assert result["parts_added"] == 0 and not result["merged"]
    p = run("info", str(fake_db), "--json")
    idx = json.loads(p.stdout)["stages"]["index"]
    chosen = manifest(fake_db).data["recall"]["chosen"]
    assert idx["nprobe"] == chosen["nprobe"] and idx["recall"] == chosen["recall@10"]
    # PQ8x4 + id, and each list's last fast-scan block filled to 32 vectors
    lists = fake_db / "index" / manifest(fake_db).data["merged"]["ivfdata"]["file"]
    assert idx["rows"] == 874 and idx["bytes_per_vector"] == round(
        lists.stat().st_size / 874, 1)
    assert 4 + 8 <= idx["bytes_per_vector"] <= (874 + 8 * 31) * (4 + 8) / 874
    p = run("info", str(fake_db))
    assert p.returncode == 0 and f"nprobe {chosen['nprobe']}" in p.stdout


def test_cli_errors_are_one_line(fake_db):
    p = run("index", "--db", str(fake_db), "--factory", "IVF16(IVF4),PQ8")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --factory") and \
        "could not parse" in lines[0]
    p = run("index", "merge", "--db", str(fake_db))
    assert p.returncode == 2 and "no trained index" in p.stderr
    p = run("index", "--factory", "IVF8,Flat")
    assert p.returncode == 2 and "--db" in p.stderr


def test_help_has_examples():
    for cmd in (["index"], ["index", "train"], ["index", "add"], ["index", "merge"],
                ["query"]):
        p = run(*cmd, "--help")
        assert p.returncode == 0 and "Example:" in p.stdout
