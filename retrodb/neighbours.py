"""The neighbours stage: the k nearest database chunks of every query chunk, and reading them.

Queries are the stored keys of the query set's chunks (the database's own by default,
or another database's, e.g. a validation corpus): nothing is re-embedded. Each query
shard is searched in the merged index at its chosen operating point (nprobe, exact
re-ranking); candidates are then filtered:

  - same document (default on for the database's own chunks): the paper's rule, a
    chunk never retrieves from its own document;
  - validation documents (default on): the database split (DB/split.json, the rule the
    trainer uses) holds some documents out; no neighbour comes from them;
  - leakage (--exclude-overlap α): a neighbour whose longest common token run with the
    query chunk, over the chunk size, exceeds α is dropped (the paper's r ≤ α).

A query first asks for more than k candidates when filters are on; the queries left
with fewer than k are searched again with 4× as many, up to --max-search; those still
short are padded with id -1 (score NaN) and counted.

Layout (one shard per query embedding shard, through the shared runner):

    DB/neighbours/<set>/00000.parquet   chunk_id int64, neighbours list<int64>[k],
                                        scores list<float32>[k]; -1 = no neighbour
    DB/neighbours/<set>/manifest.json   shards (first_id, rows, index, counts, r
                                        histogram) and the set's k, filters, queries

Reading: `NeighbourTable(DB, set).lookup(ids)` gives ids and scores; `Neighbours(DB,
set).blocks(ids)` gives the token blocks the model reads, (..., k, 2 × chunk_size):
each neighbour chunk followed by its continuation. Tokens come from DB/tokens/, a
memory-mapped fixed-width token matrix per chunk shard built once from the Parquet
shards, so any chunk id is an O(1) read.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .db import Database
from .errors import RetrodbError
from .executor import ExecutorSpec
from .runner import Manifest, ShardTask, pending_tasks, run_shard_stage, stage_lock
from .vectors import EmbeddingStore, _ranges


class NeighbourTable:
    """Neighbour ids and scores of query chunk ids, a few shards cached at a time."""

    def __init__(self, db_path: str | Path, set_name: str = "train", cache_shards: int = 4):
        self.directory = Database(db_path).root / "neighbours" / set_name
        m = Manifest(self.directory, "neighbours")
        if not m.shards:
            raise RetrodbError(f"{self.directory}: no neighbours; run `retrodb neighbours "
                               f"--db {db_path} --set {set_name}` first")
        self.manifest = m
        self.k: int = m.data["k"]
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.files = [self.directory / e["file"] for e in shards]
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.rows = np.array([e["rows"] for e in shards], dtype=np.int64)
        self.cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.cache_shards = cache_shards

    def _shard(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if s in self.cache:
            self.cache.move_to_end(s)
            return self.cache[s]
        import pyarrow.parquet as pq

        t = pq.read_table(self.files[s], columns=["neighbours", "scores"])
        n = t.num_rows
        ids = t.column(0).combine_chunks().flatten().to_numpy().reshape(n, self.k)
        scores = t.column(1).combine_chunks().flatten().to_numpy().reshape(n, self.k)
        self.cache[s] = (ids, scores)
        if len(self.cache) > self.cache_shards:
            self.cache.popitem(last=False)
        return ids, scores

    def lookup(self, chunk_ids) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64, scores float32), each of shape chunk_ids.shape + (k,)."""
        q = np.asarray(chunk_ids, dtype=np.int64)
        flat = q.reshape(-1)
        shard = np.searchsorted(self.first_ids, flat, side="right") - 1
        ok = (shard >= 0) & (flat < self.first_ids[shard] + self.rows[shard])
        if not ok.all():
            raise RetrodbError(f"chunk {int(flat[~ok][0])} has no neighbours in "
                               f"{self.directory}; rerun `retrodb neighbours`")
        ids = np.empty((len(flat), self.k), dtype=np.int64)
        scores = np.empty((len(flat), self.k), dtype=np.float32)
        for s in np.unique(shard):
            sel = shard == s
            a, b = self._shard(int(s))
            ids[sel] = a[flat[sel] - self.first_ids[s]]
            scores[sel] = b[flat[sel] - self.first_ids[s]]
        return ids.reshape(q.shape + (self.k,)), scores.reshape(q.shape + (self.k,))


