"""What a database holds, per stage (read from manifests, sizes from disk)."""

from __future__ import annotations

from typing import Any

from ..core.db import Database
from ..core.manifest import Manifest


def _disk_bytes(directory) -> int:
    return sum(loc.size() for loc in directory.walk()) if directory.is_dir() else 0


def _chunk_stats(chunks: Manifest) -> dict:
    """Inputs and reading notes: per shard (format 2), or per input (format 1)."""
    if chunks.shards and "split" not in chunks.shards[0]:
        recs = chunks.data.get("inputs", [])
        return {"inputs": len(recs), **{k: sum(r[k] for r in recs) for k in
                                        ("empty_docs", "decode_errors", "bad_lines")},
                "interrupted": chunks.data.get("cursor") is not None}
    inputs = {p["input"] for e in chunks.shards for p in e["split"]["pieces"]}
    return {"inputs": len(inputs),
            **{k: sum(e.get(k, 0) for e in chunks.shards)
               for k in ("empty_docs", "decode_errors", "bad_lines")},
            "interrupted": chunks.data.get("plan") is not None}


def db_info(path) -> dict[str, Any]:
    """A summary of every stage present: shards, rows, tokens, bytes on disk."""
    db = Database(path)
    cfg = db.config()
    stages: dict[str, Any] = {}
    chunks = Manifest(db.chunks, "chunks")
    stages["docs"] = {
        "shards": len(chunks.shards),
        "rows": sum(e["docs"] for e in chunks.shards),
        "bytes": _disk_bytes(db.docs),
    }
    stages["chunks"] = {
        "shards": len(chunks.shards),
        "rows": chunks.rows,
        "tokens": sum(e["tokens"] for e in chunks.shards),
        "bytes": _disk_bytes(db.chunks),
        **_chunk_stats(chunks),
    }
    if db.embeddings.is_dir():
        emb = Manifest(db.embeddings, "embeddings")
        done = {e["shard"] for e in emb.shards}
        stages["embeddings"] = {
            "shards": len(emb.shards),
            "rows": emb.rows,
            "bytes": _disk_bytes(db.embeddings),
            "dim": (cfg.get("embedder") or {}).get("dim"),
            "pending_shards": sum(1 for e in chunks.shards if e["shard"] not in done),
        }
    from ..stages.index.build import index_summary

    idx = index_summary(db)
    if idx is not None:
        stages["index"] = {"shards": idx["parts"], "rows": idx["vectors"],
                           "bytes": _disk_bytes(db.index), **idx}
    for d in neighbour_sets(db):
        m = Manifest(d, "neighbours")
        st, rec = m.data.get("settings") or {}, m.data.get("recall") or {}
        stages[f"neighbours/{d.name}"] = {
            "shards": len(m.shards), "rows": m.rows, "bytes": _disk_bytes(d),
            "k": m.data.get("k"), "nprobe": m.data.get("nprobe"),
            "filtered_recall": rec.get("recall"),
            "queries_db": st.get("queries"),
            "exclude_same_doc": st.get("exclude_same_doc"),
            "exclude_overlap": st.get("exclude_overlap"),
            "short": sum(int(e.get("short", 0)) for e in m.shards)}
    return {"path": str(db.root), "format": cfg["format"],
            "tokenizer": cfg["tokenizer"]["name"], "chunk_size": cfg["chunk_size"],
            "token_dtype": cfg["token_dtype"], "embedder": cfg.get("embedder"),
            "stages": stages}


def neighbour_sets(db: Database) -> list:
    """The neighbour set directories of a database (those with a manifest)."""
    root = db.neighbour_sets
    if not root.is_dir():
        return []
    names = sorted({loc.rel.split("/")[-2] for loc in root.walk()
                    if loc.name == "manifest.json"})
    return [db.neighbours(n) for n in names]
