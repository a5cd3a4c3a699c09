"""Searching the merged index, with exact re-ranking from the embedding shards.

The merged index (quantizer, OPQ, codebooks in `merged.<g>.faiss`; inverted lists in
`merged.<g>.ivfdata`, 4-bit codes in faiss's fast-scan blocks) is opened memory-mapped
and read-only: it can exceed RAM, and processes on one machine share the page cache.
A longer candidate list from the PQ codes is re-scored with the exact float16 keys
(faiss's IndexRefine idea, served from memory-mapped shards instead of RAM). The
operating point (nprobe, candidates) is the one measured and chosen when the index was
merged, unless given.
"""

from __future__ import annotations

import threading

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest
from ..core.util import quiet_c_stdout
from .vectors import EmbeddingStore

STAGE = "index"  # the index stage's manifest
FAST_SCAN = "fast-scan"  # the merged record's "format" when its lists are packed
BLOCK = 32  # vectors per fast-scan block (faiss's bbs)


def faiss():
    """The faiss module (imported on first use: `retrodb --help` stays fast)."""
    try:
        import faiss as f
    except ImportError:  # pragma: no cover - a dependency
        raise RetrodbError("the index needs faiss: pip install faiss-cpu") from None
    return f


def read_index(path, flags: int = 0):
    """A faiss index from its own file format (never a pickle)."""
    f = faiss()
    with quiet_c_stdout():
        return f.read_index(str(path), flags)


def index_manifest(db: Database) -> Manifest:
    return Manifest(db.index, STAGE)


def merged_ok(m: Manifest, merged: dict) -> bool:
    """The merged index's files exist with their sizes, and its fixed part (quantizer,
    OPQ, codebooks: small) has its checksum; the lists are too large to hash on open."""
    try:
        return m.files_ok(merged, checksum=False) and \
            m.path_of(merged["file"]).sha256() == merged["sha256"]
    except RetrodbError:
        return False


def merged_index(db: Database) -> tuple[Manifest, dict]:
    """The index manifest and its merged record, checked (one line if unusable)."""
    m = index_manifest(db)
    merged = m.data.get("merged")
    if merged is None:
        raise RetrodbError(f"{db.index}: no merged index; build it with `retrodb index "
                           f"--db {db.root}`")
    if not merged_ok(m, merged):
        raise RetrodbError(f"{m.path_of(merged['file'])}: missing, truncated or corrupted "
                           "(it no longer matches the manifest); rebuild it with `retrodb "
                           f"index --db {db.root}`")
    return m, merged


def mapped_trained(m: Manifest, ivf):
    """The trained index (`trained.faiss`: quantizer, transform, codebooks) read with its
    flat vectors memory-mapped, when it is there and its centroids are those of `ivf`
    (the merged index's IVF); else None. Its coarse centroids then live in the page
    cache (disk, shared between processes), not in each process's memory."""
    f = faiss()
    rec = m.data.get("trained") or {}
    try:
        if not rec.get("file") or not m.files_ok(rec, checksum=False):
            return None
        with quiet_c_stdout():
            t = f.read_index(str(m.path_of(rec["file"]).local()), f.IO_FLAG_MMAP_IFC)
    except (RetrodbError, RuntimeError, OSError):
        return None
    q, mine = f.extract_index_ivf(t).quantizer, ivf.quantizer
    if q.ntotal != mine.ntotal or q.d != mine.d or not q.ntotal:
        return None
    ends = [0, q.ntotal - 1]
    if not all(np.array_equal(q.reconstruct(i), mine.reconstruct(i)) for i in ends):
        return None
    return t


def packable(index) -> bool:
    """Whether the index's lists can be searched in the fast-scan layout: plain IVF-PQ
    with 4-bit codes and an even number of sub-quantizers."""
    f = faiss()
    sub = f.downcast_index(f.extract_index_ivf(index))
    return isinstance(sub, f.IndexIVFPQ) and not isinstance(sub, f.IndexIVFPQFastScan) \
        and sub.pq.nbits == 4 and sub.pq.M % 2 == 0


def fast_scan_of(trained):
    """An empty fast-scan index (BLOCK-vector blocks) on the trained index's quantizer,
    codebooks and transform, which it references: the structure packed lists go in."""
    f = faiss()
    sub = f.downcast_index(f.extract_index_ivf(trained))
    fs = f.IndexIVFPQFastScan(sub, BLOCK)
    fs.referenced_objects = [trained]
    top = f.downcast_index(trained)
    if not isinstance(top, f.IndexPreTransform):
        return fs
    if top.chain.size() != 1:  # pragma: no cover - factories give one transform
        raise RetrodbError(f"{top.chain.size()} transforms before the lists: not packable")
    wrapped = f.IndexPreTransform(top.chain.at(0), fs)
    wrapped.referenced_objects = [top, fs]
    return wrapped


def moved_lists(index, shared):
    """A fast-scan index on `shared` (`mapped_trained`: centroids memory-mapped) that
    takes over the packed on-disk lists of `index`; `index` keeps and frees its own
    copy of the centroids."""
    f = faiss()
    out = fast_scan_of(shared)
    src, dst = f.extract_index_ivf(index), f.extract_index_ivf(out)
    src.own_invlists = False
    dst.replace_invlists(src.invlists, True)
    out.ntotal = dst.ntotal = src.ntotal
    return out


