"""Search at ≥ 1M real keys: retrodb's index against ScaNN and faiss's best layouts, in
one run, on the same 1,000 queries.

Contenders, each built in its own process (build time, peak RSS) and served by its
own process (resident bytes: the anonymous memory its index takes; memory-mapped files
count as disk):
  - retrodb: `retrodb index` with its defaults (rule factory, k-means flat below 8,192
    lists and two-level with refinement rounds from there, 4-bit codes merged into
    fast-scan lists on disk and memory-mapped, exact re-ranking from the on-disk float16
    keys), built in a hard-linked copy of the database;
  - ScaNN 1.4.2 (AH with 2 dimensions per 4-bit block, reorder 100, ~√n leaves) in its
    own virtual environment (it needs numpy ≥ 2; autofaiss pins numpy < 2), created here;
  - faiss HNSW32 over the float32 keys, in RAM;
  - faiss IVF-PQ fast-scan (d/4 × 4 bits) + float16 refine memory-mapped;
  - faiss IVF-RaBitQ, and IVF-RaBitQ fast-scan, + float16 refine memory-mapped.
Recall@10 counts ties (a result whose exact score reaches the exact 10th score). Each
contender's parameter is swept at 1 thread; the fastest setting with recall@10 ≥ 0.95
is then timed at 1 and 2 threads, contenders interleaved round by round.

Also: retrodb's index add against one in-RAM `index.add` of the same vectors, and its
two-level k-means against flat k-means (recall at the same nprobe): the index is built a
second time with the k-means the default did not run.

Usage: python benchmarks/bench_search.py --db DB [--queries 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ROOT, Measure, Result, Side

HERE = Path(__file__).resolve().parent
PEER = str(HERE / "search_peer.py")
SCANN_VENV = ROOT / ".cache" / "scann-venv"
TARGET = 0.95
SWEEPS = {
    "retrodb": [(p, c) for c in (40, 100) for p in (8, 16, 32, 64, 128, 256)],
    "scann": [(p, 100) for p in (8, 16, 32, 64, 128)],
    "hnsw": [16, 32, 64, 128, 256],
    "ivfpq_fs": [(p, f) for f in (4, 10) for p in (8, 16, 32, 64, 128, 256)],
    "rabitq": [(p, 10) for p in (8, 16, 32, 64, 128)],
    "rabitq_fs": [(p, 10) for p in (8, 16, 32, 64, 128)],
}
LABELS = {"retrodb": "retrodb (default index)", "scann": "ScaNN 1.4.2 (AH 4-bit, reorder)",
          "hnsw": "faiss HNSW32 (float32 in RAM)",
          "ivfpq_fs": "faiss IVF-PQ fast-scan + fp16 refine (mmap)",
          "rabitq": "faiss IVF-RaBitQ + fp16 refine (mmap)",
          "rabitq_fs": "faiss IVF-RaBitQ fast-scan + fp16 refine (mmap)"}


def python_for(kind: str) -> str:
    if kind != "scann":
        return sys.executable
    py = SCANN_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SCANN_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "scann==1.4.2"], check=True)
    return str(py)


def children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def retrodb_cli(*args: str) -> dict:
    p = subprocess.run([str(Path(sys.executable).with_name("retrodb")), *args, "--json"],
                       capture_output=True, text=True, env=dict(os.environ,
                                                                 HF_HUB_OFFLINE="1"))
    if p.returncode:
        raise SystemExit(f"retrodb {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout)


def build_ours(db: Path, kmeans: str) -> dict:
    t = time.time()
    r = retrodb_cli("index", "--db", str(db), "--workers", "2", "--rebuild", "--kmeans",
                    kmeans, "--target-recall", str(TARGET), "--candidates", "0,40,100")
    s = r["seconds"]
    merged = json.loads((db / "index" / "manifest.json").read_text())["merged"]
    return {"seconds": s.get("train", 0) + s.get("add", 0) + s.get("merge", 0),
            "lists_bytes": merged["ivfdata"]["bytes"],
            "wall": time.time() - t, "add_seconds": s.get("add"), "result": r,
            "peak_rss_mb": children_peak_mb()}


def hardlinked_copy(db: Path, to: Path) -> Path:
    """A copy of the database sharing every file but the index (built anew there)."""
    if to.exists():
        shutil.rmtree(to)
    shutil.copytree(db, to, copy_function=os.link,
                    ignore=shutil.ignore_patterns("index", "models", "neighbours"))
    return to


def in_ram_add(db: Path) -> dict:
    """One `index.add` of every key into the trained index, float32 already in RAM."""
    code = r"""
