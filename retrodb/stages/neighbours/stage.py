"""The neighbours stage: the k nearest database chunks of every query chunk.

Queries are the stored keys of the query set's chunks (the database's own by default,
or another database's, e.g. a validation corpus): nothing is re-embedded. One output
shard per query key shard, through the one runner:

    DB/neighbours/<set>/00000.parquet   chunk_id int64, neighbours list<int64>[k],
                                        scores list<float32>[k]; -1 = no neighbour
    DB/neighbours/<set>/manifest.json   shards (first_id, rows, index, counts, r
                                        histogram) and the set's k, filters, queries

Filters (search.py): the query's own document (default for the database's own chunks:
the paper's rule), validation documents of the database's split, and leakage r ≤ α.
nprobe is calibrated once per set and index (calibrate.py) and recorded; every shard is
searched at that one nprobe.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest
from ...core.progress import NoteFn, ProgressFn
from ...exec.runner import run_stage
from ...exec.stage import Task, WorkerEnv
from ...stores.split import ensure_split, load_split
from ...stores.tokens import build_tokens
from ...stores.vectors import EmbeddingStore
from .calibrate import calibrate
from .checks import index_identity, query_db, query_identity
from .config import SEARCH, STAGE, NeighboursConfig, NeighboursResult
from .report import set_stats
from .search import FilteredSearch


class NeighboursStage:
    """The Stage (exec/stage.py) of `retrodb neighbours`."""

    name, suffix, unit, label, ordered = STAGE, ".parquet", "queries", "neighbours", False

    def __init__(self, db: Database, qdb: Database | None, cfg: NeighboursConfig,
                 same_doc: bool, split, ident: dict, settings: dict, note: NoteFn):
        self.db, self.qdb, self.cfg = db, qdb, cfg
        self.out = db.neighbours(cfg.set)
        self.same_doc, self.split, self.ident = same_doc, split, ident
        self.settings = settings
        self.note = note
        self.nprobe = 0  # chosen in tasks()
        self.candidates = 0
        self.recall: dict | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "note": None}

    def search(self) -> FilteredSearch:
        cfg = self.cfg
        return FilteredSearch(self.db, self.qdb, cfg.k, cfg.candidates, self.same_doc,
                              self.split if cfg.exclude_validation else None,
                              cfg.exclude_overlap, cfg.max_search)

    def tasks(self, m: Manifest) -> list[Task]:
        have = m.data.get("settings")
        if m.shards and have is not None and have != self.settings:
            diff = ", ".join(f"{k} {have.get(k)!r} → {v!r}" for k, v in self.settings.items()
                             if have.get(k) != v)
            raise RetrodbError(f"{self.out}: this set was built with other settings ({diff});"
                               f" choose another --set, or delete {self.out} to rebuild it")
        qstore = EmbeddingStore(self.qdb or self.db)
        self._calibrate(m, qstore)
        old_index = 0
        tasks = []
        for e in qstore.entries:
            ident = {"source_sha256": e["sha256"]}
            done = m.entry(e["shard"])
            if not (self.cfg.only_new and done is not None):
                ident.update(index_sha256=self.ident["sha256"], candidates=self.candidates)
                if done is not None and done.get("source_sha256") == e["sha256"] and \
                        any(done.get(k) != v for k, v in ident.items()):
                    old_index += 1
            tasks.append(Task(e["shard"], e, ident, e["rows"]))
        if old_index:
            self.note(f"{old_index} shard(s) were searched in an older index; recomputing "
                      "them (--only-new keeps them)")
        return tasks

    def _calibrate(self, m: Manifest, qstore: EmbeddingStore) -> None:
        fs = self.search()
        cfg = self.cfg
        start = cfg.nprobe or fs.searcher.nprobe
        self.candidates = fs.candidates
        rec = m.data.get("recall")
        if rec is None or rec.get("index_sha256") != self.ident["sha256"] \
                or rec.get("candidates") != self.candidates or rec.get("start") != start:
            rec = calibrate(qstore, fs, start, cfg.nprobe is not None, cfg.target_recall,
                            cfg.recall_queries, cfg.exclude_validation)
            rec.update(index_sha256=self.ident["sha256"], candidates=self.candidates,
                       start=start)
            if rec["measured"] and not rec["reached"]:
                self.note(f"filtered recall@{cfg.k} {rec['recall']:.3f} at nprobe "
                          f"{rec['nprobe']} is below --target-recall {cfg.target_recall}: "
                          "raise --nprobe, try more --candidates or a finer index")
        self.nprobe = rec.get("nprobe") or start
        self.recall = rec
        where = None
        if self.qdb is not None:
            where = str(self.qdb.root) if self.qdb.root.remote or self.db.root.remote else \
                os.path.relpath(self.qdb.root.local(), self.db.root.local())
        m.record(None, k=cfg.k, settings=self.settings, index=self.ident,
                 nprobe=self.nprobe, candidates=self.candidates, recall=rec,
                 queries_location=where, search=SEARCH)

    def open_worker(self, env: WorkerEnv) -> "NeighboursWorker":
        return NeighboursWorker(self, env)


class NeighboursWorker:
    """The opened index, token stores and filters, reused for every shard."""

    def __init__(self, stage: NeighboursStage, env: WorkerEnv):
        from ..index.factory import faiss

        self.stage, self.env = stage, env
        self.threads_before = faiss().omp_get_max_threads()
        if not env.in_process:  # a pool or Ray worker: its share of the cores
            faiss().omp_set_num_threads(max(1, env.threads))
        self.fs = stage.search()

    def run(self, task: Task, out) -> dict:
        import pyarrow as pa
        import pyarrow.parquet as pq

        st = self.stage
        k, batch = st.cfg.k, st.cfg.batch
        loc = (st.qdb or st.db).embeddings / task.source["file"]
        first, rows = task.source["first_id"], task.source["rows"]
        keys = np.load(loc.local(), mmap_mode="r" if rows else None, allow_pickle=False)
        if keys.shape[0] != rows:
            raise RetrodbError(f"{loc}: {keys.shape[0]} rows, its manifest says {rows}; "
                               "rerun `retrodb embed`")
        ids = np.empty((rows, k), dtype=np.int64)
        scores = np.empty((rows, k), dtype=np.float32)
        stats: dict = {}
        for lo in range(0, rows, batch):
            hi = min(rows, lo + batch)
            qids = np.arange(first + lo, first + hi, dtype=np.int64)
            ids[lo:hi], scores[lo:hi] = self.fs.search(
                np.asarray(keys[lo:hi], dtype=np.float32), qids, st.nprobe, stats)
            self.env.report(hi - lo)
        table = pa.table({
            "chunk_id": pa.array(np.arange(first, first + rows, dtype=np.int64)),
            "neighbours": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), k),
            "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), k)})
        pq.write_table(table, out.main(), compression="zstd")
        hist = stats.pop("hist", np.zeros(21, dtype=np.int64))
        return {"rows": rows, "k": k, "nprobe": st.nprobe, "r_hist": hist.tolist(),
                **{s: int(v) for s, v in stats.items()}}

    def close(self) -> None:
        from ..index.factory import faiss

        faiss().omp_set_num_threads(self.threads_before)


def _settings(cfg: NeighboursConfig, qdb: Database | None, same_doc: bool, split) -> dict:
    """What a set is: a rerun with other settings is refused (use another --set)."""
    return {"k": cfg.k, "queries": query_identity(qdb),
            "exclude_same_doc": same_doc, "exclude_overlap": cfg.exclude_overlap,
            # r is measured on the predicted chunk C_{u+1} against [N, F] (the paper's
            # §2.6); sets filtered by the earlier r (query chunk vs N) are refused
            "leakage": "next-chunk" if cfg.exclude_overlap is not None else None,
            "exclude_validation": cfg.exclude_validation,
            "split": (None if split is None else
                      {"val_fraction": split.val_fraction, "seed": split.seed}),
            "nprobe": cfg.nprobe, "candidates": cfg.candidates,
            "max_search": cfg.max_search, "target_recall": cfg.target_recall,
            "recall_queries": cfg.recall_queries}


def build_neighbours(db, cfg: NeighboursConfig = NeighboursConfig(),
                     on_progress: ProgressFn | None = None,
                     on_note: NoteFn | None = None) -> NeighboursResult:
    """Compute the neighbours of every query shard that has no current output shard."""
    cfg.validate()
    t0 = time.time()
    db = Database(db)
    db.config()
    note = on_note or (lambda msg: None)
    qdb = query_db(db, cfg)
    same_doc = (qdb is None) if cfg.exclude_same_doc is None else cfg.exclude_same_doc
    if same_doc and qdb is not None:
        raise RetrodbError("--exclude-same-doc: the queries come from another database "
                           "(--queries), whose documents are not the database's; drop "
                           "the flag (use --exclude-overlap to remove copied text)")
    store = EmbeddingStore(db)
    if cfg.k > store.n:
        raise RetrodbError(f"-k {cfg.k}: the database has only {store.n:,} chunks")
    ident = index_identity(db, store)
    split = None
    if cfg.exclude_validation:
        have = load_split(db)
        split = ensure_split(
            db, cfg.val_fraction if cfg.val_fraction is not None else
            (have.val_fraction if have else 0.05),
            cfg.split_seed if cfg.split_seed is not None else (have.seed if have else 0))
    if qdb is None and not same_doc:
        note("--no-exclude-same-doc on the database's own chunks: each chunk finds "
             "itself (and its document) among its neighbours")
    build_tokens(db)  # for the filters and the report: built here, once
    if qdb is not None:
        build_tokens(qdb)
    stage = NeighboursStage(db, qdb, cfg, same_doc, split, ident,
                            _settings(cfg, qdb, same_doc, split), note)
    rep = run_stage(stage, cfg.executor_spec, on_progress, note)
    m = Manifest(stage.out, STAGE)
    result = NeighboursResult(set=cfg.set, k=cfg.k, directory=str(stage.out),
                              shards_done=len(rep.entries), shards_total=rep.tasks,
                              redone=rep.redone, recall=stage.recall,
                              queries=sum(e["rows"] for e in rep.entries))
    result.stats = set_stats(m)
    if qdb is not None and cfg.exclude_overlap is None and result.stats["duplicates"]:
        note(f"{result.stats['duplicates']:,} neighbours hold the whole chunk they help "
             f"predict verbatim (r = 1): the query set overlaps the database; evaluate "
             f"with --exclude-overlap 0.2 to filter leaked text")
    result.seconds = round(time.time() - t0, 3)
    return result