class Neighbours:
    """What the trainer reads: neighbour token blocks of query chunk ids.

    `blocks(ids)` → (ids.shape, k, 2 × chunk_size) int tokens: neighbour chunk then its
    continuation (the next chunk of the same document), padding (0) where there is none
    or the neighbour id is -1. `lengths(ids)` gives the real token counts to mask with.
    """

    def __init__(self, db_path: str | Path, set_name: str = "train"):
        from .tokens import TokenStore

        self.table = NeighbourTable(db_path, set_name)
        self.tokens = TokenStore(db_path)
        self.k = self.table.k

    def ids(self, chunk_ids) -> np.ndarray:
        return self.table.lookup(chunk_ids)[0]

    def blocks(self, chunk_ids) -> np.ndarray:
        return self.tokens.neighbour_blocks(self.ids(chunk_ids))

    def lengths(self, chunk_ids) -> np.ndarray:
        """(..., k, 2): real tokens of each neighbour chunk and of its continuation."""
        nb = self.ids(chunk_ids)
        return np.stack([self.tokens.rows(nb)["length"],
                         self.tokens.rows(self.tokens.continuation_ids(nb))["length"]],
                        axis=-1)


# --------------------------------------------------------------------------------------
# The stage

STAGE = "neighbours"
R_BINS = 20  # histogram of r = longest common token run / chunk size, in 0.05 steps
_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class NeighboursConfig:
    """Options of `retrodb neighbours`; each field names its flag."""

    set: str = "train"  # --set: the directory DB/neighbours/<set>
    k: int = 2  # -k: neighbours per query chunk (the paper trains with 2)
    # --queries: another retrodb database whose chunks are the queries (same tokenizer,
    # chunk size and embedder); None = the database's own chunks.
    queries: str | None = None
    # --exclude-same-doc/--no-exclude-same-doc; None = on for the database's own chunks.
    exclude_same_doc: bool | None = None
    # --exclude-overlap α: drop neighbours with r > α (None = keep all).
    exclude_overlap: float | None = None
    # --exclude-validation/--no-exclude-validation: no neighbour from a validation
    # document of the database's split (recorded in DB/split.json with these settings
    # if the database has none; the trainer uses the same split).
    exclude_validation: bool = True
    # --val-fraction, --split-seed (as `retrodb train`): None = the database's split,
    # or 0.05 and 0 when it has none yet.
    val_fraction: float | None = None
    split_seed: int | None = None
    # --nprobe: None = calibrated: from the index's chosen operating point, doubled
    # until the filtered neighbours of --recall-queries sampled chunks reach
    # --target-recall against exact filtered search (filtered neighbours lie farther
    # away than a chunk's unfiltered ones, so they need more lists probed).
    nprobe: int | None = None
    target_recall: float = 0.9  # --target-recall
    recall_queries: int = 1000  # --recall-queries (0 = no calibration, no measurement)
    candidates: int | None = None  # --candidates: None = the index's chosen count
    max_search: int = 4096  # --max-search: widest search for a query short of k
    # --only-new: after the index changed (e.g. appended chunks were indexed), search
    # only query shards without neighbours and keep the others as they are (cheaper;
    # their neighbours then never include the appended chunks). Default: redo them.
    only_new: bool = False
    workers: int = 1  # --workers: local processes
    executor: str = "local"  # --executor local|ray
    ray_address: str | None = None
    batch: int = 4096  # queries searched at once

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address)

    def validate(self) -> None:
        if not _SET_NAME.match(self.set):
            raise RetrodbError(f"--set {self.set!r}: use letters, digits, '_', '-' or '.' "
                               "(a directory name under DB/neighbours)")
        if self.k <= 0:
            raise RetrodbError(f"-k {self.k}: must be at least 1")
        if self.exclude_overlap is not None and not 0 <= self.exclude_overlap < 1:
            raise RetrodbError(f"--exclude-overlap {self.exclude_overlap}: α must be in "
                               "[0, 1) (r = common token run / chunk size; 0.2 is usual)")
        if self.max_search < self.k:
            raise RetrodbError(f"--max-search {self.max_search}: must be at least -k "
                               f"{self.k}")
        if self.batch <= 0:
            raise RetrodbError(f"batch {self.batch}: must be positive")
        if not 0 < self.target_recall <= 1:
            raise RetrodbError(f"--target-recall {self.target_recall}: must be in (0, 1]")
        if self.recall_queries < 0:
            raise RetrodbError(f"--recall-queries {self.recall_queries}: must be ≥ 0")
        if self.nprobe is not None and self.nprobe <= 0:
            raise RetrodbError(f"--nprobe {self.nprobe}: must be at least 1")
        self.executor_spec.validate()


@dataclass
class NeighboursResult:
    set: str = "train"
    k: int = 2
    shards_done: int = 0
    shards_total: int = 0
    redone: int = 0  # shards recomputed: corrupt, stale, or from an older index
    queries: int = 0  # query chunks searched in this run
    stats: dict = field(default_factory=dict)  # totals over the whole set
    notes: list[str] = field(default_factory=list)
    recall: dict | None = None  # the calibration: nprobe chosen, filtered recall
    seconds: float = 0.0
    directory: str = ""