import glob, json, sys, time, numpy as np, faiss
db = sys.argv[1]
idx = faiss.read_index(f"{db}/index/trained.faiss")
x = np.concatenate([np.load(p).astype(np.float32) for p in sorted(glob.glob(f"{db}/embeddings/[0-9]*.npy"))])
faiss.omp_set_num_threads(2)
t = time.time(); idx.add(x); s = time.time() - t
print(json.dumps({"seconds": s, "n": len(x)}))
"""
    p = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                       check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


class Server:
    def __init__(self, kind: str, out: str, keys_dir: str, queries: Path):
        self.kind = kind
        self.p = subprocess.Popen([python_for(kind), PEER, "serve", kind, keys_dir, out,
                                   str(queries)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, HF_HUB_OFFLINE="1"))
        self.ready = json.loads(self.p.stdout.readline())

    def search(self, param, threads: int, out: Path, k: int = 10) -> float:
        self.p.stdin.write(json.dumps({"param": param, "threads": threads, "k": k,
                                       "out": str(out)}) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"{self.kind}: the serving process died")
        reply = json.loads(line)
        self.serving_peak = max(getattr(self, "serving_peak", 0), reply["anon_bytes"])
        return reply["seconds"]

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(60)


def recall(ids: np.ndarray, xq: np.ndarray, keys, gt10: np.ndarray) -> float:
    """Recall@10 with ties: results whose exact score reaches the exact 10th score."""
    valid = ids >= 0
    rows = np.zeros(ids.shape + (xq.shape[1],), np.float32)
    rows[valid] = keys(ids[valid])
    s = np.einsum("qkd,qd->qk", rows, xq)
    return float((valid & (s >= gt10[:, None] - 1e-4)).sum() / ids.size)


def sweep(servers: dict, xq, keys, gt10, tmp: Path) -> dict:
    """Every setting of every contender at 1 thread: recall@10 and queries/s."""
    out = {}
    for kind, srv in servers.items():
        pts = []
        for param in SWEEPS[kind]:
            srv.search(param, 1, tmp / "warm.npy")  # warm: pages, caches, thread pools
            s = min(srv.search(param, 1, tmp / "ids.npy") for _ in range(2))
            r = recall(np.load(tmp / "ids.npy"), xq, keys, gt10)
            pts.append({"param": param, "recall": round(r, 4), "qps": len(xq) / s})
            print(f"{kind} {param}: recall@10 {r:.4f}, {len(xq) / s:,.0f} q/s",
                  file=sys.stderr, flush=True)
            if r >= 0.995:
                break
        out[kind] = pts
    return out


def choose(points: list[dict]) -> dict:
    ok = [p for p in points if p["recall"] >= TARGET]
    return max(ok, key=lambda p: p["qps"]) if ok else max(points, key=lambda p: p["recall"])


def timed(servers: dict, chosen: dict, n: int, rounds: int, tmp: Path) -> dict:
    """Queries/s of each contender's chosen setting at 1 and 2 threads, interleaved."""
    qps = {(k, t): [] for k in servers for t in (1, 2)}
    for t in (1, 2):
        for kind, srv in servers.items():  # warm-up of each at this thread count
            srv.search(chosen[kind]["param"], t, tmp / "w.npy")
        for _ in range(rounds):
            for kind, srv in servers.items():
                qps[kind, t].append(n / srv.search(chosen[kind]["param"], t, tmp / "w.npy"))
    return qps


