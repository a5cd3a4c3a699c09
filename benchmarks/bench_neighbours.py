"""Benchmark `retrodb neighbours` against the index's own search, in the same run.

  - queries/s of the stage (read keys, search, filter, write shards) with 1 and 2
    workers at the calibrated nprobe, vs one in-process `IndexSearcher.search` of the
    same keys at the same nprobe and candidates, unfiltered (the baseline);
  - cost of exclusion: candidates searched per query and queries/s with the own-
    document and validation filters on vs off;
  - the calibration: nprobe chosen, filtered recall vs exact, and its time.
Writes benchmarks/results/neighbours.md and prints it.

The database must be indexed; neighbour sets are built in a scratch copy (hard links),
so the database itself is not touched.

Usage: python benchmarks/bench_neighbours.py --db DB [-k 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def scratch_copy(src: Path, dst: Path) -> Path:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link,
                    ignore=lambda d, names: ["neighbours", ".lock"] if Path(d) == src
                    else [".lock"])
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("-k", type=int, default=2)
    ap.add_argument("--out", default="neighbours.md")
    args = ap.parse_args()

    import faiss

    from retrodb.stores.searcher import IndexSearcher
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours
    from retrodb.stores.vectors import EmbeddingStore

    with tempfile.TemporaryDirectory(dir=args.db.parent) as tmp:
        db = scratch_copy(args.db, Path(tmp) / "db")
        # 1. calibration (and a first full build, not timed as throughput)
        t = time.perf_counter()
        cal = build_neighbours(db, NeighboursConfig(set="cal", k=args.k))
        cal_s = time.perf_counter() - t
        rec = cal.recall
        nprobe = rec["nprobe"]
        base = dict(k=args.k, nprobe=nprobe, recall_queries=0)
        runs = {}
        for name, extra in [("excl-1", dict(workers=1)), ("excl-2", dict(workers=2)),
                            ("none-1", dict(workers=1, exclude_same_doc=False,
                                            exclude_validation=False))]:
            t = time.perf_counter()
            r = build_neighbours(db, NeighboursConfig(set=name, **base, **extra))
            runs[name] = (r.queries / (time.perf_counter() - t), r.stats)
        # baseline: the index's own search of every key, one call, in RAM
        store = EmbeddingStore(db)
        xq = np.concatenate([b for _, b in store.blocks()])
        s = IndexSearcher(db, nprobe=nprobe, store=store)
        t = time.perf_counter()
        s.search(xq, args.k)
        base_qps = len(xq) / (time.perf_counter() - t)
        n = store.n
        cand = s.candidates
        index_nprobe = IndexSearcher(db).nprobe

    q1, st1 = runs["excl-1"]
    q2, _ = runs["excl-2"]
    q0, st0 = runs["none-1"]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, faiss {faiss.__version__}")
    lines = [
        "## neighbours",
        "",
        f"Database: {n:,} chunks (all queried), k = {args.k}; index operating point nprobe "
        f"{index_nprobe} → calibrated for filtered search to nprobe {nprobe} "
        f"(filtered recall@{args.k} {rec['recall']:.3f} vs exact filtered search on "
        f"{rec['queries']:,} sampled chunks; sweep "
        + ", ".join(f"{p['nprobe']}: {p[f'recall@{args.k}']:.3f}" for p in rec["points"])
        + f"); {cand} candidates re-ranked. First build with calibration: {cal_s:.1f} s. "
        f"Machine: {machine}. Command: `python benchmarks/bench_neighbours.py --db DB "
        f"-k {args.k}`.",
        "",
        "| measure | ours | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| queries/s, 1 worker, own document + validation excluded, shards written vs one "
        f"in-RAM `IndexSearcher.search` of all keys (same nprobe, unfiltered) | {q1:,.0f} | "
        f"{base_qps:,.0f} | {q1 / base_qps:.2f}× |",
        f"| queries/s, 2 workers vs 1 worker | {q2:,.0f} | {q1:,.0f} | {q2 / q1:.2f}× |",
        f"| queries/s, no exclusion (1 worker) vs the same baseline | {q0:,.0f} | "
        f"{base_qps:,.0f} | {q0 / base_qps:.2f}× |",
        f"| cost of exclusion: candidates searched per query, excluded vs not | "
        f"{st1['searched_per_query']:.1f} | {st0['searched_per_query']:.1f} | "
        f"{st1['searched_per_query'] / max(st0['searched_per_query'], 1e-9):.2f}× |",
        f"| cost of exclusion: queries/s, excluded vs not | {q1:,.0f} | {q0:,.0f} | "
        f"{q1 / q0:.2f}× |",
        "",
        f"Exclusion: {st1['dropped_same_doc']:,} same-document and "
        f"{st1['dropped_validation']:,} validation candidates dropped; "
        f"{st1['widened']:,} queries ({st1['widened'] / n:.1%}) searched again wider; "
        f"{st1['short']:,} short of k.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
