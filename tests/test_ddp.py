"""The same `retrodb train` command under torchrun (DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus

from neighbour_fixture import write_neighbours


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test on Linux only")
def test_train_under_torchrun_then_resume_alone(tmp_path, corpus):
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=40_000))
    write_neighbours(db, "train", k=2)
    # --run-name: torchrun's own parser would take --run for its --run-path
    args = ["train", "--db", str(db), "--run-name", "ddp", "--preset", "tiny",
            "--seq-chunks", "2", "--batch-size", "4", "--val-fraction", "0.2",
            "--eval-sequences", "2", "--checkpoint-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "retrodb.cli.main", *args,
                        "--steps", "2"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-6000:]
    lines = (db / "models/ddp/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # rank 0 writes, once
    assert (db / "models/ddp/checkpoints/step-000002/model.safetensors").exists()
    p = subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args, "--steps", "3",
                        "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-6000:]
    assert json.loads((db / "models/ddp/metrics.jsonl").read_text().splitlines()[-1])[
        "step"] == 3
