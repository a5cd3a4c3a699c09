"""Capacity planning: bytes and hours per stage for a corpus size on given hardware.

The arithmetic is deliberately simple and printed in full: every rate is a per-device
throughput, either measured by a benchmark on a named machine (BENCHMARKS.md) or
estimated from FLOPs (and then labelled so). `calibrate()` re-measures the CPU rates
on the current machine.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.errors import RetrodbError


@dataclass(frozen=True)
class Rates:
    """Per-device throughputs the plan divides by; `source` says where each came from."""

    # chunk: tokens/s per CPU worker (benchmarks/bench_chunk.py, 2 workers on 2 cores)
    chunk_tokens_per_cpu: float = 900_000
    # bytes on disk per chunk of the chunk shard (zstd tokens + text) + its docs row
    chunk_bytes_per_chunk: float = 131
    # embed: 64-token chunks/s per CPU core (MiniLM-L6 fp32; BENCHMARKS.md: ~144/s on 2 cores)
    embed_chunks_per_cpu: float = 72
    # embed on one GPU: FLOP estimate, 1.4 GFLOP per 66-token chunk at 30% of 990 TFLOP/s
    embed_chunks_per_gpu: float = 200_000
    # index add: vectors/s per CPU core (BENCHMARKS.md: 30-60k/s on 2 cores)
    add_vectors_per_cpu: float = 20_000
    # k-means: core-seconds per (training vector x centroid x dim) (BENCHMARKS.md: 4096
    # centroids on 200k x 384-d took 170 s on 2 cores)
    kmeans_core_s_per_unit: float = 170 * 2 / (200_000 * 4096 * 384)
    # one GPU runs k-means like this many CPU cores (estimate: faiss GPU k-means)
    gpu_core_equivalents: float = 200
    # neighbours: queries/s per CPU core at the chosen nprobe, re-ranked (estimate)
    search_queries_per_cpu: float = 500
    source: dict[str, str] = field(default_factory=lambda: {
        "chunk_tokens_per_cpu": "measured, BENCHMARKS.md (chunk), 2-core x86_64",
        "chunk_bytes_per_chunk": "measured on the example corpus (Python docs)",
        "embed_chunks_per_cpu": "measured, BENCHMARKS.md, 2-core x86_64",
        "embed_chunks_per_gpu": "estimate from FLOPs (30% of H100 bf16 peak)",
        "add_vectors_per_cpu": "measured, BENCHMARKS.md, 2-core x86_64",
        "kmeans_core_s_per_unit": "measured, BENCHMARKS.md, 2-core x86_64",
        "gpu_core_equivalents": "estimate",
        "search_queries_per_cpu": "estimate",
    })


@dataclass(frozen=True)
class PlanConfig:
    """What to plan for; each field names its `retrodb plan` option."""

    tokens: float  # --tokens: corpus size in tokens (the paper: 2e12)
    chunk_size: int = 64  # --chunk-size (the paper: 64)
    dim: int = 384  # --dim: embedding dimension (all-MiniLM-L6-v2: 384)
    factory: str = "OPQ64_128,IVF4194304_HNSW32,PQ64"  # --factory (Megatron's 19B index)
    gpus: int = 0  # --gpus: GPUs for embed and k-means
    cpus: int = 64  # --cpus: CPU cores for chunk, index add and neighbours
    k: int = 2  # -k: neighbours per training chunk (the paper: 2)
    train_points_per_list: int = 100  # sample = this x nlist vectors for k-means
    shard_size: int = 1_000_000  # --shard-size: chunks per shard

    def validate(self) -> None:
        if not (math.isfinite(self.tokens) and self.tokens > 0):
            raise RetrodbError(f"--tokens {self.tokens}: must be a positive number of "
                               "tokens (e.g. 2e12)")
        for flag, value in (("--chunk-size", self.chunk_size), ("--dim", self.dim),
                            ("-k", self.k), ("--cpus", self.cpus)):
            if value <= 0:
                raise RetrodbError(f"{flag} {value}: must be at least 1")
        if self.gpus < 0:
            raise RetrodbError(f"--gpus {self.gpus}: must be 0 or more")
        parse_factory(self.factory)


def parse_factory(factory: str) -> tuple[int, int]:
    """(nlist, bytes per vector in the inverted lists: PQ code + 8-byte id)."""
    nlist = re.search(r"IVF(\d+)", factory)
    pq = re.search(r"PQ(\d+)(x(\d+))?", factory.split(",")[-1])
    if not nlist or not pq:
        raise RetrodbError(f"--factory {factory}: the planner needs an IVF...,PQ... "
                           "factory string")
    m, bits = int(pq.group(1)), int(pq.group(3) or 8)
    return int(nlist.group(1)), math.ceil(m * bits / 8) + 8


def plan(cfg: PlanConfig, rates: Rates = Rates()) -> dict[str, Any]:
    """Bytes written and hours for every stage, with the arithmetic behind them."""
    cfg.validate()
    n = cfg.tokens / cfg.chunk_size
    nlist, code = parse_factory(cfg.factory)
    train_n = min(n, cfg.train_points_per_list * nlist)
    shards = math.ceil(n / cfg.shard_size)

    def hours(work: float, rate: float, devices: float) -> float:
        return work / (rate * max(devices, 1e-9)) / 3600

    embed_rate, embed_dev, embed_hw = (
        (rates.embed_chunks_per_gpu, cfg.gpus, f"{cfg.gpus} GPU") if cfg.gpus
        else (rates.embed_chunks_per_cpu, cfg.cpus, f"{cfg.cpus} CPU"))
    kmeans_cores = cfg.gpus * rates.gpu_core_equivalents if cfg.gpus else cfg.cpus
    stages = [
        {"stage": "chunk", "bytes": n * rates.chunk_bytes_per_chunk,
         "hours": hours(cfg.tokens, rates.chunk_tokens_per_cpu, cfg.cpus),
         "on": f"{cfg.cpus} CPU",
         "how": f"{cfg.tokens:.3g} tokens / ({rates.chunk_tokens_per_cpu:.3g} tok/s x "
                f"{cfg.cpus})"},
        {"stage": "embed", "bytes": n * cfg.dim * 2,
         "hours": hours(n, embed_rate, embed_dev), "on": embed_hw,
         "how": f"{n:.3g} chunks / ({embed_rate:.3g}/s x {embed_dev}); float16 {cfg.dim}-d"},
        {"stage": "index train", "bytes": nlist * cfg.dim * 4,
         "hours": train_n * nlist * cfg.dim * rates.kmeans_core_s_per_unit
                  / kmeans_cores / 3600,
         "on": f"{cfg.gpus} GPU" if cfg.gpus else f"{cfg.cpus} CPU",
         "how": f"k-means of {nlist:,} lists on {train_n:.3g} vectors"},
        {"stage": "index add", "bytes": n * code,
         "hours": hours(n, rates.add_vectors_per_cpu, cfg.cpus), "on": f"{cfg.cpus} CPU",
         "how": f"{shards:,} parts in parallel; {code} B/vector (PQ code + id)"},
        {"stage": "neighbours", "bytes": n * cfg.k * 12,
         "hours": hours(n, rates.search_queries_per_cpu, cfg.cpus), "on": f"{cfg.cpus} CPU",
         "how": f"{n:.3g} queries, k={cfg.k}: 8 B id + 4 B score each"},
    ]
    return {
        "tokens": cfg.tokens, "chunks": n, "shards": shards, "factory": cfg.factory,
        "nlist": nlist, "index_train_vectors": train_n, "stages": stages,
        "total_bytes": sum(s["bytes"] for s in stages),
        "total_hours": sum(s["hours"] for s in stages),
        # serving: the coarse quantizer + OPQ in RAM, lists memory-mapped from disk
        "index_ram_bytes": nlist * cfg.dim * 4,
        "rates": {k: {"value": getattr(rates, k), "source": rates.source[k]}
                  for k in rates.source},
    }


def calibrate(rates: Rates = Rates(), seconds: float = 5.0) -> Rates:
    """Re-measure the CPU chunk rate on this machine (one worker, real text)."""
    import os
    import tempfile
    from pathlib import Path

    from ..stages.chunk import ChunkConfig, chunk_corpus

    # real text that every installation has: the Python standard library's sources
    stdlib = Path(os.__file__).parent
    files = sorted(stdlib.glob("*.py"))[:200]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)[:1 << 21]
    tokens, spent = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        while spent < seconds:  # ~2 MB inputs, so start-up is a small part of the time
            inp = Path(tmp) / f"in{i}.txt"
            inp.write_text(text, encoding="utf-8")
            t0 = time.perf_counter()
            r = chunk_corpus(Path(tmp) / f"db{i}", [str(inp)], ChunkConfig())
            spent += time.perf_counter() - t0
            tokens += r.tokens
            i += 1
    src = dict(rates.source, chunk_tokens_per_cpu="measured now by --calibrate")
    return replace(rates, chunk_tokens_per_cpu=tokens / spent, source=src)