@dataclass
class Progress:
    done: int  # query chunks finished
    total: int


def set_dir(db: Database, name: str) -> Path:
    return db.root / "neighbours" / name


def _index_identity(db: Database, store: EmbeddingStore) -> dict:
    """The merged index the neighbours are searched in; refuses a missing or stale one."""
    from .index import _manifest, _merged_ok

    if not (db.index_dir / "manifest.json").exists():
        raise RetrodbError(f"{db.index_dir}: no index; build it with `retrodb index --db "
                           f"{db.root}` first")
    m = _manifest(db)
    merged, t = m.data.get("merged"), m.data.get("trained")
    if merged is None or t is None or not _merged_ok(m, merged):
        raise RetrodbError(f"{db.index_dir}: no merged index; finish it with `retrodb "
                           f"index --db {db.root}`")
    parts = {e["shard"]: e for e in m.shards}
    have = {p["shard"]: p["sha256"] for p in merged["parts"]}
    stale = [e["shard"] for e in store.entries
             if e["shard"] not in have or e["shard"] not in parts
             or parts[e["shard"]]["sha256"] != have[e["shard"]]
             or parts[e["shard"]].get("source_sha256") != e["sha256"]]
    if stale or merged["ntotal"] != store.n:
        raise RetrodbError(f"{db.index_dir}: the merged index holds {merged['ntotal']:,} "
                           f"vectors built from other embeddings than the current "
                           f"{store.n:,} (embedding shard(s) {_ranges(stale) or '-'}); "
                           f"bring it up to date with `retrodb index --db {db.root}`")
    spec = store.config.get("embedder") or {}
    if (t.get("embedder") or {}).get("name") not in (None, spec.get("name")):
        raise RetrodbError(f"{db.index_dir}: trained on keys of {t['embedder']['name']}, "
                           f"the embeddings are {spec.get('name')}; rebuild the index")
    return {"file": merged["file"], "sha256": merged["sha256"], "ntotal": merged["ntotal"]}


def _query_db(db: Database, cfg: NeighboursConfig) -> Database | None:
    """The other database whose chunks are the queries (None = this one), checked."""
    if cfg.queries is None:
        return None
    q = Database(cfg.queries)
    if q.root.resolve() == db.root.resolve():
        return None
    a, b = db.config(), q.config()
    if a["tokenizer"]["sha256"] != b["tokenizer"]["sha256"]:
        raise RetrodbError(f"--queries {cfg.queries}: chunked with tokenizer "
                           f"{b['tokenizer']['name']}, the database with "
                           f"{a['tokenizer']['name']}; chunk the queries with the "
                           f"database's tokenizer (--tokenizer {db.root / 'tokenizer.json'})")
    if a["chunk_size"] != b["chunk_size"]:
        raise RetrodbError(f"--queries {cfg.queries}: chunk size {b['chunk_size']}, the "
                           f"database has {a['chunk_size']}; rechunk with --chunk-size "
                           f"{a['chunk_size']}")
    ka = {k: (a.get("embedder") or {}).get(k) for k in _EMBEDDER_KEYS}
    kb = {k: (b.get("embedder") or {}).get(k) for k in _EMBEDDER_KEYS}
    if kb["name"] is not None and ka != kb:
        raise RetrodbError(f"--queries {cfg.queries}: embedded with {kb['name']} "
                           f"({kb['dim']}-d), the database with {ka['name']} "
                           f"({ka['dim']}-d); embed the queries with `retrodb embed --db "
                           f"{cfg.queries} --model {ka['name']}` (the database's model)")
    return q


_EMBEDDER_KEYS = ("name", "dim", "pooling", "normalize", "tokenizer_sha256")


def _settings(db: Database, cfg: NeighboursConfig, qdb: Database | None,
              same_doc: bool, split) -> dict:
    """What a set is: a rerun with other settings is refused (use another --set)."""
    return {"k": cfg.k, "queries": None if qdb is None else str(qdb.root.resolve()),
            "exclude_same_doc": same_doc, "exclude_overlap": cfg.exclude_overlap,
            "exclude_validation": cfg.exclude_validation,
            "split": (None if split is None else
                      {"val_fraction": split.val_fraction, "seed": split.seed}),
            "nprobe": cfg.nprobe, "candidates": cfg.candidates,
            "max_search": cfg.max_search, "target_recall": cfg.target_recall,
            "recall_queries": cfg.recall_queries}


