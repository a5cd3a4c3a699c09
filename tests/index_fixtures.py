"""Databases for the index and query tests, built once per session and copied."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus

from embed_contract import fake_embeddings, fill_embeddings

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"

# The example corpus (874 chunks) in 3 shards, so that parts and merges are real.
SPLIT_SIZE = 80_000  # bytes: every document whole, in 3 shards
# Small enough for 874 vectors: 39 × 16 lists and 39 × 16 PQ centroids ≤ 874.
FACTORY = "IVF16,PQ32x4"
FAKE_FACTORY = "IVF8,PQ8x4"


def copy_db(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def chunked_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("chunked") / "db"
    chunk_corpus(db, [str(CORPUS)], ChunkConfig(split_size=SPLIT_SIZE))
    return db


@pytest.fixture(scope="session")
def embedded_db(chunked_db, tmp_path_factory) -> Path:
    """Real all-MiniLM-L6-v2 keys of every chunk (the embeddings contract)."""
    db = copy_db(chunked_db, tmp_path_factory.mktemp("embedded") / "db")
    fill_embeddings(db)
    return db


@pytest.fixture(scope="session")
def indexed_db(embedded_db, tmp_path_factory) -> Path:
    """The example corpus indexed with 3 parts added by 2 workers; recall on all chunks."""
    from retrodb.stages.index import IndexConfig, build_index

    db = copy_db(embedded_db, tmp_path_factory.mktemp("indexed") / "db")
    build_index(db, IndexConfig(factory=FACTORY, workers=2, recall_queries=10_000))
    return db


@pytest.fixture
def fake_db(chunked_db, tmp_path) -> Path:
    """Random clustered 32-d keys: fast, for everything that is not about meaning."""
    db = copy_db(chunked_db, tmp_path / "db")
    fake_embeddings(db)
    return db


def all_keys(db: Path) -> np.ndarray:
    """Every key in id order, float32, straight from the .npy files."""
    files = sorted((db / "embeddings").glob("[0-9]*.npy"))
    return np.concatenate([np.load(f).astype(np.float32) for f in files])