def open_merged(db: Database, m: Manifest, merged: dict):
    """The merged index, memory-mapped read-only: fast-scan lists as written by the
    merge (`format` "fast-scan"), other codes' lists as they are. 4-bit lists merged in
    the plain layout by an earlier release are refused with how to re-merge them."""
    f = faiss()
    path = m.path_of(merged["file"]).local()
    m.path_of(merged["ivfdata"]["file"]).local()  # beside it (fetched if remote)
    index = read_index(path, f.IO_FLAG_ONDISK_SAME_DIR | f.IO_FLAG_READ_ONLY)
    ivf = f.extract_index_ivf(index)
    lists = f.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, f.OnDiskInvertedLists):
        lists.prefetch_nthread = 0  # mapped: the page cache reads ahead, no threads
    if merged.get("format") == FAST_SCAN:
        shared = mapped_trained(m, ivf)
        return index if shared is None else moved_lists(index, shared)
    if packable(index):
        raise RetrodbError(f"{path}: merged by an earlier retrodb in the plain layout; "
                           f"run `retrodb index --db {db.root}` once to "
                           "merge it again as fast-scan lists (no retraining)")
    return index


HNSW_EF = 16  # faiss's default efSearch: an HNSW quantizer searches at least this wide


def set_nprobe(index, nprobe: int) -> int:
    """Probe `nprobe` lists (at most all); an HNSW quantizer searches max(16, nprobe)
    wide to return them (set each call: a wider earlier call must not stay in force)."""
    f = faiss()
    ivf = f.extract_index_ivf(index)
    ivf.nprobe = min(nprobe, ivf.nlist)
    q = f.downcast_index(ivf.quantizer)
    if isinstance(q, f.IndexHNSW):
        q.hnsw.efSearch = max(HNSW_EF, ivf.nprobe)
    return int(ivf.nprobe)


class IndexSearcher:
    """The merged index, memory-mapped, with exact re-ranking from the embedding shards.

    `nprobe` and `candidates` default to the operating point chosen when the index was
    merged; `search` may override both per call (thread-safe: calls with different
    settings are serialised).
    """

    def __init__(self, db, nprobe: int | None = None, candidates: int | None = None,
                 store: EmbeddingStore | None = None):
        db = Database(db)
        self.db = db
        m, merged = merged_index(db)
        self.manifest = m
        self.trained = m.data["trained"]
        self.merged = merged
        self.recall = m.data.get("recall")
        chosen = (self.recall or {}).get("chosen") or {}
        self.nprobe = int(nprobe or chosen.get("nprobe") or min(self.trained["nlist"], 16))
        self.candidates = int(candidates if candidates is not None
                              else chosen.get("candidates", 0))
        if self.nprobe <= 0:
            raise RetrodbError(f"--nprobe {self.nprobe}: must be at least 1")
        if self.candidates < 0:
            raise RetrodbError(f"--candidates {self.candidates}: must be 0 or positive")
        self.index = open_merged(db, m, merged)
        self.d = int(self.index.d)
        self.ntotal = int(self.index.ntotal)
        self._store = store
        self._lock = threading.Lock()
        set_nprobe(self.index, self.nprobe)

    @property
    def store(self) -> EmbeddingStore:
        if self._store is None:
            self._store = EmbeddingStore(self.db)
        if self._store.dim != self.d:
            raise RetrodbError(f"{self.manifest.path_of(self.merged['file'])}: dimension "
                               f"{self.d}, the embeddings have {self._store.dim}; rebuild "
                               "the index (remove DB/index, rerun `retrodb index`)")
        return self._store

    def candidates_for(self, xq: np.ndarray, n: int, nprobe: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The PQ index's top `n` (approximate scores, ids) at `nprobe`."""
        with self._lock:
            set_nprobe(self.index, nprobe or self.nprobe)
            return self.index.search(xq, n)

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
            raise RetrodbError(f"-k {k}: must be at least 1")
        c = self.candidates if candidates is None else candidates
        D, I = self.candidates_for(xq, max(c, k) if c else k, nprobe)
        if not c:
            return D, I
        return rerank(self.store, xq, I, k)


def rerank(store: EmbeddingStore, xq: np.ndarray, cand: np.ndarray, k: int,
           pairs: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """Top `k` of each row of candidate ids `cand` by exact inner product with `xq`.

    The distinct candidates of a block of queries are read once, in id order, from the
    memory-mapped float16 shards (disk, not RAM) into this thread's reused buffer, and
    scored by faiss's threaded `knn_inner_products_by_idx`. Blocks hold at most `pairs`
    (query, candidate) pairs: the buffer stays ≤ pairs × dim × 6 bytes (75 MB at 384-d)."""
    f = faiss()
    n, c = cand.shape
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    block = max(1, pairs // max(1, c))
    for lo in range(0, n, block):
        ci = cand[lo:lo + block]
        valid = ci >= 0
        uniq, inv = np.unique(ci[valid], return_inverse=True)
        if not len(uniq):
            continue
        y = store.get(uniq, scratch=True)
        local = np.full(ci.shape, -1, dtype=np.int64)
        local[valid] = inv.reshape(-1)
        # faiss stops a row at its first -1: valid ids first, in their order
        local = np.ascontiguousarray(np.take_along_axis(
            local, np.argsort(~valid, axis=1, kind="stable"), axis=1))
        x = np.ascontiguousarray(xq[lo:lo + block], dtype=np.float32)
        vals = np.empty((len(x), k), dtype=np.float32)
        got = np.empty((len(x), k), dtype=np.int64)
        f.knn_inner_products_by_idx(f.swig_ptr(x), f.swig_ptr(y), f.swig_ptr(local),
                                    store.dim, len(x), len(y), c, k, f.swig_ptr(vals),
                                    f.swig_ptr(got), c)  # ld_ids: row stride, explicit
        ok = got >= 0
        scores[lo:lo + block] = np.where(ok, vals, -np.inf)
        ids[lo:lo + block] = np.where(ok, uniq[np.maximum(got, 0)], -1)
    return scores, ids
