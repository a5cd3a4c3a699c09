"""The index stage: embeddings → a faiss IVF index with on-disk inverted lists.

Three resumable steps, each also callable alone:

  1. train  an empty index on a uniform random sample of the embeddings, read shard by
            shard. Without a factory string, autofaiss's parameter selection chooses one
            for the number of vectors and the memory budget; faiss itself builds it.
  2. add    one part per embedding shard, in parallel: the shard's vectors under their
            global chunk ids, stored as bare inverted lists (no copy of the quantizer).
            Parts go through the shared runner, so a rerun adds only appended or
            unfinished shards.
  3. merge  every part into one index whose inverted lists live in a file on disk
            (faiss OnDiskInvertedLists); searches memory-map it. Then recall is measured
            against exact search and the operating point (nprobe, candidates re-ranked
            with the exact float16 vectors) is chosen and recorded.

Layout (all written atomically; the manifest names what is current):

    DB/index/manifest.json        stage "index": "trained", "merged", "recall" records,
                                  and one shard entry per part (as every stage)
    DB/index/trained.faiss        the trained, empty index (faiss's own format)
    DB/index/00000.invlists       part of embedding shard 0: faiss inverted lists
    DB/index/merged.<g>.faiss     the merged index of generation g: quantizer, OPQ, and
    DB/index/merged.<g>.ivfdata   its inverted lists (codes + ids), memory-mapped

Why re-ranking: PQ codes of MiniLM vectors cannot reach recall@10 ≥ 0.9 on their own
(OPQ32_128,IVF4096,PQ32 gave ~0.6). The exact vectors are already on disk as float16
shards, so a longer candidate list from the PQ index is re-scored with them (faiss's
IndexRefine idea, served from memory-mapped shards instead of RAM).
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .db import Database
from .errors import RetrodbError
from .faults import point
from .executor import ExecutorSpec
from .runner import Manifest, ShardTask, file_record, pending_tasks, run_shard_stage, \
    stage_lock
from .storage import atomic_path, publish, sha256_file, tmp_path_for
from .vectors import EmbeddingStore, _ranges

TRAINED = "trained.faiss"
PART_SUFFIX = ".invlists"
STAGE = "index"
# faiss warns below 39 training points per centroid (k-means of the coarse quantizer,
# and of every PQ/OPQ codebook); retrodb refuses instead of training a poor index.
MIN_POINTS_PER_CENTROID = 39


@dataclass(frozen=True)
class IndexConfig:
    """Options of `retrodb index`; each field names its flag."""

    # --factory: any faiss index_factory string with an IVF layer (the lists are what is
    # sharded and merged on disk). None = autofaiss's choice for the vector count and
    # --memory-budget (quantized IVF only: the exact vectors are already on disk).
    factory: str | None = None
    # --memory-budget: the size the index may take, as autofaiss's max_index_memory_usage
    # (its lists are memory-mapped, so this is page cache, not a hard RAM cap); also
    # caps the training sample (float32, held in RAM by faiss's k-means).
    memory_budget: str = "8G"
    # --max-code-bytes: cap on the PQ code per vector when autofaiss chooses. Candidates
    # are re-ranked with the exact keys, so codes only need to rank them well enough;
    # 64 B is Megatron's PQ64 at 19B chunks. Without the cap an 8G budget on a small
    # database picks PQ256 codes whose OPQ training takes tens of minutes on 2 cores.
    max_code_bytes: int = 64
    # --train-size: vectors in the training sample. None = min(all, 100 per centroid
    # (autofaiss's points per cluster), at least 256 per PQ centroid).
    train_size: int | None = None
    workers: int = 1  # --workers: processes adding parts in parallel
    executor: str = "local"  # --executor: local processes, or Ray tasks ("ray")
    ray_address: str | None = None  # --ray-address: a Ray cluster; None = local Ray
    # --target-recall: recall@k the chosen operating point must reach (Megatron's RETRO
    # index reached 0.93 self-recall; 0.9 is where neighbours stop being mostly noise).
    target_recall: float = 0.9
    # --candidates: candidate-list lengths to try, re-ranked with the exact float16
    # vectors; 0 = the PQ ranking alone (reported for comparison).
    candidates: tuple[int, ...] = (0, 40, 100, 250)
    # --recall-queries: chunks sampled as queries when measuring recall. Exact search
    # costs queries × all vectors × dim, streamed once per merge.
    recall_queries: int = 1000
    k: int = 10  # recall@k is measured for this k (and for k = 1)
    # --max-nprobe: the sweep stops here (Megatron's RETRO index searched at 4096); it
    # also stops for a candidate count once doubling nprobe gains < 0.001 recall.
    max_nprobe: int = 4096
    seed: int = 0  # --seed: the training sample and the recall queries
    # vectors per faiss add()/search() call: bounds the float32 copy of float16 rows
    batch: int = 1 << 16

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address)

    def validate(self) -> None:
        self.executor_spec.validate()
        _budget_bytes(self.memory_budget)
        if self.max_code_bytes < 4:
            raise RetrodbError(f"--max-code-bytes {self.max_code_bytes}: at least 4 "
                               "(autofaiss's smallest code, PQ4)")
        if self.train_size is not None and self.train_size <= 0:
            raise RetrodbError(f"--train-size {self.train_size}: must be positive")
        if not 0 < self.target_recall <= 1:
            raise RetrodbError(f"--target-recall {self.target_recall}: a fraction in (0, 1]")
        if not self.candidates or any(c < 0 for c in self.candidates):
            raise RetrodbError(f"--candidates {','.join(map(str, self.candidates))}: give "
                               "non-negative candidate counts, e.g. 0,40,100")
        if any(0 < c < self.k for c in self.candidates):
            raise RetrodbError(f"--candidates: every count must be 0 or at least k={self.k}")
        if self.recall_queries <= 0:
            raise RetrodbError(f"--recall-queries {self.recall_queries}: must be positive")
        if self.max_nprobe <= 0:
            raise RetrodbError(f"--max-nprobe {self.max_nprobe}: must be positive")
        if self.batch <= 0:
            raise RetrodbError(f"batch {self.batch}: must be positive")


@dataclass
class Progress:
    """What the progress callback sees: one step's units done out of total."""

    step: str  # "train" | "add" | "merge" | "exact" | "recall"
    done: int = 0
    total: int = 0
    unit: str = "vectors"


