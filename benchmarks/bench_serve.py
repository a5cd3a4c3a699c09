"""Benchmark `retrodb serve` against in-process `retrodb.open(DB).search`, in one run.

Contenders, interleaved round by round after a warm-up, on the same queries (texts of
chunks of the database that occur once, one text per request, k=4):
  - in process: `retrodb.open(DB).search` over the queries in batches of --batch, the
    batched throughput one process reaches (the baseline);
  - the service (`retrodb serve DB`, 1 worker, on 127.0.0.1) with 1, 8 and 64
    concurrent clients (an asyncio httpx client, one connection per client, each
    sending its next request when the last is answered): queries/s, and the p50/p99
    latency of a request.
Goal at 64 clients: ≥ 0.8× the in-process batched throughput and p99 under 100 ms, with
no failed request. Every answer's top hit is compared with the in-process one.

Then 2 workers under load while the worker holding the most client connections is
stopped (kill -STOP) for 2 s and continued (kill -CONT): no lost request, no wrong
answer.

Only 127.0.0.1; a bounded number of requests, and --time-limit: rounds stop when it is
near and the servers are always stopped. Writes benchmarks/results/serve.json.

Usage: python benchmarks/bench_serve.py --db DB [--requests 2000] [--rounds 3]
       [--batch 256] [--threads N] [--time-limit 1200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from common import ROOT, Measure, Result, Side, interleave

sys.path.insert(0, str(ROOT / "tests"))
from serve_process import Server as Service, connections, workers_of  # noqa: E402

CLIENTS = (1, 8, 64)
K = 4
STOP_S = 2.0  # under uvicorn's 5 s worker health check


def query_texts(db: Path, n: int, seed: int = 0) -> list[str]:
    """`n` chunk texts that occur once in the database (each is its own best hit)."""
    import numpy as np
    import pyarrow.parquet as pq

    texts = [t for f in sorted((db / "chunks").glob("[0-9]*.parquet"))
             for t in pq.read_table(f, columns=["text"]).column(0).to_pylist()]
    counts = Counter(t.strip() for t in texts)
    unique = [t for t in texts if t.strip() and counts[t.strip()] == 1]
    rng = np.random.default_rng(seed)
    return [unique[i] for i in sorted(rng.choice(len(unique), min(n, len(unique)),
                                                 replace=False))]


async def load(url: str, texts: list[str], clients: int) -> dict:
    """`clients` closed-loop clients send every text once; latencies and answers."""
    import httpx

    todo = iter(range(len(texts)))
    lat: list[float] = []
    top: list = [None] * len(texts)
    failed = 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal failed
        for i in todo:
            t0 = time.perf_counter()
            try:
                r = await c.post("/query", json={"texts": [texts[i]], "k": K})
                ok = r.status_code == 200
                top[i] = r.json()["results"][0][0]["chunk_id"] if ok else None
            except (httpx.HTTPError, ValueError, LookupError):
                ok = False
            lat.append(time.perf_counter() - t0)
            failed += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"qps": len(texts) / wall, "p50": statistics.median(lat) * 1000,
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
            "max": lat[-1] * 1000, "failed": failed, "top": top}


def in_process(retriever, texts: list[str], batch: int) -> dict:
    t0 = time.perf_counter()
    top = []
    for lo in range(0, len(texts), batch):
        top += [hits[0].chunk_id for hits in retriever.search(texts[lo:lo + batch], K)]
    return {"qps": len(texts) / (time.perf_counter() - t0), "top": top}


def stop_and_continue(db: Path, log: Path, texts: list[str], want: list[int]) -> dict:
    """2 workers under 8 clients; the worker holding most connections is stopped 2 s."""
    s = Service(db, log, "--workers", "2")
    stopped: list[int] = []
    try:
        end = time.time() + 120  # both workers answering
        seen: set[int] = set()
        while len(seen) < 2 and time.time() < end:
            seen.add(s.health()["pid"])
            time.sleep(0.05)

        def pause() -> None:
            held: dict[int, int] = {}
            end = time.time() + 30
            while time.time() < end:
                held = {w: connections(w, s.port) for w in workers_of(s.proc.pid)}
                if sum(held.values()) >= 4:
                    break
                time.sleep(0.01)
            stopped.append(max(held, key=held.get))
            os.kill(stopped[0], signal.SIGSTOP)
            time.sleep(STOP_S)
            os.kill(stopped[0], signal.SIGCONT)

        t = threading.Thread(target=pause)
        t.start()
        try:
            out = asyncio.run(load(s.url, texts, 8))
        finally:
            t.join()
        kept = bool(stopped) and stopped[0] in workers_of(s.proc.pid)
    finally:
        for w in stopped:
            try:
                os.kill(w, signal.SIGCONT)
            except ProcessLookupError:
                pass
        s.stop()
    return {"requests": len(texts), "failed": out["failed"],
            "wrong": sum(a != b for a, b in zip(out["top"], want) if a is not None),
            "max_ms": out["max"], "worker_kept": "yes" if kept else "no"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, type=Path)
    ap.add_argument("--requests", type=int, default=2000, help="requests per round and "
                    "contender (and for the stop/continue run, at most 800)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="in-process batch size")
    ap.add_argument("--time-limit", type=float, default=1200, help="seconds in all")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of both "
                    "sides (OMP_NUM_THREADS of the server) [default: torch's]")
    args = ap.parse_args()
    deadline = time.monotonic() + args.time_limit
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:  # the same on both sides: the server process inherits it
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import retrodb

    texts = query_texts(args.db, args.requests)
    res = Result("serve", ["retrodb/query/service.py", "retrodb/query/retriever.py",
                           "retrodb/stores/searcher.py", "retrodb/stores/vectors.py",
                           "cli/serve.py"],
                 "serve: HTTP retrieval vs in-process search")
    retriever = retrodb.open(args.db)
    log = Path(tempfile.gettempdir()) / f"bench_serve_{os.getpid()}.log"
    svc = Service(args.db, log, "--max-batch", str(args.batch))
    runs: dict[str, list[dict]] = {}
    try:
        contenders = {"base": lambda: in_process(retriever, texts, args.batch)}
        for c in CLIENTS:
            contenders[f"c{c}"] = lambda c=c: asyncio.run(load(svc.url, texts, c))
        before = svc.health()["batching"]
        done = 0
        while done < args.rounds:
            t0 = time.monotonic()
            part = interleave(contenders, rounds=1, warmup=1 if done == 0 else 0)
            for key, v in part.items():
                runs.setdefault(key, []).extend(v)
            done += 1
            if time.monotonic() + (time.monotonic() - t0) > deadline - 120:
                break  # leave time for the stop/continue run
        after = svc.health()["batching"]
    finally:
        svc.stop()
    want = runs["base"][0]["top"]
    n_stop = min(len(texts), 800)
    stop = stop_and_continue(args.db, log, texts[:n_stop], want[:n_stop])
    log.unlink(missing_ok=True)
    report(res, runs, before, after, stop, args, done, len(texts))
    path = res.save()
    from report import section  # what BENCHMARKS.md will show

    print(section(json.loads(path.read_text())))


def report(res: Result, runs: dict, before: dict, after: dict, stop: dict, args,
           rounds: int, n: int) -> None:
    want = runs["base"][0]["top"]
    base = Side(f"in process, batches of {args.batch}", [r["qps"] for r in runs["base"]])
    for c in CLIENTS:
        rs = runs[f"c{c}"]
        res.add(Measure(f"queries/s, service with {c} client{'s' if c > 1 else ''} vs "
                        "in-process batched search", "queries/s",
                        Side(f"serve, {c} clients", [r["qps"] for r in rs]), base,
                        note="goal ≥ 0.8×, p99 < 100 ms" if c == 64 else ""))
        res.facts.update({
            f"p50_ms_{c}": statistics.median(r["p50"] for r in rs),
            f"p99_ms_{c}": statistics.median(r["p99"] for r in rs),
            f"failed_{c}": sum(r["failed"] for r in rs),
            f"wrong_{c}": sum(a != b for r in rs for a, b in zip(r["top"], want)
                              if a is not None)})
    calls = after["model_calls"] - before["model_calls"]
    reqs = after["requests"] - before["requests"]
    res.facts.update(threads=args.threads or "torch's default")
    res.facts.update(requests=n, rounds=rounds, model_calls=calls, served=reqs,
                     mean_batch=reqs / max(calls, 1), stop_s=STOP_S,
                     **{f"stop_{k}": v for k, v in stop.items()})
    res.notes += [
        "{requests} queries (chunk texts that occur once), one per request, k = 4, "
        "{rounds} round(s), torch threads: {threads}. Latency, p50/p99 ms: 1 client "
        "{p50_ms_1}/{p99_ms_1}, 8 clients {p50_ms_8}/{p99_ms_8}, 64 clients "
        "{p50_ms_64}/{p99_ms_64} (goal p99 < 100 ms at 64). Failed requests: {failed_1}, {failed_8}, {failed_64}; top hits "
        "differing from in process: {wrong_1}, {wrong_8}, {wrong_64}.",
        "Batching: {served} requests took {model_calls} model calls ({mean_batch} "
        "texts per call on average, all rounds and client counts together).",
        "2 workers, 8 clients, the worker holding most connections stopped {stop_s} s "
        "and continued: {stop_requests} requests, {stop_failed} failed, {stop_wrong} "
        "wrong answers, slowest {stop_max_ms} ms; the same worker kept: "
        "{stop_worker_kept}.",
    ]


if __name__ == "__main__":
    main()
