"""What a neighbour set depends on, checked before searching: a current merged index,
and a query database made with the same tokenizer, chunk size and embedder."""

from __future__ import annotations

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.util import ranges
from ...stores.searcher import index_manifest, merged_ok
from ...stores.vectors import EmbeddingStore
from .config import NeighboursConfig

EMBEDDER_KEYS = ("name", "dim", "pooling", "normalize", "tokenizer_sha256")


def index_identity(db: Database, store: EmbeddingStore) -> dict:
    """The merged index the neighbours are searched in; refuses a missing or stale one."""
    if not (db.index / "manifest.json").exists():
        raise RetrodbError(f"{db.index}: no index; build it with `retrodb index --db "
                           f"{db.root}` first")
    m = index_manifest(db)
    merged, t = m.data.get("merged"), m.data.get("trained")
    if merged is None or t is None or not merged_ok(m, merged):
        raise RetrodbError(f"{db.index}: no merged index; finish it with `retrodb "
                           f"index --db {db.root}`")
    parts = {e["shard"]: e for e in m.shards}
    have = {p["shard"]: p["sha256"] for p in merged["parts"]}
    stale = [e["shard"] for e in store.entries
             if e["shard"] not in have or e["shard"] not in parts
             or parts[e["shard"]]["sha256"] != have[e["shard"]]
             or parts[e["shard"]].get("source_sha256") != e["sha256"]]
    if stale or merged["ntotal"] != store.n:
        raise RetrodbError(f"{db.index}: the merged index holds {merged['ntotal']:,} "
                           f"vectors built from other embeddings than the current "
                           f"{store.n:,} (embedding shard(s) {ranges(stale) or '-'}); "
                           f"bring it up to date with `retrodb index --db {db.root}`")
    spec = store.config.get("embedder") or {}
    if (t.get("embedder") or {}).get("name") not in (None, spec.get("name")):
        raise RetrodbError(f"{db.index}: trained on keys of {t['embedder']['name']}, "
                           f"the embeddings are {spec.get('name')}; rebuild the index")
    return {"file": merged["file"], "sha256": merged["sha256"], "ntotal": merged["ntotal"]}


def query_db(db: Database, cfg: NeighboursConfig) -> Database | None:
    """The other database whose chunks are the queries (None = this one), checked."""
    if cfg.queries is None:
        return None
    q = Database(cfg.queries)
    if str(q.root) == str(db.root) or (not q.root.remote and not db.root.remote and
                                        q.root.local().resolve() == db.root.local().resolve()):
        return None
    a, b = db.config(), q.config()
    if a["tokenizer"]["sha256"] != b["tokenizer"]["sha256"]:
        raise RetrodbError(f"--queries {cfg.queries}: chunked with tokenizer "
                           f"{b['tokenizer']['name']}, the database with "
                           f"{a['tokenizer']['name']}; chunk the queries with the "
                           f"database's tokenizer (--tokenizer {db.tokenizer_file})")
    if a["chunk_size"] != b["chunk_size"]:
        raise RetrodbError(f"--queries {cfg.queries}: chunk size {b['chunk_size']}, the "
                           f"database has {a['chunk_size']}; rechunk with --chunk-size "
                           f"{a['chunk_size']}")
    ka = {k: (a.get("embedder") or {}).get(k) for k in EMBEDDER_KEYS}
    kb = {k: (b.get("embedder") or {}).get(k) for k in EMBEDDER_KEYS}
    if kb["name"] is not None and ka != kb:
        raise RetrodbError(f"--queries {cfg.queries}: embedded with {kb['name']} "
                           f"({kb['dim']}-d), the database with {ka['name']} "
                           f"({ka['dim']}-d); embed the queries with `retrodb embed --db "
                           f"{cfg.queries} --model {ka['name']}` (the database's model)")
    return q


def query_identity(qdb: Database | None) -> dict | None:
    """How a set records its query database: by its first chunk shard (appending to it
    keeps it), not by where it lies, so moving either database changes nothing."""
    if qdb is None:
        return None
    from ...core.manifest import Manifest

    m = Manifest(qdb.chunks, "chunks")
    first = min(m.shards, key=lambda e: e["shard"]) if m.shards else {}
    return {"first_chunk_shard_sha256": first.get("sha256")}
