"""Benchmark `retrodb embed` against `SentenceTransformer.encode` on the same chunks.

One process, rounds interleaved so that load from other processes hits every contender
alike; the median round is reported:
  - baseline: `SentenceTransformer(model).encode(texts)` with default settings (batch 32,
    its own length sort), the model loaded once before timing;
  - ours: the whole stage, `embed_db` on a fresh copy of the database (Parquet read,
    model load, tokenisation where needed, .npy write, manifest), with 1 worker
    (all cores as threads) and with 2 workers (one thread each).
Also: cosine of our float16 keys to the baseline's, and the FLOP-bound limit of the
model on this machine: FLOPs per chunk (2 x linear parameters x tokens + attention)
against the peak fp32 matmul rate torch reaches here (its default GEMM and oneDNN).
Writes benchmarks/results/embed.md and prints it.

Usage: python benchmarks/bench_embed.py [--corpus DIR] [--copies 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _chunk(corpus: Path, copies: int, tmp: Path) -> Path:
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus

    src = tmp / "corpus"
    for i in range(copies):
        shutil.copytree(corpus, src / f"copy{i}")
    db = tmp / "db"
    chunk_corpus(db, [str(src)], ChunkConfig(shard_size=1000))
    return db


def _texts(db: Path) -> list[str]:
    import pyarrow.parquet as pq

    out: list[str] = []
    for p in sorted((db / "chunks").glob("[0-9]*.parquet")):
        out += pq.read_table(p, columns=["text"]).column("text").to_pylist()
    return out


def _keys(db: Path) -> np.ndarray:
    files = sorted((db / "embeddings").glob("[0-9]*.npy"))
    return np.concatenate([np.load(p) for p in files]).astype(np.float32)


def _gemm_rate(fn, flops: float, seconds: float = 1.0) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n * flops / (time.perf_counter() - t0)


def peak_matmul(tokens: int, hidden: int, inner: int, cores: int) -> dict[str, float]:
    """Best fp32 FLOP/s of torch's default GEMM and of oneDNN on the model's linear
    shapes (tokens x hidden x inner) and on a large square product: one thread times
    the cores (the ideal, what independent lanes can reach), and all cores as threads."""
    import torch

    from retrodb.stages.embed.embedder import _onednn_class

    rates: dict[str, float] = {}
    lin_cls = _onednn_class()
    shapes = {"model shapes": (tokens, hidden, inner), "2048^3": (2048, 2048, 2048)}
    with torch.inference_mode():
        for threads in (1, cores):
            torch.set_num_threads(threads)
            scale = cores if threads == 1 else 1
            label = f"1 thread x {cores}" if threads == 1 else f"{cores} threads"
            for name, (m, k, n) in shapes.items():
                x = torch.randn(m, k)
                lin = torch.nn.Linear(k, n)
                fast = lin_cls(lin)
                f = 2.0 * m * k * n
                rates[f"aten {name}, {label}"] = scale * _gemm_rate(lambda: lin(x), f)
                rates[f"oneDNN {name}, {label}"] = scale * _gemm_rate(lambda: fast(x), f)
    return rates


def model_flops(model, tokens_per_chunk: float, seq: float) -> tuple[float, int]:
    """FLOPs of one chunk: 2 per linear weight per token, plus QK^T and AV."""
    import torch

    enc = model.encoder if hasattr(model, "encoder") else model
    params = sum(m.weight.numel() for m in enc.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    attn = 4 * seq * cfg.hidden_size * cfg.num_hidden_layers  # per token
    return tokens_per_chunk * (2 * params + attn), params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "examples" / "corpus")
    ap.add_argument("--copies", type=int, default=3, help="corpus copies to embed")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from sentence_transformers import SentenceTransformer

    from retrodb.stages.embed import EmbedConfig, embed_db
    from retrodb.stages.chunk.tokenizer import default_model_dir

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = _chunk(args.corpus, args.copies, tmp)
        texts = _texts(db)
        st = SentenceTransformer(str(default_model_dir()), device="cpu")
        st.encode(texts[:64])  # warm up
        contenders = {"ours, 1 worker": EmbedConfig(),
                      "ours, 2 workers": EmbedConfig(workers=2)}
        rates: dict[str, list[float]] = {"baseline": [], **{k: [] for k in contenders}}
        inner: dict[str, list[float]] = {k: [] for k in contenders}
        results = {}
        base = None
        for r in range(args.rounds):
            t0 = time.perf_counter()
            base = st.encode(texts)
            rates["baseline"].append(len(texts) / (time.perf_counter() - t0))
            for name, cfg in contenders.items():
                shutil.rmtree(db / "embeddings", ignore_errors=True)
                t0 = time.perf_counter()
                res = embed_db(db, cfg)
                rates[name].append(res.chunks / (time.perf_counter() - t0))
                results[name] = res
                if name == "ours, 1 worker":
                    keys = _keys(db)
                    shards = json.loads(
                        (db / "embeddings" / "manifest.json").read_text())["shards"]
                    inner[name].append(res.chunks / sum(e["seconds"] for e in shards))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()),
                  flush=True)
        load1 = os.getloadavg()[0]
        norms = np.linalg.norm(keys, axis=1) * np.linalg.norm(base, axis=1)
        cos = (keys * base).sum(1) / norms
        one = results["ours, 1 worker"]
        tokens_per_chunk = one.tokens / one.chunks
        seq = one.padded_tokens / one.chunks
        flops, params = model_flops(st[0].auto_model, tokens_per_chunk, seq)
        peaks = peak_matmul(64 * round(seq), st[0].auto_model.config.hidden_size,
                            st[0].auto_model.config.intermediate_size,
                            len(os.sched_getaffinity(0)))

    med = {k: statistics.median(v) for k, v in rates.items()}
    best_peak = max(peaks.values())
    limit = best_peak / flops
    machine = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores "
               f"({_cpu_name()}), torch {torch.__version__}, Python "
               f"{platform.python_version()}")
    cmd = f"python benchmarks/bench_embed.py --copies {args.copies} --rounds {args.rounds}"
    lines = [
        "## embed",
        "",
        f"Chunks: {len(texts):,} 64-token chunks of the example corpus ({args.copies} "
        f"copies), {tokens_per_chunk:.1f} tokens per chunk with [CLS]/[SEP]. Model: "
        f"all-MiniLM-L6-v2 (fp32 on CPU). Machine: {machine}; load average "
        f"{load0:.1f} before, {load1:.1f} after (a shared machine: rounds are interleaved, "
        f"medians of {args.rounds}). Command: `{cmd}`.",
        "",
        "| measure | ours | baseline (same run) | ratio |",
        "|---|---|---|---|",
    ]
    for name in contenders:
        lines.append(f"| chunks/s, whole stage, {name.split(', ')[1]} vs "
                     f"`SentenceTransformer.encode(texts)` | {med[name]:,.0f} | "
                     f"{med['baseline']:,.0f} | {med[name] / med['baseline']:.2f}× |")
    lines += [
        f"| chunks/s inside shards (no model load), 1 worker | "
        f"{statistics.median(inner['ours, 1 worker']):,.0f} | {med['baseline']:,.0f} | "
        f"{statistics.median(inner['ours, 1 worker']) / med['baseline']:.2f}× |",
        f"| cosine of our float16 keys to the baseline's: min / mean | {cos.min():.7f} / "
        f"{cos.mean():.7f} | | |",
        f"| padding waste; chunks re-tokenised from text | "
        f"{100 * one.padding_waste:.1f}%; {one.retokenized / one.chunks:.0%} | | |",
        "",
        f"FLOP-bound limit: {params / 1e6:.1f} M linear weights → {flops / 1e9:.2f} GFLOP "
        f"per chunk (2 × weights × {tokens_per_chunk:.1f} tokens + attention at "
        f"{seq:.1f} positions). Peak fp32 matmul measured here with torch: "
        + "; ".join(f"{k}: {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
        + f". At the best, {best_peak / 1e9:.0f} GFLOP/s, the limit is "
        f"**{limit:,.0f} chunks/s**; ours (1 worker) runs at "
        f"{med['ours, 1 worker'] / limit:.0%} of it and the baseline at "
        f"{med['baseline'] / limit:.0%}.",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "embed.md").write_text(text)
    print(text)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
