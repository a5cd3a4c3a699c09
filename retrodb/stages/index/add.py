"""Step 2: add one part per embedding shard, in parallel, through the one runner.

A part is the shard's vectors under their global chunk ids, stored as bare faiss
inverted lists (no copy of the quantizer). A rerun adds only embedding shards without a
current part: appended ones, ones whose keys were recomputed, ones whose part is
missing or corrupt, and every part once the index is retrained. Parts are
byte-identical for any number of workers.
"""

from __future__ import annotations

import time

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest
from ...core.util import peak_rss_mb
from ...exec.stage import Task, WorkerEnv
from ...stores.vectors import EmbeddingStore, widen
from .config import PART_SUFFIX, STAGE, TRAINED
from .factory import faiss, read_index


class AddStage:
    """The Stage (exec/stage.py) of `retrodb index add`."""

    name, suffix, unit, label, ordered = STAGE, PART_SUFFIX, "vectors", "add parts", False

    def __init__(self, db: Database, trained: dict, batch: int):
        self.db = db
        self.out = db.index
        self.trained_sha256 = trained["sha256"]
        self.batch = batch

    def tasks(self, m: Manifest) -> list[Task]:
        store = EmbeddingStore(self.db)
        return [Task(e["shard"], e, {"source_sha256": e["sha256"],
                                     "trained_sha256": self.trained_sha256}, e["rows"])
                for e in store.entries]

    def open_worker(self, env: WorkerEnv) -> "AddWorker":
        return AddWorker(self, env)


class AddWorker:
    """Holds the trained index (loaded once per worker process)."""

    def __init__(self, stage: AddStage, env: WorkerEnv):
        f = faiss()
        self.threads_before = f.omp_get_max_threads()
        if not env.in_process:  # a pool or Ray worker: its share of the cores
            f.omp_set_num_threads(max(1, env.threads))
        self.stage = stage
        self.index = read_index((stage.db.index / TRAINED).local())

    def run(self, task: Task, out) -> dict:
        index = self.index
        index.reset()
        t0 = time.time()
        loc = self.stage.db.embeddings / task.source["file"]
        a = np.load(loc.local(), mmap_mode="r" if task.source["rows"] else None,
                    allow_pickle=False)
        if a.ndim != 2 or a.shape[1] != index.d:
            raise RetrodbError(f"{loc}: dimension {a.shape[-1]}, the trained index has "
                               f"{index.d}; the embeddings changed since training: remove "
                               "DB/index and rerun `retrodb index`")
        first = task.source["first_id"]
        buf = np.empty((min(len(a), self.stage.batch), index.d), dtype=np.float32)
        for lo in range(0, len(a), self.stage.batch):
            part = a[lo:lo + self.stage.batch]
            x = widen(part, buf[:len(part)])
            index.add_with_ids(x, np.arange(first + lo, first + lo + len(x), dtype=np.int64))
        f = faiss()
        writer = f.FileIOWriter(str(out.main()))
        f.write_InvertedLists(f.extract_index_ivf(index).invlists, writer)
        del writer  # closes the file
        n = int(index.ntotal)
        index.reset()
        return {"rows": n, "seconds": round(time.time() - t0, 3),
                "worker_peak_rss_mb": peak_rss_mb()}  # of the process that added it

    def close(self) -> None:
        faiss().omp_set_num_threads(self.threads_before)
        self.index = None
