"""Benchmark `retrodb neighbours`: what filtering costs, against the index's own search.

Contenders, interleaved round by round after a warm-up build of each, all at the
nprobe and candidate count calibrated for the filtered set (the same operating point):
  - filtered: the stage with its defaults (own document and validation documents
    excluded; keys read, searched, filtered, shards written), 1 worker;
  - unfiltered: the same stage with both exclusions off, 1 worker;
  - 2 workers: the filtered stage with 2 worker processes;
  - in-RAM search: one `IndexSearcher.search` call over every key (no filter, no
    writes): the index's own speed.
Neighbour sets are built in a scratch copy (hard links), so the database is untouched.

Usage: python benchmarks/bench_neighbours.py --db DB [-k 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Measure, Result, Side, interleave


def scratch_copy(src: Path, dst: Path) -> Path:
    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
    shutil.copytree(src, dst, copy_function=link,
                    ignore=lambda d, names: ["neighbours", "models", ".lock"]
                    if Path(d) == src else [".lock"])
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours
    from retrodb.stores.searcher import IndexSearcher
    from retrodb.stores.vectors import EmbeddingStore

    res = Result("neighbours", ["retrodb/stages/neighbours", "retrodb/stores/searcher.py",
                                "retrodb/stores/vectors.py", "retrodb/stores/tokens.py"],
                 "Neighbours: filtered search against unfiltered, and the index's own")
    with tempfile.TemporaryDirectory(dir=a.db.parent) as tmp:
        db = scratch_copy(a.db, Path(tmp) / "db")
        t = time.perf_counter()
        cal = build_neighbours(db, NeighboursConfig(set="cal", k=a.k))
        cal_s = time.perf_counter() - t
        nprobe, cand = cal.recall["nprobe"], cal.recall.get("candidates")
        base = dict(k=a.k, nprobe=nprobe, candidates=cand, recall_queries=0)
        store = EmbeddingStore(db)
        xq = np.concatenate([b for _, b in store.blocks()])
        searcher = IndexSearcher(db, nprobe=nprobe, candidates=cand, store=store)
        count = {"n": 0}
        stats = {}

        def stage(name: str, **extra):
            def run() -> float:
                count["n"] += 1
                t0 = time.perf_counter()
                r = build_neighbours(db, NeighboursConfig(set=f"{name}-{count['n']}",
                                                          **base, **extra))
                stats[name] = r.stats
                return r.queries / (time.perf_counter() - t0)
            return run

        def in_ram() -> float:
            t0 = time.perf_counter()
            searcher.search(xq, a.k)
            return len(xq) / (time.perf_counter() - t0)

        q = interleave({"filtered": stage("filtered", workers=1),
                        "unfiltered": stage("unfiltered", workers=1, exclude_same_doc=False,
                                            exclude_validation=False),
                        "filtered2": stage("filtered2", workers=2), "in_ram": in_ram},
                       a.rounds)
    res.add(Measure("queries/s, filtered stage vs unfiltered stage (same nprobe, "
                    "candidates; 1 worker; shards written by both)", "q/s",
                    Side("own document + validation excluded", q["filtered"]),
                    Side("no exclusion", q["unfiltered"])))
    res.add(Measure("queries/s, filtered stage (1 worker) vs one in-RAM search call",
                    "q/s", Side("retrodb neighbours", q["filtered"]),
                    Side("IndexSearcher.search, unfiltered, nothing written", q["in_ram"])))
    res.add(Measure("queries/s, 2 workers vs 1", "q/s", Side("2 workers", q["filtered2"]),
                    Side("1 worker", q["filtered"])))
    st = stats["filtered"]
    threads = os.cpu_count()  # one in-process worker searches with every core
    res.facts.update(n=store.n, k=a.k, nprobe=nprobe, candidates=cand,
                     filtered_recall=cal.recall.get("recall"), calibration_s=round(cal_s, 1),
                     searched_per_query=st["searched_per_query"],
                     searched_per_query_unfiltered=stats["unfiltered"]["searched_per_query"],
                     widened=st["widened"], short=st["short"],
                     queries_per_core_s=float(np.median(q["filtered"])) / threads)
    res.notes.append("{n} chunks queried, k = {k}, nprobe {nprobe} and {candidates} "
                     "candidates (calibrated: filtered recall@k {filtered_recall}, "
                     "{calibration_s} s); candidates searched per query {searched_per_query} "
                     "filtered, {searched_per_query_unfiltered} unfiltered; {widened} "
                     "queries searched again wider, {short} short of k.")
    res.save()


if __name__ == "__main__":
    main()