ProgressFn = Callable[[Progress], None]


@dataclass
class IndexResult:
    """What a run of (some of) the steps did."""

    trained: bool = False  # trained in this run (False: reused)
    factory: str = ""
    chosen_by: str = ""
    train_size: int = 0
    parts_added: int = 0
    vectors_added: int = 0
    merged: bool = False
    ntotal: int = 0
    recall: dict | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Small helpers


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - a dependency
        raise RetrodbError("the index stage needs faiss: pip install faiss-cpu") from None
    return faiss


@contextmanager
def _quiet_c_stdout() -> Iterator[None]:
    """Silence faiss's C++ notices on stdout ("resizing ...", "updating ondisk filename
    ..."): the library never prints, and stdout carries the CLI's --json output."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _faiss_message(e: Exception) -> str:
    """The human part of a faiss C++ exception ('Error in ... at file:line: msg')."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    m = re.search(r"Error in .*? at \S+:\d+: (.*)", str(e), re.S)
    return (m.group(1).strip() if m else text)[:300]


def _budget_bytes(budget: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)i?B?\s*", str(budget), re.I)
    if not m:
        raise RetrodbError(f"--memory-budget {budget!r}: give a size such as 512M, 8G or 2T")
    return int(float(m.group(1)) * 1024 ** " KMGTP".index(m.group(2).upper() or " "))


def index_dir(db: Database) -> Path:
    return db.index_dir


def _manifest(db: Database) -> Manifest:
    return Manifest(db.index_dir, STAGE)


def _read_index(path: Path, flags: int = 0):
    faiss = _faiss()
    with _quiet_c_stdout():
        return faiss.read_index(str(path), flags)