def build_peers(kinds, keys_dir: str, work: Path, rebuild: bool, n: int) -> dict:
    """Each peer built in its own process (reused from an earlier run over the same keys
    unless `rebuild`: build times compare only when built in the same run)."""
    built = {}
    for kind in kinds:
        out = work / kind
        rec = out / "build.json"
        if rebuild or not rec.exists() or json.loads(rec.read_text()).get("n") != n:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            p = subprocess.run([python_for(kind), PEER, "build", kind, keys_dir, str(out)],
                               capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"{kind} build failed:\n{p.stderr[-3000:]}")
            rec.write_text(json.dumps({**json.loads(p.stdout.strip().splitlines()[-1]),
                                       "n": n, "built_at": time.strftime(
                                           "%Y-%m-%d %H:%M:%S", time.gmtime())}))
            built[kind] = {**json.loads(rec.read_text()), "this_run": True}
        built.setdefault(kind, {**json.loads(rec.read_text()), "this_run": False})
        print(f"{kind}: built in {built[kind]['seconds']:.0f} s", file=sys.stderr)
    return built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True, help="a database of ≥ 1M keys")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "search")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7,
                    help="timed rounds per contender and thread count (median kept)")
    ap.add_argument("--rebuild-peers", action="store_true")
    ap.add_argument("--skip-flat", action="store_true", help="no second build with the "
                    "other k-means (flat or two-level)")
    a = ap.parse_args()
    a.work = a.work.resolve()  # ScaNN's saved assets name their files by this path
    sys.path.insert(0, str(ROOT))
    from retrodb.stages.index.recall import exact_search
    from retrodb.stores.vectors import EmbeddingStore

    a.work.mkdir(parents=True, exist_ok=True)
    store = EmbeddingStore(a.db)
    qids = store.sample_ids(a.queries, 12345)
    xq = store.get(qids)
    np.save(a.work / "queries.npy", xq)
    gt_d, _ = exact_search(store, xq, 10)
    gt10 = gt_d[:, 9]
    keys_dir = str(a.db / "embeddings")
    res = Result("search", ["retrodb/stores/searcher.py", "retrodb/stores/vectors.py",
                            "retrodb/stages/index"],
                 f"Search at {store.n:,} real keys: retrodb against ScaNN and faiss")
    # every index is built in a hard-linked copy: the database's own index is untouched
    ours_db = hardlinked_copy(a.db, a.work / "ours-db")
    ours = build_ours(ours_db, "auto")
    ram_add = in_ram_add(ours_db)  # its trained index, the same (hard-linked) keys
    ours["kmeans"] = kmeans_of(ours_db)
    other = "two-level" if ours["kmeans"] == "flat" else "flat"
    alt = None if a.skip_flat else build_ours(hardlinked_copy(a.db, a.work / "alt-db"),
                                              other)
    if alt is not None:
        alt["kmeans"] = other
    peers = build_peers(["scann", "hnsw", "ivfpq_fs", "rabitq", "rabitq_fs"], keys_dir,
                        a.work, a.rebuild_peers, store.n)
    servers = {"retrodb": Server("retrodb", str(ours_db), keys_dir, a.work / "queries.npy")}
    for kind in peers:
        servers[kind] = Server(kind, str(a.work / kind), keys_dir, a.work / "queries.npy")
    try:
        points = sweep(servers, xq, store.get, gt10, a.work)
        chosen = {k: choose(v) for k, v in points.items()}
        qps = timed(servers, chosen, len(xq), a.rounds, a.work)
        resident = {k: s.ready["resident_bytes"] / store.n for k, s in servers.items()}
        serving = {k: s.serving_peak / 2**20 for k, s in servers.items()}
    finally:
        for s in servers.values():
            s.close()
    builds = {"retrodb": ours, **peers}
    report(res, store, points, chosen, qps, (resident, serving), builds, ours, ram_add, alt)
    plot(points, chosen)
    res.save()


def median(xs):
    return float(np.median(xs))


def kmeans_of(db: Path) -> str:
    """The k-means `retrodb index` ran ("flat" or "two-level"), from its manifest."""
    return json.loads((db / "index" / "manifest.json").read_text())["trained"]["kmeans"]


