"""One contender of bench_search.py, in its own process: build, or serve searches.

    python search_peer.py build KIND KEYS_DIR OUT_DIR      → JSON line: seconds, peak RSS
    python search_peer.py serve KIND KEYS_DIR OUT_DIR QUERIES.npy
        stdin:  {"param": ..., "threads": 2, "k": 10, "out": "ids.npy"} per line
        stdout: {"ready": true, "resident_bytes": ...} then {"seconds": ...} per line

KEYS_DIR holds the database's float16 key shards (`00000.npy`, ...). This file imports
only numpy and the contender's library, so it runs in ScaNN's own virtual environment
too (scann needs numpy ≥ 2, autofaiss pins numpy < 2). `resident_bytes` is the growth of
the process's anonymous (non-file) memory while the index loads: what it holds in RAM,
memory-mapped files (on-disk lists, float16 keys) not counted.
"""

from __future__ import annotations

import glob
import json
import os
import resource
import sys
import time

import numpy as np

SAMPLE_PER_LIST = 100


def nlist_for(n: int) -> int:
    """The faiss IVF peers get the lists retrodb's rule gives (4096 at ~1.2M keys)."""
    return int(2 ** max(0, round(np.log2(max(1.0, 4 * np.sqrt(n))))))


def keys(keys_dir: str) -> np.ndarray:
    parts = [np.load(p, mmap_mode="r") for p in sorted(glob.glob(f"{keys_dir}/[0-9]*.npy"))]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# faiss peers ---------------------------------------------------------------------------
def faiss_build(kind: str, x: np.ndarray, out: str) -> dict:
    import faiss

    d = x.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    t0 = time.time()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, ip)
        index.hnsw.efConstruction = 40
        index.add(x)
        faiss.write_index(index, f"{out}/index.faiss")
        return {"seconds": time.time() - t0}
    rng = np.random.default_rng(0)
    nlist = nlist_for(len(x))
    sample = x[np.sort(rng.choice(len(x), min(len(x), SAMPLE_PER_LIST * nlist),
                                  replace=False))]
    base = {"ivfpq_fs": f"IVF{nlist},PQ{d // 4}x4fs", "rabitq": f"IVF{nlist},RaBitQ",
            "rabitq_fs": f"IVF{nlist},RaBitQfs"}[kind]
    index = faiss.index_factory(d, base, ip)
    faiss.extract_index_ivf(index).cp.spherical = True
    index.train(sample)
    index.add(x)
    refine = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, ip)
    refine.add(x)
    faiss.write_index(index, f"{out}/base.faiss")
    faiss.write_index(refine, f"{out}/refine.faiss")
    return {"seconds": time.time() - t0}


class FaissServer:
    def __init__(self, kind: str, out: str):
        import faiss

        self.faiss, self.kind = faiss, kind
        if kind == "hnsw":
            self.index = faiss.read_index(f"{out}/index.faiss")
            return
        base = faiss.read_index(f"{out}/base.faiss")
        refine = faiss.read_index(f"{out}/refine.faiss", faiss.IO_FLAG_MMAP_IFC)
        self.index = faiss.IndexRefine(base, refine)
        self.index.own_fields = False
        self.keep = (base, refine)

    def search(self, q: np.ndarray, k: int, param) -> np.ndarray:
        f = self.faiss
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(param)
            return self.index.search(q, k)[1]
        nprobe, k_factor = param
        ivf = f.extract_index_ivf(self.keep[0])
        ivf.nprobe = int(nprobe)
        self.index.k_factor = float(k_factor)
        return self.index.search(q, k)[1]

    def threads(self, n: int) -> None:
        self.faiss.omp_set_num_threads(n)


# ScaNN ---------------------------------------------------------------------------------
def scann_build(x: np.ndarray, out: str) -> dict:
    import scann

    t0 = time.time()
    leaves = int(2 ** round(np.log2(np.sqrt(len(x)))))
    s = (scann.scann_ops_pybind.builder(x, 10, "dot_product")
         .tree(num_leaves=leaves, num_leaves_to_search=32, training_sample_size=min(
             len(x), 250_000))
         .score_ah(2, anisotropic_quantization_threshold=0.2)
         .reorder(100).build())
    s.serialize(out)
    return {"seconds": time.time() - t0, "leaves": leaves}


class ScannServer:
    def __init__(self, out: str):
        import scann

        self.s = scann.scann_ops_pybind.load_searcher(out)
        self.n = 1

    def search(self, q: np.ndarray, k: int, param) -> np.ndarray:
        leaves, reorder = param
        ids, _ = self.s.search_batched_parallel(q, k, leaves_to_search=int(leaves),
                                                pre_reorder_num_neighbors=int(reorder),
                                                batch_size=max(1, len(q) // self.n)) \
            if self.n > 1 else self.s.search_batched(q, k, leaves_to_search=int(leaves),
                                                       pre_reorder_num_neighbors=int(reorder))
        return np.asarray(ids, dtype=np.int64)

    def threads(self, n: int) -> None:
        self.n = n


# retrodb -------------------------------------------------------------------------------
class OursServer:
    def __init__(self, db: str):
        import faiss

        from retrodb.stores.searcher import IndexSearcher

        self.faiss = faiss
        self.s = IndexSearcher(db)

    def search(self, q: np.ndarray, k: int, param) -> np.ndarray:
        nprobe, candidates = param
        return self.s.search(q, k, int(nprobe), int(candidates))[1]

    def threads(self, n: int) -> None:
        self.faiss.omp_set_num_threads(n)


def import_library(kind: str) -> None:
    """The contender's library, imported before its index loads: what the index takes
    is then the growth of anonymous memory, the library's own code not counted."""
    import importlib

    names = {"scann": ["scann"], "retrodb": ["faiss", "torch", "retrodb.stores.searcher"]}
    for name in names.get(kind, ["faiss"]):  # torch: the re-rank's float16 conversion
        importlib.import_module(name)


def serve(kind: str, keys_dir: str, out: str, queries: str) -> None:
    q = np.ascontiguousarray(np.load(queries), dtype=np.float32)
    import_library(kind)
    before = rss_anon()
    server = (OursServer(out) if kind == "retrodb" else ScannServer(out)
              if kind == "scann" else FaissServer(kind, out))
    resident = rss_anon() - before
    print(json.dumps({"ready": True, "resident_bytes": resident}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        server.threads(int(cmd["threads"]))
        param = cmd["param"]
        t = time.perf_counter()
        ids = server.search(q, int(cmd["k"]), param)
        took = time.perf_counter() - t
        np.save(cmd["out"], ids)
        # serving memory: the index plus whatever searching keeps (buffers, caches)
        print(json.dumps({"seconds": took, "anon_bytes": rss_anon() - before}), flush=True)


def main() -> None:
    op, kind, keys_dir, out = sys.argv[1:5]
    if op == "build":
        x = keys(keys_dir)
        os.makedirs(out, exist_ok=True)
        r = scann_build(x, out) if kind == "scann" else faiss_build(kind, x, out)
        print(json.dumps({**r, "peak_rss_mb": peak_mb()}), flush=True)
    else:
        serve(kind, keys_dir, out, sys.argv[5])


if __name__ == "__main__":
    main()