def describe(index) -> dict:
    """Facts about a (trained) faiss index that retrodb relies on."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(index)
    sub = faiss.downcast_index(ivf)
    pq = getattr(sub, "pq", None)
    ksubs = [int(pq.ksub)] if pq is not None else []
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        pt = faiss.downcast_index(index)
        for i in range(pt.chain.size()):
            vt = faiss.downcast_VectorTransform(pt.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                ksubs.append(256)  # OPQ trains its own 8-bit PQ
    q = faiss.downcast_index(ivf.quantizer)
    return {"nlist": int(ivf.nlist), "code_size": int(ivf.code_size), "dim": int(index.d),
            "ivf_class": type(sub).__name__, "quantizer": type(q).__name__,
            "pq_ksub": max(ksubs) if ksubs else 0,
            "bytes_per_vector": int(ivf.code_size) + 8}


def min_train_points(info: dict) -> int:
    """Training vectors faiss needs: 39 per centroid of the largest k-means it runs."""
    return MIN_POINTS_PER_CENTROID * max(info["nlist"], info["pq_ksub"], 1)


# --------------------------------------------------------------------------------------
# Choosing and building the empty index


def choose_factory(n: int, dim: int, budget: str, max_code_bytes: int = 64
                   ) -> tuple[str, str]:
    """(factory string, how it was chosen) for `n` vectors of `dim` under `budget`.

    autofaiss's `get_optimal_index_keys_v2` with `should_be_memory_mappable` (an IVF:
    the lists are what retrodb merges on disk) and quantization forced
    (`ivf_flat_threshold=0`): IVF-Flat would store the float32 vectors again, and the
    exact vectors are already on disk as float16 for re-ranking. The budget it gets is
    at most `max_code_bytes` + 8 (the id) per vector: autofaiss then proposes the
    largest PQ code under that. autofaiss only picks parameters here; faiss builds the
    index (autofaiss's own builder breaks on faiss ≥ 1.14.2, see DESIGN.md).
    """
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    budget_b = _budget_bytes(budget)
    # 1% slack: autofaiss compares compression ratios, and equality must pass
    capped = min(budget_b, int(n * (max_code_bytes + 8) * 1.01))
    keys = get_optimal_index_keys_v2(n, dim, f"{capped}B", should_be_memory_mappable=True,
                                     ivf_flat_threshold=0)
    if not keys:
        smallest = 4 + 8  # autofaiss's smallest candidate: PQ4 codes + 8-byte ids
        raise RetrodbError(
            f"--memory-budget {budget}: too small for {n:,} vectors of dimension {dim}; the "
            f"most compressed index autofaiss proposes needs ~{smallest} B/vector "
            f"(~{smallest * n / 2**30:.1f} GiB); raise --memory-budget or give --factory")
    key = keys[0]
    how = f"autofaiss get_optimal_index_keys_v2({n}, {dim}, {budget}" + \
        (f", codes ≤ {max_code_bytes} B)" if capped < budget_b else ")")
    # autofaiss sizes lists by √n but does not check the training sample; keep
    # 39 points per list so that faiss's k-means is well posed.
    m = re.search(r"IVF(\d+)", key)
    if m and MIN_POINTS_PER_CENTROID * int(m.group(1)) > n:
        nlist = max(1, 2 ** int(np.floor(np.log2(max(n // MIN_POINTS_PER_CENTROID, 1)))))
        key = key.replace(m.group(0), f"IVF{nlist}", 1)
        how += f", lists lowered to {nlist} for {n} training vectors"
    return key, how


def make_index(factory: str, dim: int):
    """An untrained inner-product index from a factory string, checked for retrodb."""
    faiss = _faiss()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except (RuntimeError, ValueError, TypeError) as e:
        raise RetrodbError(
            f"--factory {factory!r}: faiss rejects it ({_faiss_message(e)}); give a faiss "
            "index_factory string such as IVF1024,PQ32 or OPQ32_128,IVF65536_HNSW32,PQ32"
        ) from None
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        raise RetrodbError(
            f"--factory {factory!r}: not an IVF index; retrodb shards and merges inverted "
            "lists on disk, so it needs an IVF layer, e.g. IVF1024,PQ32 or "
            "IVF16384_HNSW32,PQ64") from None
    lists = type(faiss.downcast_InvertedLists(ivf.invlists)).__name__
    if lists != "ArrayInvertedLists":
        raise RetrodbError(
            f"--factory {factory!r}: its inverted lists ({lists}, e.g. fast-scan 'fs' "
            "codes) cannot be merged on disk; use plain PQ codes, e.g. PQ32 or PQ32x4")
    if ivf.metric_type != faiss.METRIC_INNER_PRODUCT:  # pragma: no cover - faiss contract
        raise RetrodbError(f"--factory {factory!r}: faiss built a non-inner-product index")
    # Normalised keys: spherical k-means keeps the centroids on the unit sphere, where
    # inner product against them means cosine.
    ivf.cp.spherical = True
    sub = faiss.downcast_index(ivf)
    if isinstance(sub, faiss.IndexIVFPQ):
        # Polysemous training reorders PQ centroids for Hamming-distance filtering,
        # which retrodb's searches never use; it costs most of a small index's training
        # time (0.6 of 0.7 s for IVF8,PQ8x4 on 874 vectors).
        sub.do_polysemous_training = False
    return index


# --------------------------------------------------------------------------------------
# Step 1: train


def _check_normalised(store: EmbeddingStore, sample: np.ndarray) -> None:
    """Inner product is cosine only for unit vectors: refuse anything else."""
    if not store.normalized:
        raise RetrodbError(
            f"{store.db.config_path}: the embedder is not marked normalize=true; the "
            "index uses inner product, which equals cosine only for L2-normalised keys; "
            "re-embed with normalisation (`retrodb embed` does by default)")
    norms = np.linalg.norm(sample, axis=1)
    off = np.abs(norms - 1) > 1e-2  # float16 rounding moves norms by ~1e-3
    if off.any():
        raise RetrodbError(
            f"{store.db.embeddings_dir}: {int(off.sum())} of {len(sample)} sampled keys are "
            f"not unit length (norms {norms.min():.3f}..{norms.max():.3f}); inner product "
            "is then not cosine: re-embed with normalisation")


def _sample(store: EmbeddingStore, ids: np.ndarray, on_progress: ProgressFn | None
            ) -> np.ndarray:
    """float32 rows of sorted `ids`, gathered shard by shard."""
    out = np.empty((len(ids), store.dim), dtype=np.float32)
    bounds = np.searchsorted(ids, np.r_[store.first_ids, store.n])
    for s in range(len(store.entries)):
        lo, hi = bounds[s], bounds[s + 1]
        if hi > lo:
            out[lo:hi] = store.shard(s)[ids[lo:hi] - store.first_ids[s]]
        if on_progress:
            on_progress(Progress("sample", int(hi), len(ids)))
    return out


def train_index(db_path: str | Path, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 1: train the empty index (or check the one trained before matches `cfg`)."""
    cfg.validate()
    db = Database(db_path)
    store = EmbeddingStore(db.root)
    result = IndexResult()
    with stage_lock(db.index_dir, STAGE):
        _train(db, store, cfg, result, on_progress)
    return result


def _train(db: Database, store: EmbeddingStore, cfg: IndexConfig, result: IndexResult,
           on_progress: ProgressFn | None) -> dict:
    faiss = _faiss()
    m = _manifest(db)
    t = m.data.get("trained")
    path = db.index_dir / TRAINED
    embedder = _embedder_key(store)
    if t is not None and m.files_ok(t, checksum=False):
        # Reuse: a different explicit request is refused, not silently mixed.
        if cfg.factory is not None and cfg.factory != t["factory"]:
            raise RetrodbError(
                f"{db.index_dir}: trained with --factory {t['factory']!r}, not "
                f"{cfg.factory!r}; remove {db.index_dir} to build another index, or drop "
                "--factory to keep this one")
        if cfg.train_size is not None and cfg.train_size != t["train_size"]:
            raise RetrodbError(
                f"{db.index_dir}: trained on --train-size {t['train_size']}, not "
                f"{cfg.train_size}; remove {db.index_dir} to retrain")
        if t["dim"] != store.dim:
            raise RetrodbError(
                f"{path}: dimension {t['dim']}, the embeddings have {store.dim} "
                f"({store.entries[0]['file']}); the embeddings changed since training: "
                f"remove {db.index_dir} and rerun `retrodb index`")
        if t.get("embedder") != embedder:
            raise RetrodbError(
                f"{path}: trained on keys of embedder {t.get('embedder')!r}, the database's "
                f"embedder is now {embedder!r}; remove {db.index_dir} and rerun "
                "`retrodb index`")
        result.factory, result.chosen_by = t["factory"], t["chosen_by"]
        result.train_size = t["train_size"]
        if t["chosen_by"] != "--factory" and store.n > 10 * t["vectors"]:
            result.notes.append(
                f"the index was chosen for {t['vectors']:,} vectors and now holds "
                f"{store.n:,}; remove {db.index_dir} and rerun to choose a larger one")
        return t

    t0 = time.time()
    if cfg.factory is not None:
        factory, chosen_by = cfg.factory, "--factory"
    else:
        factory, chosen_by = choose_factory(store.n, store.dim, cfg.memory_budget,
                                            cfg.max_code_bytes)
    index = make_index(factory, store.dim)
    info = describe(index)
    need = min_train_points(info)
    size = cfg.train_size
    if size is None:
        size = min(store.n, max(100 * info["nlist"], 256 * info["pq_ksub"]))
    size = min(size, store.n)
    if size < need:
        what = f"{info['nlist']} lists" if info["nlist"] * 39 == need else \
            f"{info['pq_ksub']} codebook centroids"
        raise RetrodbError(
            f"--factory {factory!r}: faiss needs at least {MIN_POINTS_PER_CENTROID} × "
            f"{what} = {need:,} training vectors, the sample has {size:,} (of {store.n:,} "
            f"embeddings); use fewer lists (e.g. IVF{max(1, store.n // 39 // 2)}) or a "
            f"smaller codebook, or a larger --train-size / more data")
    budget = _budget_bytes(cfg.memory_budget)
    if size * store.dim * 4 > budget:
        raise RetrodbError(
            f"--train-size {size:,}: the float32 sample takes "
            f"{size * store.dim * 4 / 2**30:.1f} GiB, over --memory-budget "
            f"{cfg.memory_budget}; lower --train-size (≥ {need:,}) or raise the budget")
    ids = store.sample_ids(size, cfg.seed)
    x = _sample(store, ids, on_progress)
    _check_normalised(store, x)
    if on_progress:
        on_progress(Progress("train", 0, size))
    try:
        index.train(x)
    except RuntimeError as e:  # pragma: no cover - faiss errors we did not foresee
        raise RetrodbError(f"--factory {factory!r}: faiss could not train it "
                           f"({_faiss_message(e)})") from None
    del x
    if on_progress:
        on_progress(Progress("train", size, size))
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    t = {**file_record(path, TRAINED), "factory": factory, "chosen_by": chosen_by,
         "metric": "inner_product", "dim": store.dim, "train_size": size,
         "vectors": store.n, "seed": cfg.seed, "memory_budget": cfg.memory_budget,
         "embedder": embedder, "seconds": round(time.time() - t0, 3), **info}
    # A new trained index makes every part and merge from an older one meaningless.
    for e in list(m.shards):
        (db.index_dir / e["file"]).unlink(missing_ok=True)
    m.data["shards"] = []
    point("index.trained")  # the file is in place; the manifest does not name it yet
    m.record(None, trained=t, merged=None, recall=None, format_faiss=faiss.__version__)
    result.trained = True
    result.factory, result.chosen_by, result.train_size = factory, chosen_by, size
    result.seconds["train"] = t["seconds"]
    return t


def _embedder_key(store: EmbeddingStore) -> dict:
    spec = store.config.get("embedder") or {}
    return {k: spec.get(k) for k in ("name", "dim", "pooling", "normalize",
                                     "tokenizer_sha256")}


# --------------------------------------------------------------------------------------
# Step 2: add, one part per embedding shard

_ADD_INDEX = None  # the trained index, loaded once per worker process


def _init_add_worker(trained: str, threads: int) -> None:
    global _ADD_INDEX
    faiss = _faiss()
    if threads > 0:
        faiss.omp_set_num_threads(threads)
    _ADD_INDEX = faiss.read_index(trained)


@dataclass(frozen=True)
class _AddShard:
    """The shard function: embedding shard → that shard's inverted lists (picklable)."""

    embeddings_dir: Path
    trained_sha256: str
    batch: int

    def __call__(self, task: ShardTask, tmp: Path) -> dict:
        faiss = _faiss()
        index = _ADD_INDEX
        index.reset()
        t0 = time.time()
        a = np.load(self.embeddings_dir / task.source["file"], mmap_mode="r",
                    allow_pickle=False)
        if a.ndim != 2 or a.shape[1] != index.d:
            raise RetrodbError(
                f"{self.embeddings_dir / task.source['file']}: dimension "
                f"{a.shape[-1]}, the trained index has {index.d}; the embeddings changed "
                "since training: remove DB/index and rerun `retrodb index`")
        first = task.source["first_id"]
        for lo in range(0, len(a), self.batch):
            x = np.asarray(a[lo:lo + self.batch], dtype=np.float32)
            index.add_with_ids(x, np.arange(first + lo, first + lo + len(x), dtype=np.int64))
        ivf = faiss.extract_index_ivf(index)
        writer = faiss.FileIOWriter(str(tmp))
        faiss.write_InvertedLists(ivf.invlists, writer)
        del writer  # closes the file
        n = int(index.ntotal)
        index.reset()
        return {"rows": n, "trained_sha256": self.trained_sha256,
                "seconds": round(time.time() - t0, 3),
                "worker_peak_rss_mb": _peak_rss_mb()}  # of the process that added it


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, a spawned worker's
    does not include the parent's memory at fork time)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def add_parts(db_path: str | Path, cfg: IndexConfig = IndexConfig(),
              on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 2: add every embedding shard that has no part yet (needs a trained index)."""
    cfg.validate()
    db = Database(db_path)
    store = EmbeddingStore(db.root)
    result = IndexResult()
    with stage_lock(db.index_dir, STAGE):
        t = _manifest(db).data.get("trained")
        if t is None:
            raise RetrodbError(f"{db.index_dir}: no trained index; run `retrodb index "
                               f"train --db {db.root}` (or `retrodb index`) first")
        _add(db, store, cfg, t, result, on_progress)
    return result


def _add(db: Database, store: EmbeddingStore, cfg: IndexConfig, t: dict,
         result: IndexResult, on_progress: ProgressFn | None) -> None:
    m = _manifest(db)
    if not m.files_ok(t, checksum=True):
        raise RetrodbError(f"{db.index_dir / TRAINED}: missing or changed since training; "
                           f"remove {db.index_dir} and rerun `retrodb index`")
    if t["dim"] != store.dim:
        raise RetrodbError(
            f"{db.index_dir / TRAINED}: dimension {t['dim']}, the embeddings have "
            f"{store.dim}; remove {db.index_dir} and rerun `retrodb index`")
    src = store.manifest
    # Parts of embedding shards that no longer exist (re-chunked database) go.
    live = {e["shard"] for e in store.entries}
    for e in [e for e in m.shards if e["shard"] not in live]:
        (db.index_dir / e["file"]).unlink(missing_ok=True)
        m.data["shards"].remove(e)
    tasks, _ = pending_tasks(src, m, PART_SUFFIX, checksum=False)
    tasks = [x for x in tasks if x.shard in live]
    todo = {x.shard for x in tasks}
    for e in m.shards:  # a part from another trained index is stale too
        if e.get("trained_sha256") != t["sha256"] and e["shard"] not in todo:
            src_e = src.entry(e["shard"])
            tasks.append(ShardTask(e["shard"], src_e, db.index_dir / e["file"]))
    t0 = time.time()
    total = sum(x.source["rows"] for x in tasks)
    done = Progress("add", 0, total)
    if on_progress:
        on_progress(done)

    def finished(entry: dict) -> None:
        done.done += entry["rows"]
        if on_progress:
            on_progress(done)

    if tasks:
        spec = cfg.executor_spec
        threads = 1 if spec.kind == "ray" else max(1, (os.cpu_count() or 1) // spec.workers)
        if spec.kind == "local" and spec.workers == 1:
            threads = 0  # in-process: leave faiss's own thread count alone
        fn = _AddShard(db.embeddings_dir, t["sha256"], cfg.batch)
        with spec.make(_init_add_worker, (str(db.index_dir / TRAINED), threads)) as ex:
            run_shard_stage(sorted(tasks, key=lambda x: x.shard), fn, m, ex,
                            on_done=finished)
        global _ADD_INDEX
        _ADD_INDEX = None  # the in-process executor loaded it here
    result.parts_added = len(tasks)
    result.vectors_added = total
    result.seconds["add"] = round(time.time() - t0, 3)


# --------------------------------------------------------------------------------------
# Step 3: merge into on-disk inverted lists, then measure recall


def merge_index(db_path: str | Path, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """Step 3: merge the parts into one on-disk index (if not current); measure recall."""
    cfg.validate()
    db = Database(db_path)
    store = EmbeddingStore(db.root)
    result = IndexResult()
    with stage_lock(db.index_dir, STAGE):
        _merge(db, store, cfg, result, on_progress)
    return result


def _merge(db: Database, store: EmbeddingStore, cfg: IndexConfig, result: IndexResult,
           on_progress: ProgressFn | None) -> None:
    faiss = _faiss()
    m = _manifest(db)
    t = m.data.get("trained")
    if t is None:
        raise RetrodbError(f"{db.index_dir}: no trained index; run `retrodb index --db "
                           f"{db.root}` first")
    parts = {e["shard"]: e for e in m.shards}
    missing = [e["shard"] for e in store.entries
               if e["shard"] not in parts
               or parts[e["shard"]].get("source_sha256") != e["sha256"]
               or parts[e["shard"]].get("trained_sha256") != t["sha256"]
               or not m.files_ok(parts[e["shard"]], checksum=False)]
    if missing:
        raise RetrodbError(f"{db.index_dir}: no current part for embedding shard(s) "
                           f"{_ranges(missing)}; run `retrodb index add --db {db.root}` "
                           "first")
    want = [{"shard": e["shard"], "sha256": parts[e["shard"]]["sha256"]}
            for e in store.entries]
    merged = m.data.get("merged")
    if merged is not None and merged.get("parts") == want and _merged_ok(m, merged):
        result.ntotal = merged["ntotal"]
    else:
        merged = _merge_parts(db, m, t, [parts[p["shard"]] for p in want], want,
                              on_progress)
        result.merged = True
        result.ntotal = merged["ntotal"]
        result.seconds["merge"] = merged["seconds"]
    result.factory, result.chosen_by, result.train_size = t["factory"], t["chosen_by"], \
        t["train_size"]
    rec = m.data.get("recall")
    want_rec = _recall_settings(cfg, merged)
    if rec is None or {k: rec.get(k) for k in want_rec} != want_rec:
        t0 = time.time()
        rec = {**want_rec, **measure_recall(db, store, cfg, on_progress)}
        rec["seconds"] = round(time.time() - t0, 3)
        m.record(None, recall=rec)
        result.seconds["recall"] = rec["seconds"]
    result.recall = rec


def _recall_settings(cfg: IndexConfig, merged: dict) -> dict:
    return {"merged": merged["file"], "k": cfg.k, "queries": cfg.recall_queries,
            "seed": cfg.seed, "target": cfg.target_recall,
            "candidates": list(cfg.candidates), "max_nprobe": cfg.max_nprobe}


def _merged_ok(m: Manifest, merged: dict) -> bool:
    """The merged index's files exist with their sizes, and its fixed part (quantizer,
    OPQ, codebooks: small) has its checksum; the lists are too large to hash on open."""
    try:
        return m.files_ok(merged, checksum=False) and \
            sha256_file(m.path_of(merged["file"])) == merged["sha256"]
    except RetrodbError:
        return False


def _merge_parts(db: Database, m: Manifest, t: dict, entries: list[dict], want: list[dict],
                 on_progress: ProgressFn | None) -> dict:
    """Write generation g+1 of the merged index; switch the manifest to it; drop g."""
    faiss = _faiss()
    t0 = time.time()
    old = m.data.get("merged")
    gen = (old or {}).get("generation", 0) + 1
    name = f"merged.{gen}"
    ivf_path = db.index_dir / f"{name}.ivfdata"
    idx_path = db.index_dir / f"{name}.faiss"
    for p in (ivf_path, idx_path):
        p.unlink(missing_ok=True)  # left by a crashed merge of this generation
    index = _read_index(db.index_dir / TRAINED)
    ivf = faiss.extract_index_ivf(index)
    if on_progress:
        on_progress(Progress("merge", 0, len(entries), "parts"))
    lists = faiss.InvertedListsPtrVector()
    keep = []  # the Python objects own the mapped parts while merging
    for e in entries:
        reader = faiss.FileIOReader(str(db.index_dir / e["file"]))
        il = faiss.read_InvertedLists(reader, faiss.IO_FLAG_MMAP)
        if il.nlist != ivf.nlist or il.code_size != ivf.code_size:
            raise RetrodbError(f"{db.index_dir / e['file']}: {il.nlist} lists of "
                               f"{il.code_size} B, the trained index has {ivf.nlist} of "
                               f"{ivf.code_size} B; rerun `retrodb index add`")
        keep.append((reader, il))
        lists.push_back(il)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivf_path))
    with _quiet_c_stdout():
        ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False, False)
    if on_progress:
        on_progress(Progress("merge", len(entries), len(entries), "parts"))
    expected = sum(e["rows"] for e in entries)
    if ntotal != expected:  # pragma: no cover - a faiss contract
        raise RetrodbError(f"{ivf_path}: merged {ntotal} vectors, parts hold {expected}")
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns the lists now
    index.ntotal = ivf.ntotal = ntotal
    # Store the lists' file name without its directory: readers open it next to the
    # index (IO_FLAG_ONDISK_SAME_DIR), so a database can be moved or copied, and the
    # merged index is the same bytes wherever it was built.
    ondisk.filename = ivf_path.name
    tmp = tmp_path_for(idx_path)
    faiss.write_index(index, str(tmp))
    del index, ivf, keep, lists  # unmap the parts and the on-disk lists
    publish(ivf_path, ivf_path)  # fsync the lists before anything names them
    point("index.merge")
    publish(tmp, idx_path)
    merged = {**file_record(idx_path, idx_path.name),
              "ivfdata": file_record(ivf_path, ivf_path.name),
              "extra": [file_record(ivf_path, ivf_path.name)],
              "generation": gen, "ntotal": int(ntotal), "parts": want,
              "seconds": round(time.time() - t0, 3)}
    m.record(None, merged=merged, recall=None)
    if old is not None:  # readers that opened it keep their mapping until they close
        for f in (old["file"], old["ivfdata"]["file"]):
            (db.index_dir / f).unlink(missing_ok=True)
    return merged


# --------------------------------------------------------------------------------------
# Searching the merged index (with re-ranking from the float16 shards)


class IndexSearcher:
    """The merged index, memory-mapped, with exact re-ranking from the embedding shards.

    `nprobe` and `candidates` default to the operating point chosen when the index was
    merged. Searches are not thread-safe across different `nprobe` settings.
    """

    def __init__(self, db_path: str | Path, nprobe: int | None = None,
                 candidates: int | None = None, store: EmbeddingStore | None = None):
        faiss = _faiss()
        db = Database(db_path)
        self.db = db
        m = _manifest(db)
        merged = m.data.get("merged")
        if merged is None:
            raise RetrodbError(f"{db.index_dir}: no merged index; build it with `retrodb "
                               f"index --db {db.root}`")
        if not _merged_ok(m, merged):
            raise RetrodbError(f"{db.index_dir / merged['file']}: missing, truncated or "
                               "corrupted (it no longer matches the manifest); rebuild it "
                               f"with `retrodb index --db {db.root}`")
        self.manifest = m
        self.trained = m.data["trained"]
        self.merged = merged
        self.recall = m.data.get("recall")
        chosen = (self.recall or {}).get("chosen") or {}
        self.nprobe = int(nprobe or chosen.get("nprobe") or
                          min(self.trained["nlist"], 16))
        self.candidates = int(candidates if candidates is not None
                              else chosen.get("candidates", 0))
        if self.nprobe <= 0:
            raise RetrodbError(f"--nprobe {self.nprobe}: must be positive")
        if self.candidates < 0:
            raise RetrodbError(f"--candidates {self.candidates}: must be 0 or positive")
        self.index = _read_index(db.index_dir / merged["file"],
                                 faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
        self.d = int(self.index.d)
        self._store = store
        self._params = faiss.ParameterSpace()
        self._set_nprobe(self.nprobe)

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            self._store = EmbeddingStore(self.db.root)
        if self._store.dim != self.d:
            raise RetrodbError(f"{self.db.index_dir / self.merged['file']}: dimension "
                               f"{self.d}, the embeddings have {self._store.dim}; rebuild "
                               "the index (remove DB/index, rerun `retrodb index`)")
        return self._store

    def _set_nprobe(self, nprobe: int) -> None:
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = min(nprobe, ivf.nlist)
        q = faiss.downcast_index(ivf.quantizer)
        if isinstance(q, faiss.IndexHNSW):  # the HNSW must return nprobe lists
            q.hnsw.efSearch = max(q.hnsw.efSearch, ivf.nprobe)

    def search(self, xq: np.ndarray, k: int, nprobe: int | None = None,
               candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (n, k), chunk ids int64 (n, k)); -1 ids where none found.

        With `candidates` > 0, the PQ index returns max(candidates, k) ids per query,
        re-scored with the exact vectors; the scores are then exact inner products.
        """
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.d:
            raise RetrodbError(f"query vectors of shape {xq.shape}: the index has "
                               f"dimension {self.d}")
        if k <= 0:
            raise RetrodbError(f"-k {k}: must be positive")
        self._set_nprobe(nprobe or self.nprobe)
        c = self.candidates if candidates is None else candidates
        n_cand = max(c, k) if c else k
        D, I = self.index.search(xq, n_cand)
        if not c:
            return D, I
        return rerank(self.store, xq, I, k)


