"""A real multi-node run: a Ray cluster of three nodes on this machine (a head and two
worker nodes with their own resources, `ray.cluster_utils.Cluster`) runs chunk, embed,
index add and neighbours; in every stage a worker node is killed while shards are in
flight; the run finishes (Ray retries the lost tasks, or the same command is rerun) and
the output is byte-identical to a single-process run."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from retrodb.core.errors import RetrodbError  # noqa: E402
from retrodb.core.manifest import Manifest  # noqa: E402
from retrodb.stages.chunk import ChunkConfig, chunk_corpus  # noqa: E402
from retrodb.stages.embed import EmbedConfig, embed_db  # noqa: E402
from retrodb.stages.index import IndexConfig, build_index  # noqa: E402
from retrodb.stages.neighbours import NeighboursConfig, build_neighbours  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
SPLIT = 20_000
FACTORY = "IVF16,PQ32x4"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("rayhome")
    old = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR")}
    os.environ.update(HOME=str(home), RAY_TMPDIR=str(home))
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_killing_a_node(cluster, stage_dir: Path, stage_name: str, run) -> int:
    """Run `run()` in a thread; when its first shard is recorded, kill a worker node
    (and add a fresh one, so that three stay). A run the node's death stops is rerun.
    Returns how many runs it took."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("error", _try(run)))
    t.start()
    killed = False
    while t.is_alive():
        if not killed and (stage_dir / "manifest.json").exists() and \
                Manifest(stage_dir, stage_name).shards:
            victim = [n for n in cluster.worker_nodes][0]
            cluster.remove_node(victim, allow_graceful=False)
            cluster.add_node(num_cpus=1)
            killed = True
        time.sleep(0.05)
    t.join()
    assert killed, "the stage finished before a node could be killed"
    if box["error"] is not None:  # Ray gave up on the lost tasks: the same command again
        assert _try(run) is None
        return 2
    return 1


def _try(run):
    try:
        run()
        return None
    except (RetrodbError, ray.exceptions.RayError) as e:
        return e


def files(d: Path, sub: str, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / sub).glob(pattern))}


def test_four_stages_on_three_nodes_with_a_node_killed_in_each(cluster, tmp_path):
    ref, db = tmp_path / "ref", tmp_path / "db"
    chunk_corpus(ref, [str(CORPUS)], ChunkConfig(split_size=SPLIT, root=str(CORPUS)))
    embed_db(ref, EmbedConfig())
    idx = IndexConfig(factory=FACTORY, recall_queries=300)
    build_index(ref, idx)
    build_neighbours(ref, NeighboursConfig(k=2, val_fraction=0.2))

    ray_ = dict(executor="ray")
    runs = [
        ("chunks", lambda: chunk_corpus(db, [str(CORPUS)], ChunkConfig(
            split_size=SPLIT, root=str(CORPUS), **ray_))),
        ("embeddings", lambda: embed_db(db, EmbedConfig(**ray_))),
        ("index", lambda: build_index(db, IndexConfig(factory=FACTORY, recall_queries=300,
                                                      **ray_))),
        ("neighbours/train", lambda: build_neighbours(db, NeighboursConfig(
            k=2, val_fraction=0.2, **ray_))),
    ]
    for sub, run in runs:
        name = sub.split("/")[0]
        run_killing_a_node(cluster, db / sub, name, run)
    for sub, pat in (("chunks", "0*.parquet"), ("docs", "0*.parquet"),
                     ("embeddings", "0*.npy"), ("index", "*.invlists"),
                     ("index", "merged.*"), ("neighbours/train", "0*.parquet")):
        got, want = files(db, sub, pat), files(ref, sub, pat)
        assert got and got == want, sub
