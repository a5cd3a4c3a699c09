"""Object stores: inputs and the database on S3 (moto's server mode on localhost, a real
S3 endpoint) through chunk → embed → index → neighbours → query, byte-identical to the
same run on a local disk; and every object-store failure is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retrodb.core.db import Database
from retrodb.core.errors import RetrodbError
from retrodb.stages.chunk import ChunkConfig, chunk_corpus

from dbread import shard_bytes
from s3_server import s3, start, upload  # noqa: F401 - the fixture

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
FACTORY = "IVF16,PQ32x4"


def fetch(client, bucket: str, prefix: str, dst: Path) -> Path:
    """Download s3://bucket/prefix/ into dst (to compare bytes)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            if not rel or rel.endswith("/"):
                continue  # a directory marker
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(out))
    return dst


def files(d: Path, sub: str, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((d / sub).glob(pattern))}


def test_the_pipeline_on_s3_equals_the_same_run_on_disk(s3, tmp_path):
    import retrodb
    from retrodb.stages.embed import EmbedConfig, embed_db
    from retrodb.stages.index import IndexConfig, build_index
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours

    s3.create_bucket(Bucket="corpus")
    s3.create_bucket(Bucket="dbs")
    upload(s3, "corpus", "docs", CORPUS)
    runs = {"s3://dbs/one": ("s3://corpus/docs/", "s3://corpus/docs"),
            str(tmp_path / "local"): (str(CORPUS), str(CORPUS))}
    for db, (inputs, root) in runs.items():
        chunk_corpus(db, [inputs], ChunkConfig(split_size=80_000, root=root, workers=2))
        embed_db(db, EmbedConfig())
        build_index(db, IndexConfig(factory=FACTORY, recall_queries=300, workers=2))
        build_neighbours(db, NeighboursConfig(k=2, val_fraction=0.2))
    remote = fetch(s3, "dbs", "one", tmp_path / "fetched")
    local = tmp_path / "local"
    assert shard_bytes(remote) == shard_bytes(local)  # chunks and docs
    for sub, pat in (("embeddings", "0*.npy"), ("tokens", "0*.npy"),
                     ("index", "*.invlists"), ("index", "merged.*"),
                     ("neighbours/train", "0*.parquet")):
        got, want = files(remote, sub, pat), files(local, sub, pat)
        assert got and got == want, sub
    a = retrodb.open("s3://dbs/one").search("How do I define a class?", k=3)[0]
    b = retrodb.open(local).search("How do I define a class?", k=3)[0]
    assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
    assert a[0].source == b[0].source and not a[0].source.startswith(("/", "s3:"))
    # and the database verifies where it lies
    from retrodb.ops.verify import verify

    rep = verify("s3://dbs/one", sample=0.5, root="s3://corpus/docs")
    assert rep.ok, rep.findings
    assert any(x.startswith("chunks/") for x in rep.recomputed)


def cli(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=300)


def one_error(p) -> str:
    lines = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_missing_bucket_unreachable_endpoint_and_refused_credentials(s3, tmp_path):
    line = one_error(cli("chunk", CORPUS, "--db", "s3://no-such-bucket/db"))
    assert "s3://no-such-bucket: no such bucket" in line
    line = one_error(cli("info", "s3://dbs/none", env={
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}))
    assert "cannot reach the object store" in line and "AWS_ENDPOINT_URL" in line
    proc, url = start({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # an S3 that checks keys
    try:
        line = one_error(cli("info", "s3://dbs/one", env={"AWS_ENDPOINT_URL": url}))
        assert "credentials refused" in line
    finally:
        proc.terminate()
    assert not (tmp_path / "db").exists()


def test_a_dead_writer_holds_the_lock_for_one_lease(s3, tmp_path, monkeypatch):
    import retrodb.core.remote as remote

    s3.create_bucket(Bucket="locks")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from retrodb.core.db import Database\n"
        "with Database('s3://locks/db').chunks.lock('the chunk stage'):\n"
        "    print('locked', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # the node dies holding the lock
    holder.wait()
    with pytest.raises(RetrodbError, match=r"another retrodb process \(pid \d+ .*releases"):
        with Database("s3://locks/db").chunks.lock("the chunk stage"):
            pass
    monkeypatch.setattr(remote, "LEASE_S", 1.0)
    time.sleep(1.5)
    with Database("s3://locks/db").chunks.lock("the chunk stage"):  # taken over
        with pytest.raises(RetrodbError, match="another retrodb process"):
            with Database("s3://locks/db").chunks.lock("the chunk stage"):
                pass
