"""Helpers to read a database's shards in tests."""

from __future__ import annotations

from pathlib import Path


def read_chunks(db: Path):
    """All chunk rows of a database, in id order, as a pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((db / "chunks").glob("[0-9]*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def read_docs(db: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((db / "docs").glob("[0-9]*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def shard_bytes(db: Path) -> dict[str, bytes]:
    """Every published shard file of the chunk stage, by relative path."""
    out = {}
    for sub in ("chunks", "docs"):
        for f in sorted((db / sub).glob("[0-9]*.parquet")):
            out[f"{sub}/{f.name}"] = f.read_bytes()
    return out