def report(res, store, points, chosen, qps, memory, builds, ours, ram_add, alt) -> None:
    resident, serving = memory
    faiss_kinds = [k for k in ("hnsw", "ivfpq_fs", "rabitq", "rabitq_fs") if k in chosen]
    reached = [k for k in faiss_kinds if chosen[k]["recall"] >= TARGET]
    best = max(reached or faiss_kinds, key=lambda k: median(qps[k, 2]))
    for t in (2, 1):
        res.add(Measure(f"queries/s at recall@10 ≥ {TARGET}, {t} thread(s): vs ScaNN",
                        "q/s", Side(LABELS["retrodb"], qps["retrodb", t]),
                        Side(LABELS["scann"], qps["scann", t])))
        res.add(Measure(f"queries/s at recall@10 ≥ {TARGET}, {t} thread(s): vs the best "
                        "faiss layout", "q/s", Side(LABELS["retrodb"], qps["retrodb", t]),
                        Side(LABELS[best], qps[best, t])))
    fastest = min((k for k in builds if k != "retrodb"), key=lambda k: builds[k]["seconds"])
    res.add(Measure("build time (train + add + merge) vs the fastest peer's", "s",
                    Side("retrodb", [ours["seconds"]]),
                    Side(LABELS[fastest], [builds[fastest]["seconds"]]),
                    higher_is_better=False))
    n = store.n
    res.add(Measure("index add: vectors/s of the add step (2 workers, float16 shards) vs "
                    "one in-RAM index.add (2 threads, float32 in RAM)", "vectors/s",
                    Side("retrodb add parts", [n / ours["add_seconds"]]),
                    Side("faiss index.add", [ram_add["n"] / ram_add["seconds"]])))
    rows = []
    for k in chosen:
        c = chosen[k]
        rows.append([LABELS[k], json.dumps(c["param"]), c["recall"], median(qps[k, 1]),
                     median(qps[k, 2]), resident[k], serving[k], builds[k]["seconds"],
                     builds[k].get("peak_rss_mb")])
    res.table(f"Each contender at its fastest setting with recall@10 ≥ {TARGET} (the "
              "best recall where none reached it); resident = anonymous memory the "
              "index takes in the serving process, per vector (memory-mapped lists, "
              "centroids and keys are disk); serving MB = anonymous memory after the "
              "searches (index plus search buffers), library code not counted",
              ["contender", "setting", "recall@10", "q/s 1 thread", "q/s 2 threads",
               "resident B/vector", "serving MB", "build s", "build peak RSS MB"], rows)
    res.table("Sweep at 1 thread (every setting tried)", ["contender", "setting",
                                                          "recall@10", "q/s"],
              [[LABELS[k], json.dumps(p["param"]), p["recall"], p["qps"]]
               for k, pts in points.items() for p in pts])
    t = ours["result"]
    nlist, d = _nlist(t["factory"]), store.dim
    res.facts.update(n=n, dim=d, factory=t["factory"], nlist=nlist, kmeans=ours["kmeans"],
                     resident_ours=round(resident["retrodb"], 1),
                     lists_disk_ours=round(ours["lists_bytes"] / n, 1),
                     ours_build_s=round(ours["seconds"], 1),
                     add_vectors_per_core_s=n / ours["add_seconds"] / 2)
    runs = {ours["kmeans"]: t} | ({alt["kmeans"]: alt["result"]} if alt else {})
    from retrodb.stages.index.kmeans import TWO_LEVEL_FROM, distances_per_vector

    for kind, r in runs.items():  # 2 cores: core-seconds = 2 × wall
        key = "kmeans_core_s_per_unit" if kind == "flat" else "kmeans2_core_s_per_unit"
        units = r["train_size"] * distances_per_vector(nlist, kind) * d
        res.facts[key] = r["seconds"]["train"] * 2 / units
    if len(runs) == 2:
        a = {p["nprobe"]: p for p in runs["two-level"]["recall"]["sweep"]
             if p["candidates"] == 100}
        b = {p["nprobe"]: p for p in runs["flat"]["recall"]["sweep"]
             if p["candidates"] == 100}
        diffs = [abs(a[p]["recall@10"] - b[p]["recall@10"]) for p in a if p in b]
        res.facts.update(flat_train_s=runs["flat"]["seconds"]["train"],
                         two_level_train_s=runs["two-level"]["seconds"]["train"],
                         two_level_vs_flat_max_recall_diff=round(max(diffs), 4),
                         compared_nprobes=len(diffs), two_level_from=TWO_LEVEL_FROM)
        res.notes.append("Two-level k-means against flat k-means (same sample, same "
                         "queries, 100 candidates): recall@10 differs by at most "
                         "{two_level_vs_flat_max_recall_diff} over {compared_nprobes} "
                         "nprobe values; training took {two_level_train_s} s against "
                         "{flat_train_s} s. The default here ran {kmeans} k-means "
                         "(two-level from {two_level_from} lists on).")
    reused = [f"{LABELS[k]} (built {b.get('built_at', 'earlier')})" for k, b in
              builds.items() if k != "retrodb" and not b.get("this_run", True)]
    if reused:
        res.notes.append("Peers reused from an earlier run over the same keys (their build "
                         "times are from then): " + "; ".join(reused) + ".")
    res.notes.append("retrodb: {factory} over {n} keys of dimension {dim}, "
                     "{resident_ours} B/vector resident (anonymous memory); its fast-scan "
                     "lists are {lists_disk_ours} B/vector on disk, memory-mapped (in the "
                     "page cache while searched, shared by every process on the machine), "
                     "like the peers' float16 refine vectors; built in {ours_build_s} s.")


def _nlist(factory: str) -> int:
    import re

    return int(re.search(r"IVF(\d+)", factory).group(1))


def plot(points: dict, chosen: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (k, pts) in enumerate(points.items()):
        ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], "o-", color=f"C{i}",
                label=LABELS[k])
    ax.axvline(TARGET, color="grey", ls=":")
    ax.set_xlabel("recall@10 (ties counted)")
    ax.set_ylabel("queries/s, 1 thread")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "search.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
