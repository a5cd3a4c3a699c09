"""The GPU path of `embed --gpus` and of training.

Everything that is not a kernel runs here on the CPU, through the same code: one worker
per device (`gpu_backend="cpu"` computes the GPU workers' batches on the CPU), the GPU
batch size, fp16 autocast and the float16 keys, out-of-memory halving, and resuming after
a lost device. `pytest -m gpu` runs the same embedding and a few training steps on CUDA
and compares them with the CPU's (skipped without CUDA).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from retrodb.core.errors import RetrodbError
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.stages.embed import EmbedConfig, embed_db

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "tutorial"
FILES = [CORPUS / "errors.rst.txt", CORPUS / "introduction.rst.txt"]
SIM = dict(gpus=(0, 1), gpu_backend="cpu")  # two GPU workers, computing on the CPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def keys(db: Path) -> np.ndarray:
    return np.concatenate([np.load(p).astype(np.float32)
                           for p in sorted((db / "embeddings").glob("[0-9]*.npy"))])


def entries(db: Path) -> list[dict]:
    return json.loads((db / "embeddings" / "manifest.json").read_text())["shards"]


@pytest.fixture(scope="module")
def cpu_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("gpu") / "cpu"
    chunk_corpus(db, [str(f) for f in FILES], ChunkConfig(split_size=12_000))
    embed_db(db, EmbedConfig())
    return db


def fresh(cpu_db: Path, tmp_path: Path) -> Path:
    db = tmp_path / "db"
    shutil.copytree(cpu_db, db, ignore=shutil.ignore_patterns("embeddings"))
    return db


def test_one_worker_per_gpu_fp16_and_gpu_batches(cpu_db, tmp_path):
    db = fresh(cpu_db, tmp_path)
    seen: dict = {}
    r = embed_db(db, EmbedConfig(**SIM), on_progress=lambda p: seen.update(p.workers))
    assert sorted(seen) == ["gpu0", "gpu1"] and sum(seen.values()) == r.chunks
    assert {e["batch_size"] for e in entries(db)} == {1024}  # the GPU default
    assert {e["precision"] for e in entries(db)} == {"fp16"}  # autocast, as on CUDA
    a, b = keys(db), keys(cpu_db)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(a, b)  # fp16 maths, same keys
    assert {e["batch_size"] for e in entries(cpu_db)} == {64}  # the CPU default


def test_out_of_memory_on_the_gpu_path_halves_the_batch(cpu_db, tmp_path, monkeypatch):
    from retrodb.stages.embed.embedder import Embedder

    real = Embedder._run_model

    def small_memory(self, ids, mask):
        if ids.shape[0] > 12:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return real(self, ids, mask)

    monkeypatch.setattr(Embedder, "_run_model", small_memory)
    db = fresh(cpu_db, tmp_path)
    notes = []
    r = embed_db(db, EmbedConfig(gpus=(0,), gpu_backend="cpu"), on_note=notes.append)
    # a GPU batch (1024) is a whole shard here (≤ 52 chunks): 52 → 26 → 13 → 7, kept
    assert r.oom_halvings >= 2
    assert notes[0].startswith("gpu0: out of memory") and "halved to" in notes[0]
    a, b = keys(db), keys(cpu_db)
    assert ((a * b).sum(1) > 0.999).all()


def test_a_lost_device_stops_the_run_and_the_rerun_resumes(cpu_db, tmp_path):
    """One GPU worker dies mid-run (its device lost): one line, the finished shards are
    kept, and the rerun gives the keys of an uninterrupted run."""
    ref = fresh(cpu_db, tmp_path / "ref")
    embed_db(ref, EmbedConfig(**SIM))
    db = fresh(cpu_db, tmp_path)
    code = textwrap.dedent(f"""
        import sys
        from retrodb.core.errors import RetrodbError
        from retrodb.stages.embed import EmbedConfig, embed_db
        try:
            embed_db({str(db)!r}, EmbedConfig(gpus=(0, 1), gpu_backend="cpu"))
        except RetrodbError as e:
            sys.exit(f"error: {{e}}")
    """)
    # each GPU worker process dies (SIGKILL) when it has written its second shard
    env = dict(os.environ, HF_HUB_OFFLINE="1", RETRODB_FAULT="shard.written@2")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=300)
    assert p.returncode != 0 and "a worker process died" in p.stderr, p.stderr[-2000:]
    done = {e["shard"] for e in entries(db)}
    assert 0 < len(done) < 4
    r = embed_db(db, EmbedConfig(**SIM))
    assert r.skipped == len(done) and len(r.shards) == 4 - len(done)
    assert np.array_equal(keys(db), keys(ref))


def test_gpus_needs_cuda_with_the_cuda_backend(cpu_db, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RetrodbError, match="--gpus 0: CUDA is not available"):
        embed_db(fresh(cpu_db, tmp_path), EmbedConfig(gpus=(0,)))


@pytest.mark.gpu
@cuda
def test_embed_on_cuda_matches_the_cpu(cpu_db, tmp_path):
    db = fresh(cpu_db, tmp_path)
    embed_db(db, EmbedConfig(gpus=(0,)))
    a, b = keys(db), keys(cpu_db)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999


@pytest.mark.gpu
@cuda
def test_training_on_cuda_matches_the_cpu(tmp_path, corpus):
    from neighbour_fixture import write_neighbours
    from retrodb.training.train import TrainConfig, train

    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=80_000))
    write_neighbours(db, "train", k=2)
    cfg = dict(preset="tiny", steps=3, seq_chunks=4, batch_size=4, warmup=1,
               val_fraction=0.2, eval_every=0, eval_sequences=2, checkpoint_every=3)
    cpu = train(db, TrainConfig(run="cpu", **cfg))
    gpu = train(db, TrainConfig(run="gpu", device="cuda", **cfg))
    assert abs(cpu["loss"] - gpu["loss"]) < 0.02 * cpu["loss"]  # bf16 autocast on CUDA
    assert abs(cpu["val_loss"] - gpu["val_loss"]) < 0.02 * cpu["val_loss"]
