"""The Ray executor: same shards as the local one; killed tasks are retried."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from retrodb.stages.chunk import ChunkConfig, chunk_corpus  # noqa: E402
from retrodb.core.db import Database  # noqa: E402
from retrodb.exec.executors import ExecutorSpec  # noqa: E402
from retrodb.exec.runner import run_stage  # noqa: E402
from retrodb.stores.tokens import TokensStage, TokenStore, build_tokens  # noqa: E402

from dbread import shard_bytes  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    home = tmp_path_factory.mktemp("rayhome")
    old = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "PYTHONPATH")}
    os.environ["HOME"] = str(home)  # Ray writes under ~/.ray and its temp dir
    os.environ["RAY_TMPDIR"] = str(home)
    # workers import this module's helpers (KillOnce) by name
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_chunk_on_ray_equals_local(tmp_path, corpus, local_ray):
    cfg = dict(split_size=40_000, row_group_rows=128)
    chunk_corpus(tmp_path / "local", [str(corpus)], ChunkConfig(workers=2, **cfg))
    chunk_corpus(tmp_path / "ray", [str(corpus)], ChunkConfig(executor="ray", **cfg))
    assert shard_bytes(tmp_path / "local") == shard_bytes(tmp_path / "ray")


class KillOnce(TokensStage):
    """The token store stage, whose first attempt at every shard dies by SIGKILL."""

    def __init__(self, db, marks: Path):
        super().__init__(db)
        self.marks = marks

    def run(self, task, out):
        mark = self.marks / f"{task.shard}"
        if not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(task, out)


def test_killed_ray_tasks_are_retried(tmp_path, corpus, local_ray):
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=80_000))
    ref = tmp_path / "ref"
    chunk_corpus(ref, [str(corpus)], ChunkConfig(split_size=80_000))
    build_tokens(ref)

    marks = tmp_path / "marks"
    marks.mkdir()
    rep = run_stage(KillOnce(Database(db), marks), ExecutorSpec(kind="ray"))
    assert sorted(e["shard"] for e in rep.entries) == [0, 1, 2]  # each once: no duplicates
    assert len(list(marks.iterdir())) == 3  # every shard's first attempt was killed
    for name in ("00000.npy", "00001.npy", "00002.npy"):
        assert (db / "tokens" / name).read_bytes() == (ref / "tokens" / name).read_bytes()
    assert not list((db / "tokens").glob(".tmp-*"))
    assert TokenStore(db, build=False).n_chunks == TokenStore(ref).n_chunks


def test_embed_on_ray_equals_local(tmp_path, corpus_files, local_ray):
    """The embed stage's shard function as Ray tasks (model loaded once per Ray worker)
    writes the same key shards, byte for byte, as the local executor."""
    from retrodb.stages.embed import EmbedConfig, embed_db

    small = sorted(corpus_files, key=lambda p: p.stat().st_size)[:2]
    for name in ("local", "ray"):
        chunk_corpus(tmp_path / name, [str(p) for p in small], ChunkConfig(split_size=40_000))
    embed_db(tmp_path / "local", EmbedConfig())
    r = embed_db(tmp_path / "ray", EmbedConfig(executor="ray"))
    assert r.devices == ["ray:cpu"] and len(r.shards) >= 2
    keys = {name: {p.name: p.read_bytes()
                   for p in sorted((tmp_path / name / "embeddings").glob("*.npy"))}
            for name in ("local", "ray")}
    assert keys["local"] == keys["ray"]


def test_neighbours_on_ray_equal_local(indexed_db, tmp_path, local_ray):
    import shutil

    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours

    db = tmp_path / "db"
    shutil.copytree(indexed_db, db)
    build_neighbours(db, NeighboursConfig(set="local"))
    build_neighbours(db, NeighboursConfig(set="ray", executor="ray"))
    got = {name: {p.name: p.read_bytes()
                  for p in sorted((db / "neighbours" / name).glob("*.parquet"))}
           for name in ("local", "ray")}
    assert len(got["local"]) == 3 and got["local"] == got["ray"]
