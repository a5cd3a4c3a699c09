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
    # the same two steps in one process with the whole batch: the same losses (the
    # gradients of both ranks were averaged) and nearly the same weights
    one = ["train", *args[1:3], "--run-name", "one", *args[5:]]
    p1 = subprocess.run([sys.executable, "-m", "retrodb.cli.main", *one, "--steps", "2"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert p1.returncode == 0, p1.stderr[-3000:]
    ddp = [json.loads(x) for x in lines]
    single = [json.loads(x) for x in (db / "models/one/metrics.jsonl").read_text()
              .splitlines()]
    for a, b in zip(ddp, single):
        assert a["tokens"] == b["tokens"]
        assert abs(a["loss"] - b["loss"]) < 1e-4 * b["loss"], (a, b)
    from safetensors.torch import load_file

    w_ddp = load_file(str(db / "models/ddp/checkpoints/step-000002/model.safetensors"))
    w_one = load_file(str(db / "models/one/checkpoints/step-000002/model.safetensors"))
    diff = sum(float((w_ddp[k] - w_one[k]).abs().sum()) for k in w_one)
    size = sum(float(w_one[k].abs().sum()) for k in w_one)
    assert diff < 1e-4 * size, diff / size
    p = subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args, "--steps", "3",
                        "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-6000:]
    assert json.loads((db / "models/ddp/metrics.jsonl").read_text().splitlines()[-1])[
        "step"] == 3
