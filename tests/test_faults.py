"""Fault injection across the pipeline: every stage killed by SIGKILL at several points
(retrodb.faults), rerun, and compared with an uninterrupted run.

Each case starts from a copy of the reference database as it was before the stage, runs
the stage's command with RETRODB_FAULT set (the process dies by SIGKILL at that point:
no exception handler, no cleanup), reruns the same command, and asserts that the
stage's output is byte-identical to the reference's, with no temporary file left and
every chunk id present once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"

COMMANDS = {
    "chunk": ["chunk", str(CORPUS), "--split-size", "80K"],
    "embed": ["embed"],
    "index": ["index", "--factory", "IVF8,PQ8x4", "--recall-queries", "200"],
    "neighbours": ["neighbours", "-k", "2"],
    "train": ["train", "--run", "t", "--preset", "tiny", "--steps", "4", "--batch-size",
              "2", "--seq-chunks", "2", "--checkpoint-every", "2", "--eval-every", "0",
              "--warmup", "1", "--eval-sequences", "1"],
}
ORDER = list(COMMANDS)

# (stage, fault point): the table in RELIABILITY.md
CASES = [
    ("chunk", "shard.written@2"), ("chunk", "shard.published@2"),
    ("chunk", "shard.recorded@1"),
    ("embed", "shard.written@2"), ("embed", "shard.published@1"),
    ("embed", "shard.recorded@2"),
    ("index", "index.trained"), ("index", "shard.published@2"),
    ("index", "shard.recorded@1"), ("index", "index.merge"),
    ("neighbours", "shard.written@1"), ("neighbours", "shard.published@2"),
    ("neighbours", "shard.recorded@2"),
    ("train", "train.step@3"), ("train", "train.checkpoint@1"),
]


def run(stage: str, db: Path, fault: str | None = None, resume: bool = False):
    env = {k: v for k, v in os.environ.items() if k not in ("RETRODB_DEBUG",
                                                            "RETRODB_FAULT")}
    if fault:
        env["RETRODB_FAULT"] = fault
    args = [sys.executable, "-m", "retrodb.cli.main", *COMMANDS[stage]]
    if stage != "chunk":
        args[4:4] = ["--db", str(db)]
    else:
        args += ["--db", str(db)]
    if resume:
        args.append("--resume")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """The database after each stage, built by the same commands uninterrupted."""
    root = tmp_path_factory.mktemp("faults-ref")
    snaps: dict[str, Path] = {}
    db = root / "db"
    for stage in ORDER:
        p = run(stage, db)
        assert p.returncode == 0, (stage, p.stderr)
        snaps[stage] = root / f"after-{stage}"
        shutil.copytree(db, snaps[stage])
    return snaps


def outputs(db: Path, stage: str) -> dict[str, bytes]:
    """The files a stage writes (not manifests: they hold timings)."""
    pats = {"chunk": ["chunks/*.parquet", "docs/*.parquet"], "embed": ["embeddings/*.npy"],
            "index": ["index/trained.faiss", "index/*.invlists", "index/merged.*"],
            "neighbours": ["neighbours/train/*.parquet"],
            "train": ["models/t/checkpoints/*/*.safetensors"]}[stage]
    return {str(p.relative_to(db)): p.read_bytes() for pat in pats
            for p in sorted(db.glob(pat))}


def losses(db: Path) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (db / "models/t/metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.mark.parametrize("stage, fault", CASES, ids=[f"{s}-{f}" for s, f in CASES])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(stage, fault, reference, tmp_path):
    db = tmp_path / "db"
    i = ORDER.index(stage)
    if i:
        shutil.copytree(reference[ORDER[i - 1]], db)
    p = run(stage, db, fault)
    assert p.returncode == -9, (p.returncode, p.stderr[-2000:])  # killed, not an error
    p = run(stage, db, resume=stage == "train")
    assert p.returncode == 0, p.stderr[-2000:]
    assert not list(db.rglob(".tmp-*")), "temporary files left behind"
    ref = reference[stage]
    got, want = outputs(db, stage), outputs(ref, stage)
    assert got.keys() == want.keys()
    differ = [k for k in got if got[k] != want[k]]
    assert not differ, differ
    if stage == "train":
        assert losses(db) == losses(ref)  # the same curve, no step twice
    if stage in ("chunk", "embed", "neighbours"):
        sub = {"chunk": "chunks", "embed": "embeddings", "neighbours": "neighbours/train"}
        m = json.loads((db / sub[stage] / "manifest.json").read_text())["shards"]
        firsts = np.array([e["first_id"] for e in m])
        rows = np.array([e["rows"] for e in m])
        assert firsts[0] == 0 and (firsts[1:] == (firsts + rows)[:-1]).all()  # dense, once