def build_neighbours(db_path: str | Path, cfg: NeighboursConfig = NeighboursConfig(),
                     on_progress: Callable[[Progress], None] | None = None,
                     on_note: Callable[[str], None] | None = None) -> NeighboursResult:
    """Compute the neighbours of every query shard that has no current output shard."""
    from .index import IndexSearcher
    from .split import ensure_split, load_split
    from .tokens import build_tokens

    cfg.validate()
    t0 = time.time()
    db = Database(db_path)
    db.config()
    note = on_note or (lambda msg: None)
    qdb = _query_db(db, cfg)
    same_doc = (qdb is None) if cfg.exclude_same_doc is None else cfg.exclude_same_doc
    if same_doc and qdb is not None:
        raise RetrodbError("--exclude-same-doc: the queries come from another database "
                           "(--queries), whose documents are not the database's; drop "
                           "the flag (use --exclude-overlap to remove copied text)")
    store = EmbeddingStore(db.root)
    qstore = store if qdb is None else EmbeddingStore(qdb.root)
    if cfg.k > store.n:
        raise RetrodbError(f"-k {cfg.k}: the database has only {store.n:,} chunks")
    ident = _index_identity(db, store)
    searcher = IndexSearcher(db.root, cfg.nprobe, cfg.candidates, store=store)
    out = set_dir(db, cfg.set)
    result = NeighboursResult(set=cfg.set, k=cfg.k, directory=str(out))
    split = None
    if cfg.exclude_validation:
        have = load_split(db.root)
        split = ensure_split(
            db.root, cfg.val_fraction if cfg.val_fraction is not None else
            (have.val_fraction if have else 0.05),
            cfg.split_seed if cfg.split_seed is not None else (have.seed if have else 0))
    settings = _settings(db, cfg, qdb, same_doc, split)
    with stage_lock(out, STAGE):
        m = Manifest(out, STAGE)
        have = m.data.get("settings")
        if m.shards and have is not None and have != settings:
            diff = ", ".join(f"{k} {have.get(k)!r} → {v!r}" for k, v in settings.items()
                             if have.get(k) != v)
            raise RetrodbError(f"{out}: this set was built with other settings ({diff}); "
                               f"choose another --set, or delete {out} to rebuild it")
        if qdb is None and not same_doc:
            note("--no-exclude-same-doc on the database's own chunks: each chunk finds "
                 "itself (and its document) among its neighbours")
        # tokens for the filters and the report: built here, once, not in the workers
        build_tokens(db.root)
        if qdb is not None:
            build_tokens(qdb.root)
        live = {e["shard"] for e in qstore.entries}
        for e in [e for e in m.shards if e["shard"] not in live]:
            m.path_of(e["file"]).unlink(missing_ok=True)  # its query shard is gone
            m.data["shards"].remove(e)
        tasks, redo = pending_tasks(qstore.manifest, m, ".parquet")
        tasks = [x for x in tasks if x.shard in live]
        todo = {x.shard for x in tasks}
        old_index = 0
        cands = searcher.candidates
        for e in m.shards:  # searched in an older index, or at another operating point
            if (e.get("index_sha256") != ident["sha256"] or e.get("candidates") != cands) \
                    and e["shard"] not in todo and not cfg.only_new:
                tasks.append(ShardTask(e["shard"], qstore.manifest.entry(e["shard"]),
                                       out / e["file"]))
                old_index += 1
        if old_index:
            note(f"{old_index} shard(s) were searched in an older index; recomputing them "
                 "(--only-new keeps them)")
        result.redone = redo + old_index
        init = (str(db.root), None if qdb is None else str(qdb.root), cfg.nprobe,
                cfg.candidates)
        rec = m.data.get("recall")
        if tasks and (rec is None or rec.get("index_sha256") != ident["sha256"]
                      or rec.get("candidates") != cands
                      or rec.get("start") != (cfg.nprobe or searcher.nprobe)):
            _init_worker(*init, threads=0)
            try:
                rec = calibrate(qstore, cfg, same_doc, searcher)
            finally:
                _WORKER.clear()
            rec.update(index_sha256=ident["sha256"], candidates=cands,
                       start=cfg.nprobe or searcher.nprobe)
            if rec["measured"] and not rec["reached"]:
                note(f"filtered recall@{cfg.k} {rec['recall']:.3f} at nprobe "
                     f"{rec['nprobe']} is below --target-recall {cfg.target_recall}: "
                     "raise --nprobe, try more --candidates or a finer index")
        nprobe = (rec or {}).get("nprobe") or searcher.nprobe
        result.recall = rec
        m.record(None, k=cfg.k, settings=settings, index=ident, nprobe=nprobe,
                 candidates=searcher.candidates, recall=rec)
        del searcher
        total = sum(x.source["rows"] for x in tasks)
        result.shards_total = len(live)
        result.queries = total
        prog = Progress(0, total)
        if on_progress:
            on_progress(prog)

        spec = cfg.executor_spec
        # Local workers report every searched batch (a shard is ~1M queries: minutes);
        # Ray tasks report whole shards.
        events = None
        if spec.kind == "local":
            events = queue.Queue() if spec.workers == 1 else \
                mp.get_context("spawn").Queue()
        lock = threading.Lock()

        def advance(rows: int) -> None:
            with lock:
                prog.done += rows
                if on_progress:
                    on_progress(prog)

        def done(entry: dict) -> None:
            result.shards_done += 1
            if events is None:
                advance(entry["rows"])

        def drain() -> None:
            while (ev := events.get()) is not None:
                advance(ev)

        if tasks:
            threads = 1 if spec.kind == "ray" else max(1, (os.cpu_count() or 1) // spec.workers)
            if spec.kind == "local" and spec.workers == 1:
                threads = 0  # in-process: leave faiss's thread count alone
            fn = _NeighbourShard(str(db.root), None if qdb is None else str(qdb.root),
                                 cfg, same_doc, ident["sha256"], nprobe, cands)
            drainer = None
            if events is not None:
                drainer = threading.Thread(target=drain, name="neighbours-progress",
                                           daemon=True)
                drainer.start()
            try:
                with spec.make(_init_worker, (*init, threads, events)) as ex:
                    run_shard_stage(sorted(tasks, key=lambda x: x.shard), fn, m, ex,
                                    on_done=done)
            finally:
                _WORKER.clear()
                if drainer is not None:
                    events.put(None)
                    drainer.join()
        result.stats = set_stats(m)
        if qdb is not None and cfg.exclude_overlap is None and result.stats["duplicates"]:
            note(f"{result.stats['duplicates']:,} neighbours are verbatim copies of their "
                 f"query chunk (r = 1): the query set overlaps the database; evaluate with "
                 f"--exclude-overlap 0.2 to filter leaked text")
    result.seconds = round(time.time() - t0, 3)
    return result


def set_stats(m: Manifest) -> dict:
    """Totals of a set's shard entries: counts, searched candidates, r histogram."""
    keys = ("rows", "searched", "widened", "short", "missing", "dropped_same_doc",
            "dropped_validation", "dropped_overlap", "duplicates")
    tot = {k: sum(int(e.get(k, 0)) for e in m.shards) for k in keys}
    hist = np.zeros(R_BINS + 1, dtype=np.int64)
    for e in m.shards:
        if "r_hist" in e:
            hist += np.asarray(e["r_hist"], dtype=np.int64)
    tot["r_hist"] = hist.tolist()
    tot["searched_per_query"] = round(tot["searched"] / max(tot["rows"], 1), 3)
    tot["k"] = m.data.get("k")
    return tot


# --------------------------------------------------------------------------------------
# Calibration: filtered recall against exact filtered search


def exact_filtered(store: EmbeddingStore, tokens, split, xq: np.ndarray,
                   qdocs: np.ndarray | None, k: int, block: int = 1 << 15
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) over every key, the query's own document (`qdocs`) and
    validation documents (`split`) removed; streamed block by block."""
    n = len(xq)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    for first, xb in store.blocks(block):
        ids = np.arange(first, first + len(xb), dtype=np.int64)
        s = xq @ xb.T
        if qdocs is not None or split is not None:
            bd = tokens.doc_ids(ids)
            if qdocs is not None:
                s[qdocs[:, None] == bd[None, :]] = -np.inf
            if split is not None:
                s[:, split.is_validation(bd)] = -np.inf
        kk = min(k, len(xb))
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, ids[part]], axis=1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cs, top, axis=1)
        best_i = np.where(np.isfinite(best_s), np.take_along_axis(ci, top, axis=1), -1)
    return best_s, best_i


def filtered_recall(store: EmbeddingStore, xq: np.ndarray, ids: np.ndarray,
                    gt_s: np.ndarray, eps: float = 1e-4) -> float:
    """Share of the true filtered neighbours found: a result counts when its exact
    score reaches the exact k-th (ties count); queries with fewer than k eligible
    chunks count only the ones that exist."""
    valid = ids >= 0
    vecs = np.zeros(ids.shape + (store.dim,), dtype=np.float32)
    vecs[valid] = store.get(ids[valid])
    exact = np.einsum("qcd,qd->qc", vecs, xq)
    n_true = np.isfinite(gt_s).sum(axis=1)
    kth = np.take_along_axis(gt_s, np.maximum(n_true - 1, 0)[:, None], axis=1)
    hits = (valid & (exact >= kth - eps)).sum(axis=1)
    return float(np.minimum(hits, n_true).sum() / max(n_true.sum(), 1))


def calibrate(qstore: EmbeddingStore, cfg: NeighboursConfig, same_doc: bool,
              searcher) -> dict:
    """Choose nprobe for the filtered search (needs `_init_worker` state here)."""
    nlist = int(searcher.trained["nlist"])
    start = cfg.nprobe or searcher.nprobe
    out = {"queries": 0, "target": cfg.target_recall, "points": [], "nprobe": start,
           "recall": None, "reached": None, "measured": False}
    if cfg.recall_queries == 0:
        return out
    qids = qstore.sample_ids(min(cfg.recall_queries, qstore.n), seed=1)
    xq = qstore.get(qids)
    tokens, qtokens, split = _WORKER["tokens"], _WORKER["qtokens"], _WORKER["split"]
    qdocs = qtokens.doc_ids(qids) if same_doc else None
    gt_s, _ = exact_filtered(searcher.store, tokens, split if cfg.exclude_validation
                             else None, xq, qdocs, cfg.k)
    p = start
    while True:
        ids, _ = search_filtered(xq, qids, cfg, same_doc, {}, nprobe=p, overlap=False)
        r = round(filtered_recall(searcher.store, xq, ids, gt_s), 4)
        out["points"].append({"nprobe": p, f"recall@{cfg.k}": r})
        out.update(nprobe=p, recall=r)
        if r >= cfg.target_recall or cfg.nprobe or p >= nlist:
            break
        p = min(p * 2, nlist)
    out.update(queries=len(qids), reached=out["recall"] >= cfg.target_recall,
               measured=True)
    return out


# --------------------------------------------------------------------------------------
# Worker side

_WORKER: dict = {}


def _init_worker(db_root: str, query_root: str | None, nprobe: int | None,
                 candidates: int | None, threads: int, events=None) -> None:
    from .index import IndexSearcher, _faiss
    from .split import load_split
    from .tokens import TokenStore

    if threads > 0:
        _faiss().omp_set_num_threads(threads)
    store = EmbeddingStore(db_root)
    tokens = TokenStore(db_root, build=False)
    _WORKER.update(
        searcher=IndexSearcher(db_root, nprobe, candidates, store=store),
        tokens=tokens,
        qtokens=tokens if query_root is None else TokenStore(query_root, build=False),
        split=load_split(db_root), events=events)


@dataclass(frozen=True)
class _NeighbourShard:
    """The shard function: query embedding shard → its neighbours (picklable)."""

    db_root: str
    query_root: str | None
    cfg: NeighboursConfig
    same_doc: bool
    index_sha256: str
    nprobe: int
    candidates: int

    def __call__(self, task: ShardTask, tmp: Path) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        k = self.cfg.k
        root = Path(self.query_root or self.db_root)
        keys = np.load(root / "embeddings" / task.source["file"], mmap_mode="r",
                       allow_pickle=False)
        first, rows = task.source["first_id"], task.source["rows"]
        if keys.shape[0] != rows:
            raise RetrodbError(f"{root / 'embeddings' / task.source['file']}: "
                               f"{keys.shape[0]} rows, its manifest says {rows}; rerun "
                               "`retrodb embed`")
        ids = np.empty((rows, k), dtype=np.int64)
        scores = np.empty((rows, k), dtype=np.float32)
        stats: dict = {}
        for lo in range(0, rows, self.cfg.batch):
            hi = min(rows, lo + self.cfg.batch)
            qids = np.arange(first + lo, first + hi, dtype=np.int64)
            ids[lo:hi], scores[lo:hi] = search_filtered(
                np.asarray(keys[lo:hi], dtype=np.float32), qids, self.cfg, self.same_doc,
                stats, self.nprobe)
            if _WORKER.get("events") is not None:
                _WORKER["events"].put(hi - lo)
        table = pa.table({
            "chunk_id": pa.array(np.arange(first, first + rows, dtype=np.int64)),
            "neighbours": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k),
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), k)})
        pq.write_table(table, tmp, compression="zstd")
        hist = stats.pop("hist", np.zeros(R_BINS + 1, dtype=np.int64))
        return {"rows": rows, "k": k, "index_sha256": self.index_sha256,
                "nprobe": self.nprobe, "candidates": self.candidates,
                "r_hist": hist.tolist(), **{s: int(v) for s, v in stats.items()}}


def search_filtered(xq: np.ndarray, qids: np.ndarray, cfg: NeighboursConfig,
                    same_doc: bool, stats: dict, nprobe: int | None = None,
                    overlap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-k filtered neighbours of the queries `xq` (chunk ids `qids` of the query set).

    Runs where `_init_worker` ran. The coarse (PQ) search returns candidates in its
    order; those from the query's own document or from validation documents are
    removed *before* re-ranking, so the index's candidate budget (`candidates`, chosen
    for unfiltered queries) is spent on eligible chunks only. The re-ranked list
    (exact scores) is then leakage-filtered. A query left with fewer than k is searched
    again with 4× the candidates, up to cfg.max_search; then it is padded with -1.
    """
    searcher, tokens, qtokens, split = (_WORKER["searcher"], _WORKER["tokens"],
                                        _WORKER["qtokens"], _WORKER["split"])
    k, n = cfg.k, len(xq)
    c = searcher.candidates
    alpha = cfg.exclude_overlap if overlap else None
    # eligible candidates to keep per query: the re-ranking budget; with a leakage
    # filter a few more, since it drops some of them after re-ranking
    need = max(c, k) if alpha is None else max(c, 4 * k)
    val_split = split if cfg.exclude_validation else None
    by_doc = same_doc or val_split is not None
    ntotal = int(searcher.index.ntotal)
    limit = min(max(need, cfg.max_search), ntotal)
    need = min(need, limit)
    fetch = min(limit, 2 * need + 8 if by_doc else need)
    searcher._set_nprobe(nprobe or searcher.nprobe)
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s = np.full((n, k), np.nan, dtype=np.float32)
    qrows = qtokens.rows(qids)
    for name in ("searched", "widened", "short", "missing", "dropped_same_doc",
                 "dropped_validation", "dropped_overlap", "duplicates"):
        stats.setdefault(name, 0)
    todo = np.arange(n)
    first_pass = True
    while len(todo):
        retry = []
        # bounded work per call: (queries × candidates) ≤ 2M ids whatever the widening
        step = max(1, (1 << 21) // fetch)
        for lo in range(0, len(todo), step):
            rows = todo[lo:lo + step]
            retry.append(_search_rows(xq, rows, qrows, fetch, limit, need, k, c, alpha,
                                      same_doc, val_split, searcher, tokens, out_i,
                                      out_s, stats))
            stats["searched"] += len(rows) * fetch
            if not first_pass:
                stats["widened"] += len(rows)
        todo = np.concatenate(retry) if retry else todo[:0]
        fetch = min(limit, fetch * 4)
        first_pass = False
    valid = out_i >= 0
    r = _ratios(qrows, tokens.rows(out_i), valid, tokens.chunk_size)
    stats["duplicates"] += int((valid & (r >= 1.0)).sum())
    bins = np.minimum((r[valid] * R_BINS + 1e-6).astype(np.int64), R_BINS)
    stats["hist"] = stats.get("hist", 0) + np.bincount(bins, minlength=R_BINS + 1)
    return out_i, out_s


def _search_rows(xq, rows, qrows, fetch, limit, need, k, c, alpha, same_doc, val_split,
                 searcher, tokens, out_i, out_s, stats) -> np.ndarray:
    """One pass for the queries `rows`: fills out_i/out_s of the finished ones and
    returns the rows to search again wider."""
    x = np.ascontiguousarray(xq[rows])
    D, I = searcher.index.search(x, fetch)
    elig = I >= 0
    drop_d = drop_v = np.zeros_like(elig)
    if same_doc or val_split is not None:
        doc = tokens.doc_ids(np.where(elig, I, -1))
        if same_doc:
            drop_d = elig & (doc == qrows["doc_id"][rows][:, None])
        if val_split is not None:
            drop_v = elig & ~drop_d & val_split.is_validation(doc)
        elig &= ~(drop_d | drop_v)
    exhausted = (I[:, -1] < 0) | (fetch >= limit)
    # the first `need` eligible candidates, in PQ order
    cols = np.argsort(~elig, axis=1, kind="stable")[:, :need]
    ok = np.take_along_axis(elig, cols, axis=1)
    cand = np.where(ok, np.take_along_axis(I, cols, axis=1), -1)
    if c:  # exact scores from the stored keys, best first
        from .index import rerank

        S2, I2 = rerank(searcher.store, x, cand, cand.shape[1])
    else:
        S2, I2 = np.where(ok, np.take_along_axis(D, cols, axis=1), -np.inf), cand
    keep = I2 >= 0
    drop_o = np.zeros_like(keep)
    if alpha is not None:
        keep, drop_o = _lazy_overlap_keep(qrows[rows], I2, keep, k, alpha, tokens)
    got_n = np.minimum(keep.sum(axis=1), k)
    final = (got_n >= k) | exhausted
    if final.any():
        f = final
        pick = np.argsort(~keep[f], axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(keep[f], pick, axis=1)
        out_i[rows[f]] = np.where(got, np.take_along_axis(I2[f], pick, axis=1), -1)
        out_s[rows[f]] = np.where(got, np.take_along_axis(S2[f], pick, axis=1), np.nan)
        stats["short"] += int((got_n[f] < k).sum())
        stats["missing"] += int((k - got_n[f]).sum())
        # drops that mattered: candidates ranked before the last one used
        any_ok = ok[f].any(axis=1)
        last = np.where(any_ok, np.max(np.where(ok[f], cols[f], -1), axis=1), fetch - 1)
        used = np.arange(fetch)[None, :] <= last[:, None]
        stats["dropped_same_doc"] += int((drop_d[f] & used).sum())
        stats["dropped_validation"] += int((drop_v[f] & used).sum())
        kept_before = np.cumsum(keep[f], axis=1) - keep[f]
        stats["dropped_overlap"] += int((drop_o[f] & (kept_before < k)).sum())
    return rows[~final]


def _lazy_overlap_keep(qrows: np.ndarray, ids: np.ndarray, valid: np.ndarray, k: int,
                       alpha: float, tokens) -> tuple[np.ndarray, np.ndarray]:
    """(keep, dropped): which ranked candidates pass r ≤ α. r (a 64 × 64 dynamic
    programme per pair) is computed for the first 4k candidates, then further down
    only in rows still short of k; rows that are not short never use the rest."""
    keep = valid.copy()
    dropped = np.zeros_like(valid)
    head = min(ids.shape[1], 4 * k)

    def apply(rows: np.ndarray, lo: int, hi: int) -> None:
        sub = ids[rows, lo:hi]
        mask = valid[rows, lo:hi]
        r = _ratios(qrows[rows], tokens.rows(np.where(mask, sub, -1)), mask,
                    tokens.chunk_size)
        drop = mask & (r > alpha)
        dropped[rows, lo:hi] |= drop
        keep[rows, lo:hi] &= ~drop

    apply(np.arange(len(ids)), 0, head)
    short = np.flatnonzero(keep[:, :head].sum(axis=1) < k)
    if len(short) and head < ids.shape[1]:
        apply(short, head, ids.shape[1])
    return keep, dropped


def _ratios(qrows: np.ndarray, nrows: np.ndarray, mask: np.ndarray,
            chunk_size: int) -> np.ndarray:
    """r of each (query, candidate) where `mask`; 0 elsewhere. qrows (n,), nrows (n, c)."""
    from .overlap import longest_common_run

    r = np.zeros(mask.shape, dtype=np.float32)
    qi, ci = np.nonzero(mask)
    if len(qi):
        runs = longest_common_run(qrows["tokens"][qi], qrows["length"][qi],
                                  nrows["tokens"][qi, ci], nrows["length"][qi, ci])
        r[qi, ci] = runs / chunk_size
    return r


def r_histogram_rows(hist: list[int]) -> list[tuple[str, int]]:
    """(label, count) per histogram bin: [0, .05), ..., [.95, 1), exactly 1."""
    out = []
    for b, c in enumerate(hist):
        if b == R_BINS:
            out.append(("r = 1 (copy)", c))
        else:
            out.append((f"{b / R_BINS:.2f}–{(b + 1) / R_BINS:.2f}", c))
    return out


def neighbours_report(db_path: str | Path, set_name: str = "train") -> dict:
    """The set's settings, counts and distribution of r (for `neighbours report`)."""
    db = Database(db_path)
    out = set_dir(db, set_name)
    m = Manifest(out, STAGE)
    if not m.shards:
        raise RetrodbError(f"{out}: no neighbours; run `retrodb neighbours --db {db.root} "
                           f"--set {set_name}` first")
    stats = set_stats(m)
    n = sum(stats["r_hist"]) or 1
    cum = np.cumsum(stats["r_hist"][::-1])[::-1] / n  # share with r ≥ bin start
    over = {}
    for alpha in (0.1, 0.2, 0.5, 0.8):
        b = int(round(alpha * R_BINS))  # bins from alpha on (bin edges are multiples)
        over[f"r >= {alpha}"] = round(float(cum[b]), 4)
    return {"set": set_name, "directory": str(out), "settings": m.data.get("settings"),
            "index": m.data.get("index"), "nprobe": m.data.get("nprobe"),
            "candidates": m.data.get("candidates"), "shards": len(m.shards),
            **stats, "share": over}
