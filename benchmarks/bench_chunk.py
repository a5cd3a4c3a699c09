"""Benchmark `retrodb chunk` against the raw batched tokenizer on the same text.

Measures, each in a fresh process so peak RSS is the run's own:
  - raw:  tokenizers' encode_batch over the same documents, one thread (the limit);
  - ours: chunk_corpus with 1 worker (one thread) and with 2 worker processes;
  - peak RSS of the chunk stage at 1x and 2x the corpus (memory must stay flat).
Writes benchmarks/results/chunk.md and prints it.

Usage: python benchmarks/bench_chunk.py --corpus DIR [--copies 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

RAW = r"""
import json, resource, sys, time
from pathlib import Path
from retrodb.stages.chunk.tokenizer import resolve_tokenizer
tok = resolve_tokenizer(None).load()
files = sorted(p for p in Path(sys.argv[1]).rglob("*") if p.is_file())
texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
t0 = time.perf_counter()
n = 0
for i in range(0, len(texts), 32):
    for e in tok.encode_batch(texts[i:i + 32], add_special_tokens=False):
        n += len(e.ids)
dt = time.perf_counter() - t0
print(json.dumps({"tokens": n, "seconds": dt,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
t0 = time.perf_counter()
r = chunk_corpus(sys.argv[2], [sys.argv[1]], ChunkConfig(workers=int(sys.argv[3]),
                 shard_size=int(sys.argv[4])))
dt = time.perf_counter() - t0
ru = resource.getrusage
print(json.dumps({"tokens": r.tokens, "chunks": r.chunks, "seconds": dt,
                  "rss_mb": ru(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": ru(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")  # one thread per worker
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def replicate(src: Path, dst: Path, copies: int) -> Path:
    for i in range(copies):
        shutil.copytree(src, dst / f"copy{i}")
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--copies", type=int, default=1, help="corpus copies for the 1x size")
    ap.add_argument("--shard-size", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = replicate(args.corpus, tmp / "x1", args.copies)
        two = replicate(args.corpus, tmp / "x2", 2 * args.copies)
        size1 = sum(p.stat().st_size for p in one.rglob("*") if p.is_file())
        raw = run(RAW, str(one))
        w1 = run(OURS, str(one), str(tmp / "db1"), "1", str(args.shard_size))
        w2 = run(OURS, str(one), str(tmp / "db2"), "2", str(args.shard_size))
        w1x2 = run(OURS, str(two), str(tmp / "db3"), "1", str(args.shard_size))
        w2x2 = run(OURS, str(two), str(tmp / "db4"), "2", str(args.shard_size))
    assert w1["tokens"] == raw["tokens"] == w2["tokens"], (raw, w1, w2)
    rate = {k: v["tokens"] / v["seconds"] for k, v in
            {"raw": raw, "w1": w1, "w2": w2}.items()}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    cmd = f"python benchmarks/bench_chunk.py --corpus CORPUS --copies {args.copies}"
    lines = [
        "## chunk",
        "",
        f"Corpus: {size1 / 1e6:.1f} MB of real text (the example corpus, {args.copies} "
        f"cop{'y' if args.copies == 1 else 'ies'}), {raw['tokens']:,} tokens, "
        f"{w1['chunks']:,} chunks. Machine: {machine}. Command: `{cmd}`.",
        "",
        "| measure | ours | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| tokens/s, 1 worker vs raw `encode_batch` (1 thread) | {rate['w1']:,.0f} | "
        f"{rate['raw']:,.0f} | {rate['w1'] / rate['raw']:.2f}× |",
        f"| tokens/s per worker, 2 workers vs raw (1 thread) | {rate['w2'] / 2:,.0f} | "
        f"{rate['raw']:,.0f} | {rate['w2'] / 2 / rate['raw']:.2f}× |",
        f"| tokens/s, 2 workers vs 1 worker | {rate['w2']:,.0f} | {rate['w1']:,.0f} | "
        f"{rate['w2'] / rate['w1']:.2f}× |",
        f"| peak RSS, 1 worker, 2× vs 1× corpus | {w1x2['rss_mb']:.0f} MB | "
        f"{w1['rss_mb']:.0f} MB | {w1x2['rss_mb'] / w1['rss_mb']:.2f}× |",
        f"| peak RSS main process, 2 workers, 2× vs 1× | {w2x2['rss_mb']:.0f} MB | "
        f"{w2['rss_mb']:.0f} MB | {w2x2['rss_mb'] / w2['rss_mb']:.2f}× |",
        f"| peak RSS largest worker, 2× vs 1× | {w2x2['worker_rss_mb']:.0f} MB | "
        f"{w2['worker_rss_mb']:.0f} MB | {w2x2['worker_rss_mb'] / w2['worker_rss_mb']:.2f}× |",
        f"| peak RSS of raw baseline (holds all text) | | {raw['rss_mb']:.0f} MB | |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chunk.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
