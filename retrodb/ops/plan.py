"""Capacity planning: bytes, device-hours and machines per stage for a corpus size.

The arithmetic is simple and printed in full. Every rate is a per-device throughput:
measured by a benchmark (`rates.json` beside this module is written by
`benchmarks/report.py` from the result files, with the machine and commit it came
from) or an estimate from FLOPs, labelled so. The coordinator of a stage (one process)
only plans, hands out and records shards; its measured CPU per shard says how many
workers it can feed before it becomes the limit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import RetrodbError
from ..stages.index.kmeans import (REFINE_ROUNDS, TWO_LEVEL_FROM, distances_per_vector,
                                    groups_for)

RATES_FILE = Path(__file__).with_name("rates.json")

# (value, source) used where rates.json has no measurement
DEFAULTS: dict[str, tuple[float, str]] = {
    "chunk_tokens_per_cpu_s": (1.0e6, "estimate: one tokenizer thread"),
    "chunk_coordinator_s_per_shard": (0.05, "estimate"),
    "chunk_bytes_per_chunk": (131, "measured on the Python docs (format 1)"),
    "embed_chunks_per_cpu_s": (100, "estimate: MiniLM-L6 fp32, one core"),
    "embed_chunks_per_gpu_s": (2e5, "estimate from FLOPs: 30% of an H100's bf16 peak"),
    "add_vectors_per_cpu_s": (2e4, "estimate"),
    # k-means: core-seconds per centroid distance × dim (kmeans.distances_per_vector)
    "kmeans_core_s_per_unit": (170 * 2 / (200_000 * 20 * 4096 * 384),
                               "measured: 4096 lists on 200k × 384-d in 170 s, 2 cores"),
    "kmeans2_core_s_per_unit": (1.5 * 170 * 2 / (200_000 * 20 * 4096 * 384),
                                "estimate: flat k-means' rate, 1.5× for the smaller "
                                "second-level problems"),
    "gpu_core_equivalents": (200, "estimate: faiss GPU k-means vs one core"),
    "search_queries_per_cpu_s": (500, "estimate"),
}


def load_rates(path: Path = RATES_FILE) -> dict[str, dict]:
    """{name: {"value", "source"}}: measured rates where there are, else the defaults."""
    out = {k: {"value": v, "source": s} for k, (v, s) in DEFAULTS.items()}
    if path.is_file():
        for k, r in json.loads(path.read_text()).items():
            if k in out:
                out[k] = r
    return out


@dataclass(frozen=True)
class PlanConfig:
    """What to plan for; each field names its `retrodb plan` option."""

    tokens: float  # --tokens: corpus size in tokens (the paper: 2e12)
    chunk_size: int = 64  # --chunk-size (the paper: 64)
    dim: int = 384  # --dim: embedding dimension (all-MiniLM-L6-v2: 384)
    factory: str | None = None  # --factory; None = `retrodb index`'s rule for the size
    gpus: int = 0  # --gpus: GPUs for embed and k-means
    cpus: int = 64  # --cpus: CPU cores for chunk, index add and neighbours
    k: int = 2  # -k: neighbours per training chunk (the paper: 2)
    train_points_per_list: int = 100  # sample = this × nlist vectors for k-means
    split_mb: float = 256  # --split-size of chunk, in MB (one shard per split)
    cores_per_machine: int = 64  # --cores-per-machine
    gpus_per_machine: int = 8  # --gpus-per-machine
    hours: float = 24  # --hours: the machines needed to finish each stage in this

    def validate(self) -> None:
        if not (math.isfinite(self.tokens) and self.tokens > 0):
            raise RetrodbError(f"--tokens {self.tokens}: must be a positive number of "
                               "tokens (e.g. 2e12)")
        for flag, value in (("--chunk-size", self.chunk_size), ("--dim", self.dim),
                            ("-k", self.k), ("--cpus", self.cpus),
                            ("--cores-per-machine", self.cores_per_machine),
                            ("--gpus-per-machine", self.gpus_per_machine)):
            if value <= 0:
                raise RetrodbError(f"{flag} {value}: must be at least 1")
        if self.gpus < 0:
            raise RetrodbError(f"--gpus {self.gpus}: must be 0 or more")
        if not (math.isfinite(self.hours) and self.hours > 0):
            raise RetrodbError(f"--hours {self.hours}: must be a positive number")
        if not (math.isfinite(self.split_mb) and self.split_mb > 0):
            raise RetrodbError(f"--split-size {self.split_mb}: must be positive")
        if self.factory is not None:
            parse_factory(self.factory)


def _rule(n: int, dim: int) -> str:
    from ..stages.index.factory import rule_factory

    return rule_factory(n, dim)[0]


def parse_factory(factory: str) -> tuple[int, int]:
    """(nlist, bytes per vector in the inverted lists: PQ code + 8-byte id)."""
    nlist = re.search(r"IVF(\d+)", factory)
    pq = re.search(r"PQ(\d+)(x(\d+))?", factory.split(",")[-1])
    if not nlist or not pq:
        raise RetrodbError(f"--factory {factory}: the planner needs an IVF...,PQ... "
                           "factory string")
    m, bits = int(pq.group(1)), int(pq.group(3) or 8)
    return int(nlist.group(1)), math.ceil(m * bits / 8) + 8


def _stage(name: str, work: float, unit: str, rate: float, device: str, devices: int,
           per_machine: int, cfg: PlanConfig, bytes_: float, how: str,
           shards: float = 0, coord_s: float = 0) -> dict:
    device_hours = work / rate / 3600
    machines = math.ceil(device_hours / cfg.hours / per_machine) if device_hours else 0
    out = {"stage": name, "bytes": bytes_, "device": device,
           "device_hours": device_hours, "hours": device_hours / max(devices, 1e-9),
           "on": f"{devices} {device}", "machines_in_a_day": machines, "how": how}
    if shards:
        # the coordinator spends coord_s CPU-s per shard; a shard takes the workers
        # work/shards/rate device-seconds: it keeps up with this many devices at most
        out["coordinator_limit_devices"] = (work / shards / rate) / coord_s
        out["coordinator_cpu_hours"] = shards * coord_s / 3600
    return out


def plan(cfg: PlanConfig, rates: dict | None = None) -> dict[str, Any]:
    """Bytes, device-hours, machines for every stage, with the arithmetic behind them."""
    cfg.validate()
    r = {k: v["value"] for k, v in (rates or load_rates()).items()}
    n = cfg.tokens / cfg.chunk_size
    factory = cfg.factory or _rule(int(n), cfg.dim)
    nlist, code = parse_factory(factory)
    train_n = min(n, cfg.train_points_per_list * nlist)
    two_level = nlist >= TWO_LEVEL_FROM  # what `retrodb index --kmeans auto` does
    top = groups_for(nlist)
    km_units = train_n * distances_per_vector(nlist, "two-level" if two_level else "flat") \
        * cfg.dim
    bytes_per_token = 4.0  # English text in a BERT WordPiece: ~4 bytes a token
    shards = max(1, math.ceil(cfg.tokens * bytes_per_token / (cfg.split_mb * 2 ** 20)))
    gpu = cfg.gpus > 0
    coord = r["chunk_coordinator_s_per_shard"]
    emb_rate = r["embed_chunks_per_gpu_s"] if gpu else r["embed_chunks_per_cpu_s"]
    km_per = r["kmeans2_core_s_per_unit" if two_level else "kmeans_core_s_per_unit"]
    km_rate = 1 / km_per * (r["gpu_core_equivalents"] if gpu else 1)
    stages = [
        _stage("chunk", cfg.tokens, "tokens", r["chunk_tokens_per_cpu_s"], "CPU", cfg.cpus,
               cfg.cores_per_machine, cfg, n * r["chunk_bytes_per_chunk"],
               f"{cfg.tokens:.3g} tokens / {r['chunk_tokens_per_cpu_s']:.3g} per core-s, "
               f"{shards:,} splits", shards, coord),
        _stage("embed", n, "chunks", emb_rate, "GPU" if gpu else "CPU",
               cfg.gpus if gpu else cfg.cpus,
               cfg.gpus_per_machine if gpu else cfg.cores_per_machine, cfg, n * cfg.dim * 2,
               f"{n:.3g} chunks / {emb_rate:.3g} per device-s; float16 {cfg.dim}-d",
               shards, coord),
        _stage("index train", km_units, "units", km_rate,
               "GPU" if gpu else "CPU", cfg.gpus if gpu else cfg.cpus,
               cfg.gpus_per_machine if gpu else cfg.cores_per_machine, cfg,
               nlist * cfg.dim * 4,
               f"{'two-level' if two_level else 'flat'} k-means of {nlist:,} lists on "
               f"{train_n:.3g} vectors" + (f" ({round(top):,} groups, then each into "
                                           f"~{round(nlist / top):,}; {REFINE_ROUNDS} "
                                           "refinement rounds)" if two_level else "")),
        _stage("index add", n, "vectors", r["add_vectors_per_cpu_s"], "CPU", cfg.cpus,
               cfg.cores_per_machine, cfg, n * code,
               f"{shards:,} parts in parallel; {code} B/vector (codes + id)", shards, coord),
        _stage("neighbours", n, "queries", r["search_queries_per_cpu_s"], "CPU", cfg.cpus,
               cfg.cores_per_machine, cfg, n * cfg.k * 12,
               f"{n:.3g} queries, k={cfg.k}: 8 B id + 4 B score each", shards, coord),
    ]
    return {
        "tokens": cfg.tokens, "chunks": n, "shards": shards, "factory": factory,
        "nlist": nlist, "index_train_vectors": train_n, "stages": stages,
        "total_bytes": sum(s["bytes"] for s in stages),
        "total_hours": sum(s["hours"] for s in stages),
        # serving: the coarse quantizer + OPQ in RAM, lists memory-mapped from disk
        "index_ram_bytes": nlist * cfg.dim * 4,
        "rates": rates or load_rates(),
    }


def calibrate(rates: dict | None = None, seconds: float = 5.0) -> dict:
    """Re-measure the CPU chunk rate on this machine (one worker, real text: the
    Python standard library's sources, which every installation has)."""
    import os
    import tempfile
    import time
    from pathlib import Path as P

    from ..stages.chunk import ChunkConfig, chunk_corpus

    stdlib = P(os.__file__).parent
    files = sorted(stdlib.glob("*.py"))[:200]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in files)[:1 << 21]
    tokens, spent = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        i = 0
        while spent < seconds:
            inp = P(tmp) / f"in{i}.txt"
            inp.write_text(text, encoding="utf-8")
            t0 = time.perf_counter()
            r = chunk_corpus(P(tmp) / f"db{i}", [str(inp)], ChunkConfig(root=tmp))
            spent += time.perf_counter() - t0
            tokens += r.tokens
            i += 1
    out = dict(rates or load_rates())
    out["chunk_tokens_per_cpu_s"] = {"value": tokens / spent,
                                     "source": "measured now by --calibrate"}
    return out
