"""Benchmark `retrodb embed` against `SentenceTransformer.encode` on the same chunks.

One process; the contenders are warmed up, then run in turn, round after round:
  - baseline: `SentenceTransformer(model).encode(texts, batch_size=64)`, the same batch
    size as ours (and, as a second baseline, its default batch of 32), the model
    loaded once before timing;
  - ours: the whole stage, `embed_db` on the same database with its keys removed
    (Parquet read, model load, tokenisation where needed, .npy write, manifest), with 1
    worker (all cores as lanes) and with 2 workers (one core each).
Also: cosine of our float16 keys to the baseline's, and the FLOP-bound limit of the
model on this machine: FLOPs per chunk (2 x linear parameters x tokens + attention)
against the peak fp32 matmul rate torch reaches here (its default GEMM and oneDNN).

Usage: python benchmarks/bench_embed.py [--corpus DIR] [--copies 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, Measure, Result, Side, interleave


def _chunk(corpus: Path, copies: int, tmp: Path) -> Path:
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus

    src = tmp / "corpus"
    for i in range(copies):
        shutil.copytree(corpus, src / f"copy{i}")
    db = tmp / "db"
    chunk_corpus(db, [str(src)], ChunkConfig(split_size=256 << 10, root=str(src)))
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

    from retrodb.stages.embed.onednn import onednn_class

    rates: dict[str, float] = {}
    lin_cls = onednn_class()
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
    from sentence_transformers import SentenceTransformer

    from retrodb.stages.chunk.tokenizer import default_model_dir
    from retrodb.stages.embed import EmbedConfig, embed_db

    res = Result("embed", ["retrodb/stages/embed", "retrodb/exec"], "embed")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = _chunk(args.corpus, args.copies, tmp)
        texts = _texts(db)
        st = SentenceTransformer(str(default_model_dir()), device="cpu")
        kept: dict = {}

        def base(batch: int):
            def run() -> float:
                t0 = time.perf_counter()
                kept["base"] = st.encode(texts, batch_size=batch)
                return len(texts) / (time.perf_counter() - t0)
            return run

        def ours(workers: int):
            def run() -> float:
                shutil.rmtree(db / "embeddings", ignore_errors=True)
                t0 = time.perf_counter()
                r = embed_db(db, EmbedConfig(workers=workers, batch_size=64))
                rate = r.chunks / (time.perf_counter() - t0)
                shards = json.loads((db / "embeddings" / "manifest.json").read_text())
                kept.setdefault(f"inner{workers}", []).append(
                    r.chunks / sum(e["seconds"] for e in shards["shards"]))
                kept[f"result{workers}"], kept[f"keys{workers}"] = r, _keys(db)
                return rate
            return run

        runs = interleave({"st64": base(64), "st32": base(32), "w1": ours(1),
                           "w2": ours(2)}, rounds=args.rounds)
        one = kept["result1"]
        model = st[0].auto_model
        seq = one.padded_tokens / one.chunks
        flops, params = model_flops(model, one.tokens / one.chunks, seq)
        peaks = peak_matmul(64 * round(seq), model.config.hidden_size,
                            model.config.intermediate_size, len(os.sched_getaffinity(0)))
    record(res, runs, kept, one, flops, params, peaks, len(texts))
    res.save()


def record(res: Result, runs: dict, kept: dict, one, flops, params, peaks, n) -> None:
    st64 = Side("SentenceTransformer.encode, batch 64", runs["st64"])
    inner = kept["inner1"][1:]  # the warm-up round was not interleaved
    res.add(Measure("chunks/s, whole stage, 1 worker vs encode (both batch 64)",
                    "chunks/s", Side("ours, 1 worker", runs["w1"]), st64))
    res.add(Measure("chunks/s, whole stage, 2 workers vs encode (both batch 64)",
                    "chunks/s", Side("ours, 2 workers", runs["w2"]), st64,
                    note="each worker has one core: torch's single-thread speed, two "
                         "models in memory"))
    res.add(Measure("chunks/s inside shards (model loaded), 1 worker vs encode",
                    "chunks/s", Side("ours, in shards", inner), st64))
    res.add(Measure("chunks/s, whole stage, 1 worker vs encode at its default batch 32",
                    "chunks/s", Side("ours, 1 worker", runs["w1"]),
                    Side("SentenceTransformer.encode, batch 32", runs["st32"])))
    keys, base = kept["keys1"], kept["base"]
    cos = (keys * base).sum(1) / (np.linalg.norm(keys, axis=1) * np.linalg.norm(base, axis=1))
    best = max(peaks.values())
    med = sorted(runs["w1"])[len(runs["w1"]) // 2]
    res.facts.update(chunks=n, tokens_per_chunk=one.tokens / one.chunks,
                     chunks_per_core_s=med / len(os.sched_getaffinity(0)),
                     cos_min=float(cos.min()), cos_mean=float(cos.mean()),
                     params_m=params / 1e6, gflop_per_chunk=flops / 1e9,
                     peak_gflops=best / 1e9, limit=best / flops,
                     share_of_limit=100 * med / (best / flops),
                     padding=100 * one.padding_waste,
                     retokenized=100 * one.retokenized / one.chunks,
                     **{f"peak {k}": v / 1e9 for k, v in peaks.items()})
    res.notes += [
        "{chunks} 64-token chunks of the example corpus, {tokens_per_chunk} tokens per "
        "chunk with [CLS]/[SEP]; all-MiniLM-L6-v2 in fp32 on the CPU. Padding waste "
        "{padding}%, {retokenized}% of chunks re-tokenised from their text (cut inside a "
        "word).",
        "Cosine of our float16 keys to the baseline's: min {cos_min}, mean {cos_mean}.",
        "FLOP-bound limit: {params_m} M linear weights → {gflop_per_chunk} GFLOP per "
        "chunk; the best fp32 matmul measured here reaches {peak_gflops} GFLOP/s, so at "
        "most {limit} chunks/s; ours (1 worker) runs at {share_of_limit}% of it.",
    ]


if __name__ == "__main__":
    main()
