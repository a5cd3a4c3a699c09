"""The index stage's entry points: all three steps, or each alone; and its summary."""

from __future__ import annotations

import time

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest
from ...core.progress import ProgressFn
from ...exec.runner import run_stage
from ...stores.vectors import EmbeddingStore
from .add import AddStage
from .config import STAGE, IndexConfig, IndexResult
from .merge import merge
from .train import train


def build_index(db, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """train (unless trained) → add (pending shards) → merge (unless current) → recall."""
    return _steps(db, cfg, on_progress, ("train", "add", "merge"))


def train_index(db, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 1: train the empty index (or check the one trained before matches `cfg`)."""
    return _steps(db, cfg, on_progress, ("train",))


def add_parts(db, cfg: IndexConfig = IndexConfig(),
              on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 2: add every embedding shard that has no current part (needs a trained
    index)."""
    return _steps(db, cfg, on_progress, ("add",))


def merge_index(db, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 3: merge the parts into one on-disk index (if not current); measure recall."""
    return _steps(db, cfg, on_progress, ("merge",))


def _steps(db, cfg: IndexConfig, on_progress, steps: tuple[str, ...]) -> IndexResult:
    cfg.validate()
    db = Database(db)
    store = EmbeddingStore(db)
    result = IndexResult()
    with db.index.lock(STAGE):
        if "train" in steps:
            t = train(db, store, cfg, result, on_progress)
        else:
            t = Manifest(db.index, STAGE).data.get("trained")
        if "add" in steps:
            if t is None:
                raise RetrodbError(f"{db.index}: no trained index; run `retrodb index "
                                   f"train --db {db.root}` (or `retrodb index`) first")
            if t["dim"] != store.dim:
                raise RetrodbError(f"{db.index / 'trained.faiss'}: dimension {t['dim']}, "
                                   f"the embeddings have {store.dim}; remove {db.index} "
                                   "and rerun `retrodb index`")
            _add(db, cfg, t, result, on_progress)
        if "merge" in steps:
            merge(db, store, cfg, result, on_progress)
    return result


def _add(db: Database, cfg: IndexConfig, t: dict, result: IndexResult,
         on_progress) -> None:
    m = Manifest(db.index, STAGE)
    if m.bad_files(t, "full"):
        raise RetrodbError(f"{db.index / 'trained.faiss'}: missing or changed since "
                           f"training; remove {db.index} and rerun `retrodb index`")
    t0 = time.time()
    spec = cfg.executor_spec
    stage = AddStage(db, t, cfg.batch)
    rep = run_stage(stage, spec, on_progress, check="size", locked=True)
    result.parts_added = len(rep.entries)
    result.vectors_added = sum(e["rows"] for e in rep.entries)
    result.seconds["add"] = round(time.time() - t0, 3)


def index_summary(db) -> dict | None:
    """What `retrodb info` shows for the index, or None when there is none."""
    db = Database(db)
    if not (db.index / "manifest.json").exists():
        return None
    m = Manifest(db.index, STAGE)
    t, merged, rec = m.data.get("trained"), m.data.get("merged"), m.data.get("recall")
    out = {"factory": t and t["factory"], "parts": len(m.shards),
           "vectors": merged["ntotal"] if merged else sum(e["rows"] for e in m.shards),
           "merged": merged is not None}
    if merged:
        # lists (codes + ids) grow with the vectors; the .faiss file (quantizer, OPQ,
        # codebooks) is a fixed cost held in RAM when searching
        out["bytes_per_vector"] = round(merged["ivfdata"]["bytes"] /
                                        max(merged["ntotal"], 1), 1)
        out["fixed_bytes"] = merged["bytes"]
    if rec:
        c = rec["chosen"]
        out.update(nprobe=c["nprobe"], candidates=c["candidates"],
                   recall=c[f"recall@{rec['k']}"], k=rec["k"], target=rec["target"],
                   reached=rec["reached"], ms_per_query=c["ms_per_query"])
    return out
