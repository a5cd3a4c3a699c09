"""What a database holds, per stage (read from manifests, sizes from disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .db import Database
from .runner import Manifest


def _disk_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def db_info(path: str | Path) -> dict[str, Any]:
    """A summary of every stage present: shards, rows, tokens, bytes on disk."""
    db = Database(path)
    cfg = db.config()
    stages: dict[str, Any] = {}
    chunks = Manifest(db.chunks_dir, "chunks")
    stages["docs"] = {
        "shards": len(chunks.shards),
        "rows": sum(e["docs"] for e in chunks.shards),
        "bytes": _disk_bytes(db.docs_dir),
    }
    inputs = chunks.data.get("inputs", [])
    stages["chunks"] = {
        "shards": len(chunks.shards),
        "rows": chunks.rows,
        "tokens": sum(e["tokens"] for e in chunks.shards),
        "bytes": _disk_bytes(db.chunks_dir),
        "inputs": len(inputs),
        "empty_docs": sum(r["empty_docs"] for r in inputs),
        "decode_errors": sum(r["decode_errors"] for r in inputs),
        "bad_lines": sum(r["bad_lines"] for r in inputs),
        "interrupted": chunks.data.get("cursor") is not None,
    }
    if db.embeddings_dir.is_dir():
        emb = Manifest(db.embeddings_dir, "embeddings")
        done = {e["shard"] for e in emb.shards}
        stages["embeddings"] = {
            "shards": len(emb.shards),
            "rows": emb.rows,
            "bytes": _disk_bytes(db.embeddings_dir),
            "dim": (cfg.get("embedder") or {}).get("dim"),
            "pending_shards": sum(1 for e in chunks.shards if e["shard"] not in done),
        }
    from .index import index_summary

    idx = index_summary(db.root)
    if idx is not None:
        stages["index"] = {"shards": idx["parts"], "rows": idx["vectors"],
                           "bytes": _disk_bytes(db.index_dir), **idx}
    nroot = db.root / "neighbours"
    if nroot.is_dir():
        for d in sorted(p for p in nroot.iterdir() if (p / "manifest.json").is_file()):
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