def rerank(store: EmbeddingStore, xq: np.ndarray, cand: np.ndarray, k: int,
           floats: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Top `k` of each row of candidate ids `cand` by exact inner product with `xq`.

    Queries go in blocks whose gathered keys (block × candidates × dim float32) stay
    under `floats` (32 MB)."""
    n, c = cand.shape
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    block = max(1, floats // max(1, c * store.dim))
    for lo in range(0, n, block):
        ci = cand[lo:lo + block]
        valid = ci >= 0
        vecs = np.zeros(ci.shape + (store.dim,), dtype=np.float32)
        vecs[valid] = store.get(ci[valid])
        s = np.einsum("qcd,qd->qc", vecs, xq[lo:lo + block])
        s[~valid] = -np.inf
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        kk = top.shape[1]
        scores[lo:lo + block, :kk] = np.take_along_axis(s, top, axis=1)
        ids[lo:lo + block, :kk] = np.where(np.take_along_axis(valid, top, axis=1),
                                           np.take_along_axis(ci, top, axis=1), -1)
    return scores, ids


# --------------------------------------------------------------------------------------
# Recall, measured against exact search


def exact_search(store: EmbeddingStore, xq: np.ndarray, k: int, batch: int = 1 << 16,
                 on_progress: ProgressFn | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product over every embedding, streamed block by block."""
    faiss = _faiss()
    heap = faiss.ResultHeap(len(xq), k, keep_max=True)
    done = 0
    for first, xb in store.blocks(batch):
        D, I = faiss.knn(xq, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(np.ascontiguousarray(D, dtype=np.float32),
                        np.where(I >= 0, I + first, -1).astype(np.int64))
        done += len(xb)
        if on_progress:
            on_progress(Progress("exact", done, store.n))
    heap.finalize()
    return heap.D, heap.I


def recall_at(store: EmbeddingStore, xq: np.ndarray, ids: np.ndarray,
              gt_scores: np.ndarray, k: int, eps: float = 1e-4) -> float:
    """Share of the first `k` results that are true top-k neighbours, ties counted.

    A result counts when its exact score reaches the exact k-th score (minus `eps`):
    duplicate chunks have equal keys, and which duplicate exact search lists is
    arbitrary (the ann-benchmarks convention).
    """
    got = ids[:, :k]
    valid = got >= 0
    vecs = np.zeros(got.shape + (store.dim,), dtype=np.float32)
    vecs[valid] = store.get(got[valid])
    exact = np.einsum("qcd,qd->qc", vecs, xq)
    hit = valid & (exact >= gt_scores[:, k - 1:k] - eps)
    return float(hit.sum() / (len(xq) * k))


def nprobe_sweep(nlist: int) -> list[int]:
    """1, 2, 4, ... up to nlist (inclusive)."""
    out, p = [], 1
    while p < nlist:
        out.append(p)
        p *= 2
    return out + [nlist]


def measure_recall(db: Database, store: EmbeddingStore, cfg: IndexConfig,
                   on_progress: ProgressFn | None = None) -> dict:
    """recall@1/@k and ms/query over an nprobe sweep, per candidate count; the choice.

    Queries are a uniform sample of the database's own chunks (self-retrieval, as
    Megatron's RETRO index was evaluated); ground truth is exact search over all keys.
    The chosen point is the smallest nprobe at which some candidate count reaches
    --target-recall at k, with the smallest such count: the lists scanned grow with the
    database, the candidates re-ranked do not. ms/query is recorded, not used to choose,
    so the choice does not depend on machine load.
    """
    k = cfg.k
    qids = store.sample_ids(min(cfg.recall_queries, store.n), cfg.seed + 1)
    xq = store.get(qids)
    t0 = time.perf_counter()
    gt_d, gt_i = exact_search(store, xq, k, cfg.batch, on_progress)
    exact_ms = (time.perf_counter() - t0) * 1000 / len(xq)
    searcher = IndexSearcher(db.root, store=store)
    nlist = searcher.trained["nlist"]
    sweep = []
    reached: dict[int, dict] = {}
    last: dict[int, float] = {}
    done: set[int] = set()  # candidate counts that reached the target or plateaued
    probes = [p for p in nprobe_sweep(nlist) if p <= cfg.max_nprobe] or [1]
    for step, nprobe in enumerate(probes):
        for c in cfg.candidates:
            if c in done:
                continue
            searcher.search(xq[:8], k, nprobe, c)  # warm the mapped pages a little
            t = time.perf_counter()
            _, I = searcher.search(xq, k, nprobe, c)
            ms = (time.perf_counter() - t) * 1000 / len(xq)
            point = {"nprobe": nprobe, "candidates": c,
                     "recall@1": round(recall_at(store, xq, I, gt_d, 1), 4),
                     f"recall@{k}": round(recall_at(store, xq, I, gt_d, k), 4),
                     "ms_per_query": round(ms, 4)}
            sweep.append(point)
            r = point[f"recall@{k}"]
            if r >= cfg.target_recall:
                reached[c] = point
                done.add(c)
            elif c in last and r - last[c] < 1e-3:
                done.add(c)  # plateau: more lists do not help this candidate count
            last[c] = r
        if on_progress:
            on_progress(Progress("recall", step + 1, len(probes), "nprobe"))
        if len(done) == len(cfg.candidates):
            break
    if reached:  # deterministic: timings only inform, they do not choose
        chosen = min(reached.values(), key=lambda p: (p["nprobe"], p["candidates"]))
    else:
        chosen = max(sweep, key=lambda p: (p[f"recall@{k}"], -p["ms_per_query"]))
    return {"sweep": sweep, "chosen": chosen, "reached": bool(reached),
            "exact_ms_per_query": round(exact_ms, 4), "n": store.n,
            "threads": _threads()}


def _threads() -> int:
    return int(_faiss().omp_get_max_threads())


# --------------------------------------------------------------------------------------
# All three steps


def build_index(db_path: str | Path, cfg: IndexConfig = IndexConfig(),
                on_progress: ProgressFn | None = None) -> IndexResult:
    """train (unless trained) → add (pending shards) → merge (unless current) → recall."""
    cfg.validate()
    db = Database(db_path)
    store = EmbeddingStore(db.root)
    result = IndexResult()
    with stage_lock(db.index_dir, STAGE):
        t = _train(db, store, cfg, result, on_progress)
        _add(db, store, cfg, t, result, on_progress)
        _merge(db, store, cfg, result, on_progress)
    return result


def index_summary(db_path: str | Path) -> dict | None:
    """What `retrodb info` shows for the index, or None when there is none."""
    db = Database(db_path)
    if not (db.index_dir / "manifest.json").exists():
        return None
    m = _manifest(db)
    t, merged, rec = m.data.get("trained"), m.data.get("merged"), m.data.get("recall")
    out = {"factory": t and t["factory"], "parts": len(m.shards),
           "vectors": merged["ntotal"] if merged else sum(e["rows"] for e in m.shards),
           "merged": merged is not None}
    if merged:
        # lists (codes + ids) grow with the vectors; the .faiss file (quantizer, OPQ,
        # codebooks) is a fixed cost held in RAM when searching
        out["bytes_per_vector"] = round(merged["ivfdata"]["bytes"] / max(merged["ntotal"], 1),
                                        1)
        out["fixed_bytes"] = merged["bytes"]
    if rec:
        c = rec["chosen"]
        out.update(nprobe=c["nprobe"], candidates=c["candidates"],
                   recall=c[f"recall@{rec['k']}"], k=rec["k"], target=rec["target"],
                   reached=rec["reached"], ms_per_query=c["ms_per_query"])
    return out


def config_dict(cfg: IndexConfig) -> dict:
    return asdict(cfg)
