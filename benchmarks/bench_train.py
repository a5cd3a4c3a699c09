"""Benchmark training: RETRO vs the same decoder without retrieval, and our training
throughput vs retro-pytorch 0.3.9 on an equal model, both measured in this run.

  1. quality: train `--preset` RETRO and its --no-retrieval baseline for the same steps
     on the same sequences; report validation bits per byte of the baseline, of RETRO
     with its neighbours, with retrieval disabled, and with leakage-filtered neighbours;
  2. speed: training tokens/s (forward, backward, AdamW step) of our model and of
     retro-pytorch's RETRO with the same shape, batch and neighbours, interleaved.

Neighbours: the database's set (`--neighbours`) when it has one; otherwise, for a
corpus small enough, a stand-in set written here — each chunk's k chunks of *other*
documents sharing the most distinct tokens — clearly reported as such.

retro-pytorch is a benchmark-only dependency: `pip install --no-deps retro-pytorch==0.3.9
einops` (its retrieval module needs faiss/autofaiss, which this script stubs out: only
its model file is loaded).

Usage: python benchmarks/bench_train.py --corpus DIR [--steps 80] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def standin_neighbours(db: Path, k: int) -> None:
    """Token-overlap neighbours from other documents (dense: small corpora only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrodb.core.manifest import Manifest, file_record, shard_name
    from retrodb.stores.tokens import TokenStore

    store = TokenStore(db)
    n = store.n_chunks
    if n > 20_000:
        sys.exit(f"{n} chunks: too many for the stand-in neighbours; build the real set "
                 "with `retrodb neighbours` and pass --db")
    r = store.rows(np.arange(n))
    valid = np.arange(store.chunk_size)[None] < r["length"][:, None]
    toks = np.where(valid, r["tokens"].astype(np.int64), -1)
    vocab, inv = np.unique(toks, return_inverse=True)
    bag = np.zeros((n, len(vocab)), np.float32)
    bag[np.repeat(np.arange(n), toks.shape[1]), inv.reshape(-1)] = 1
    bag[:, vocab == -1] = 0
    sim = bag @ bag.T
    sim[r["doc_id"][:, None] == r["doc_id"][None, :]] = -1
    nb = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    sc = np.take_along_axis(sim, nb, 1).astype(np.float32)
    out = db / "neighbours" / "standin"
    m = Manifest(out, "neighbours")
    out.mkdir(parents=True, exist_ok=True)
    for e in Manifest(db / "chunks", "chunks").shards:
        a, b = e["first_id"], e["first_id"] + e["rows"]
        t = pa.table({"chunk_id": pa.array(np.arange(a, b), pa.int64()),
                      "neighbours": pa.FixedSizeListArray.from_arrays(
                          pa.array(nb[a:b].reshape(-1), pa.int64()), k),
                      "scores": pa.FixedSizeListArray.from_arrays(
                          pa.array(sc[a:b].reshape(-1), pa.float32()), k)})
        name = shard_name(e["shard"], ".parquet")
        pq.write_table(t, out / name)
        m.record({"shard": e["shard"], **file_record(out / name, name), "rows": b - a,
                  "first_id": a}, k=k, rule="stand-in: token overlap, other documents")


def load_retro_pytorch():
    """retro_pytorch.retro_pytorch.RETRO without importing its faiss-based retrieval."""
    spec = importlib.util.find_spec("retro_pytorch")
    if spec is None:
        sys.exit("pip install --no-deps retro-pytorch==0.3.9 einops (benchmark only)")
    root = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("retro_pytorch")
    pkg.__path__ = [str(root)]
    stub = types.ModuleType("retro_pytorch.retrieval")
    stub.BERT_VOCAB_SIZE = 28996
    sys.modules.update({"retro_pytorch": pkg, "retro_pytorch.retrieval": stub})
    s = importlib.util.spec_from_file_location("retro_pytorch.retro_pytorch",
                                               root / "retro_pytorch.py")
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    from importlib.metadata import version
    return mod.RETRO, version("retro-pytorch")


def speed(db: Path, neighbours: str, preset: str, batch_size: int, seq_chunks: int,
          steps: int) -> dict:
    """Median seconds per training step of ours and retro-pytorch's, interleaved."""
    import torch

    from retrodb.core.db import Database
    from retrodb.training.model import Retro, preset_config
    from retrodb.stores.neighbour_table import NeighbourTable
    from retrodb.training.sequences import Sequences
    from retrodb.stores.split import load_split

    RETRO, theirs_version = load_retro_pytorch()
    cfg = Database(db).config()
    mc = preset_config(preset, cfg["tokenizer"]["vocab_size"], cfg["chunk_size"])
    seqs = Sequences(db, load_split(db), "train", seq_chunks, table=NeighbourTable(db, neighbours))
    b = seqs.batch(np.arange(batch_size))
    idx, tg = torch.from_numpy(b.tokens), torch.from_numpy(b.targets)
    nb, nm = torch.from_numpy(b.neighbours), torch.from_numpy(b.neighbour_mask)
    torch.manual_seed(0)
    ours = Retro(mc)
    theirs = RETRO(num_tokens=mc.vocab_size, max_seq_len=seq_chunks * mc.chunk_size,
                   enc_dim=mc.d_model, enc_depth=mc.enc_layers, dec_dim=mc.d_model,
                   dec_depth=mc.n_layer, heads=mc.n_head, dim_head=mc.d_model // mc.n_head,
                   dec_cross_attn_layers=tuple(i + 1 for i in mc.cca_layers),
                   chunk_size=mc.chunk_size)
    # retro-pytorch predicts seq[1:] from seq[:-1]: give it one more token
    seq_theirs = torch.cat([idx, idx[:, :1]], 1)
    retrieved = torch.where(nm, nb, 0)  # it masks neighbour padding by pad id 0

    def step_ours(opt):
        loss = ours(idx, nb, nm, targets=tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step_theirs(opt):
        loss = theirs(seq_theirs, retrieved, return_loss=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours.train(), theirs.train()
    opts = {"ours": torch.optim.AdamW(ours.parameters(), lr=1e-4),
            "theirs": torch.optim.AdamW(theirs.parameters(), lr=1e-4)}
    fns = {"ours": step_ours, "theirs": step_theirs}
    times = {"ours": [], "theirs": []}
    for i in range(steps + 1):  # the first step of each warms up and is not timed
        for name in ("ours", "theirs"):
            t = time.perf_counter()
            fns[name](opts[name])
            if i:
                times[name].append(time.perf_counter() - t)
    tokens = idx.numel()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"tokens_per_step": tokens, "ours_s": med["ours"], "theirs_s": med["theirs"],
            "ours_tps": tokens / med["ours"], "theirs_tps": tokens / med["theirs"],
            "ours_params": ours.num_params(),
            "theirs_params": sum(p.numel() for p in theirs.parameters()),
            "theirs_version": theirs_version, "steps": steps}


def quality(db: Path, neighbours: str, args) -> dict:
    from retrodb.training.evaluate import evaluate_run
    from retrodb.training.train import TrainConfig, train

    base = TrainConfig(run="bench-retro", preset=args.preset, neighbours=neighbours,
                       steps=args.steps, seq_chunks=args.seq_chunks,
                       batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                       val_fraction=args.val_fraction, eval_every=0,
                       checkpoint_every=args.steps)
    out = {}
    for name, cfg in (("retro", base),
                      ("baseline", replace(base, run="bench-base", retrieval=False))):
        t = time.perf_counter()
        last = train(db, cfg, resume=(db / "models" / cfg.run / "latest.json").exists())
        out[name + "_train_s"] = time.perf_counter() - t
        out[name + "_final_loss"] = last.get("loss")
        out[name] = evaluate_run(db, cfg.run, overlap_alpha=args.overlap_alpha)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--corpus", type=Path, help="chunk this corpus into a fresh DB")
    src.add_argument("--db", type=Path, help="an existing DB with a neighbour set")
    ap.add_argument("--neighbours", default="train")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-chunks", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--overlap-alpha", type=float, default=0.2)
    ap.add_argument("--speed-steps", type=int, default=4)
    ap.add_argument("--speed-batch", type=int, default=8)
    args = ap.parse_args()
    from retrodb.stores.split import ensure_split, load_split

    with tempfile.TemporaryDirectory() as tmp:
        db, neighbours, standin = args.db, args.neighbours, False
        if args.corpus:
            from retrodb.stages.chunk import ChunkConfig, chunk_corpus

            db = Path(tmp) / "db"
            chunk_corpus(db, [str(args.corpus)], ChunkConfig(shard_size=100_000))
        if not (db / "neighbours" / neighbours / "manifest.json").exists():
            standin_neighbours(db, k=2)
            neighbours, standin = "standin", True
        if load_split(db) is None:  # a database keeps the split its neighbours used
            ensure_split(db, args.val_fraction, 0)
        args.val_fraction = load_split(db).val_fraction
        q = quality(db, neighbours, args)
        s = speed(db, neighbours, args.preset, args.speed_batch, args.seq_chunks,
                  args.speed_steps)
        from retrodb.stores.chunks import document_table
        docs = document_table(db)
    write(args, q, s, standin, docs)


def write(args, q, s, standin, docs) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    import torch
    src = "--corpus CORPUS" if args.corpus else "--db DB"
    cmd = (f"python benchmarks/bench_train.py {src} --preset {args.preset} --steps "
           f"{args.steps} --batch-size {args.batch_size} --seq-chunks {args.seq_chunks}")
    r, b = q["retro"], q["baseline"]
    nb_note = ("a **stand-in** neighbour set (each chunk's 2 chunks of other documents "
               "sharing the most distinct tokens; the neighbours stage was not available)"
               if standin else f"the database's neighbour set `{args.neighbours}`")
    lines = [
        "## train",
        "",
        f"Corpus: {len(docs['doc_id'])} documents, {int(docs['n_tokens'].sum()):,} tokens "
        f"of real text; validation: {r['validation_docs']} held-out documents "
        f"({r['no_retrieval']['tokens']:,} predicted tokens); neighbours: {nb_note}. "
        f"Both models: preset `{args.preset}`, {args.steps} steps × {args.batch_size} "
        f"sequences × {args.seq_chunks * 64} tokens, same seed, same sequences. "
        f"Machine: {machine}, torch {torch.__version__}, CPU. Command: `{cmd}`.",
        "",
        "| validation (bits per byte of the original text) | bpb | loss (nats/token) |",
        "|---|---|---|",
        f"| baseline (`--no-retrieval`) | {b['no_retrieval']['bpb']:.4f} | "
        f"{b['no_retrieval']['loss']:.4f} |",
        f"| RETRO, retrieval | {r['retrieval']['bpb']:.4f} | {r['retrieval']['loss']:.4f} |",
        f"| RETRO, leakage-filtered neighbours (r ≤ {args.overlap_alpha}) | "
        f"{r['leakage_filtered']['bpb']:.4f} | {r['leakage_filtered']['loss']:.4f} |",
        f"| RETRO, retrieval disabled | {r['no_retrieval']['bpb']:.4f} | "
        f"{r['no_retrieval']['loss']:.4f} |",
        "",
        f"Training time, same run: RETRO {q['retro_train_s']:.0f} s, baseline "
        f"{q['baseline_train_s']:.0f} s.",
        "",
        f"Throughput (forward + backward + AdamW, batch {args.speed_batch} × "
        f"{args.seq_chunks * 64} tokens, k = 2 neighbours of 128 tokens, median of "
        f"{s['steps']} steps after one warm-up, interleaved):",
        "",
        "| measure | ours | retro-pytorch " + s["theirs_version"] + " (same run) | ratio |",
        "|---|---|---|---|",
        f"| training tokens/s | {s['ours_tps']:,.0f} | {s['theirs_tps']:,.0f} | "
        f"{s['ours_tps'] / s['theirs_tps']:.2f}× |",
        f"| parameters | {s['ours_params'] / 1e6:.1f}M | {s['theirs_params'] / 1e6:.1f}M | |",
        "",
        "RETRO against its baseline (same steps, same sequences; lower is better):",
        "",
        "| measure | RETRO | baseline (same run) | ratio |",
        "|---|---|---|---|",
        f"| validation bits per byte, with retrieval | {r['retrieval']['bpb']:.4f} | "
        f"{b['no_retrieval']['bpb']:.4f} | {r['retrieval']['bpb'] / b['no_retrieval']['bpb']:.3f}× |",
        f"| validation bits per byte, leakage-filtered neighbours | "
        f"{r['leakage_filtered']['bpb']:.4f} | {b['no_retrieval']['bpb']:.4f} | "
        f"{r['leakage_filtered']['bpb'] / b['no_retrieval']['bpb']:.3f}× |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
