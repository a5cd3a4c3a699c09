"""Training throughput: our RETRO against retro-pytorch 0.3.9 with the same model shape,
both measured in this run.

Same shape on both sides: layers, width, heads (retro-pytorch's constructor does not
pass `heads` on to its encoder and decoder, so their defaults are set to ours), head
size, feed-forward width, vocabulary, CCA layers, encoder depth, chunk size, k = 2
neighbours of 2 × 64 tokens, and a tied output embedding (retro-pytorch's `to_logits`
weight is tied to its token embedding, as ours is). The parameter counts must agree
within 2% or the benchmark stops. Same batch (real tokens and real neighbours from the
database), AdamW on both, warm-up steps on both, then timed steps interleaved (ours,
theirs, theirs, ours, ...). Reported: tokens/s, tokens/s per parameter, and model FLOP
utilisation: the FLOPs of one training step of *our* model (counted by torch's
FlopCounterMode; the same model, so the same useful work on both sides) per second,
over the matmul peak measured in the same run (float32 GEMM, same threads).

retro-pytorch is a benchmark-only dependency: `pip install --no-deps retro-pytorch==0.3.9
einops` (its retrieval module needs faiss/autofaiss, which this script stubs out: only
its model file is loaded).

Usage: python benchmarks/bench_train.py [--db .cache/retro/db] [--preset small] [--steps 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np

from common import ROOT, Measure, Result, Side


def load_retro_pytorch(n_head: int):
    """retro_pytorch's module, without importing its faiss-based retrieval."""
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
    for cls in (mod.Encoder, mod.Decoder):  # RETRO(heads=...) never reaches them
        cls.__init__.__kwdefaults__["heads"] = n_head
    from importlib.metadata import version
    return mod, version("retro-pytorch")


def models(mc, seq_len: int):
    import torch

    from retrodb.training.model import Retro

    mod, version = load_retro_pytorch(mc.n_head)
    torch.manual_seed(0)
    ours = Retro(mc)
    theirs = mod.RETRO(num_tokens=mc.vocab_size, max_seq_len=seq_len, enc_dim=mc.d_model,
                       enc_depth=mc.enc_layers, dec_dim=mc.d_model, dec_depth=mc.n_layer,
                       dim_head=mc.d_model // mc.n_head, chunk_size=mc.chunk_size,
                       dec_cross_attn_layers=tuple(i + 1 for i in mc.cca_layers))
    theirs.to_logits.weight = theirs.token_emb.weight  # tied, as ours
    return ours, theirs, version


def count(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def matmul_peak(threads: int, n: int = 1536, reps: int = 8) -> float:
    """float32 GEMM FLOP/s at this many threads (best of `reps`)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=ROOT / ".cache" / "retro" / "db",
                    help="a database with a neighbour set (bench_retro.py builds one)")
    ap.add_argument("--neighbours", default="train")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-chunks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from retrodb.core.db import Database
    from retrodb.stores.split import load_split
    from retrodb.training.model import preset_config
    from retrodb.training.sequences import Sequences, neighbour_table

    torch.set_num_threads(a.threads)
    db = Database(a.db)
    cfg = db.config()
    mc = preset_config(a.preset, cfg["tokenizer"]["vocab_size"], cfg["chunk_size"])
    seqs = Sequences(db, load_split(db), "train", a.seq_chunks,
                     table=neighbour_table(db, a.neighbours))
    b = seqs.batch(np.arange(a.batch_size))
    idx, tg = torch.from_numpy(b.tokens), torch.from_numpy(b.targets)
    nb, nm = torch.from_numpy(b.neighbours), torch.from_numpy(b.neighbour_mask)
    ours, theirs, version = models(mc, idx.shape[1] + 1)
    p_ours, p_theirs = count(ours), count(theirs)
    if abs(p_theirs / p_ours - 1) > 0.02:
        sys.exit(f"parameters differ by more than 2%: ours {p_ours:,}, theirs {p_theirs:,}")
    seq_theirs = torch.cat([idx, idx[:, :1]], 1)  # it predicts seq[1:] from seq[:-1]
    retrieved = torch.where(nm, nb, 0)  # it masks neighbour padding by pad id 0
    opts = {"ours": torch.optim.AdamW(ours.parameters(), lr=1e-4),
            "theirs": torch.optim.AdamW(theirs.parameters(), lr=1e-4)}
    losses = {"ours": lambda: ours(idx, nb, nm, targets=tg),
              "theirs": lambda: theirs(seq_theirs, retrieved, return_loss=True)}

    def step(name: str) -> float:
        t = time.perf_counter()
        loss = losses[name]()
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()
        return time.perf_counter() - t

    flops = step_flops(lambda: step("ours"))
    peak = matmul_peak(a.threads)
    torch.set_num_threads(a.threads)
    for _ in range(a.warmup):
        step("ours"), step("theirs")
    times = {"ours": [], "theirs": []}
    for i in range(a.steps):  # ours, theirs, theirs, ours, ...: neither always first
        for name in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
            times[name].append(step(name))
    peak_after = matmul_peak(a.threads)
    tokens = idx.numel()
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    res = Result("train", ["retrodb/training/model", "retrodb/training/train.py"],
                 "Training throughput: RETRO against retro-pytorch, same shape")
    res.add(Measure("training tokens/s (forward, backward, AdamW)", "tokens/s",
                    Side("retrodb", tps["ours"]), Side(f"retro-pytorch {version}",
                                                       tps["theirs"])))
    res.add(Measure("training tokens/s per million parameters", "tokens/s/M",
                    Side("retrodb", [x / p_ours * 1e6 for x in tps["ours"]]),
                    Side(f"retro-pytorch {version}",
                         [x / p_theirs * 1e6 for x in tps["theirs"]])))
    peak_used = max(peak, peak_after)
    res.add(Measure("model FLOP utilisation (our model's FLOPs per step / matmul peak)",
                    "MFU", Side("retrodb", [flops / t / peak_used for t in times["ours"]]),
                    Side(f"retro-pytorch {version}",
                         [flops / t / peak_used for t in times["theirs"]])))
    res.facts.update(params_ours=p_ours, params_theirs=p_theirs, preset=a.preset,
                     flops_per_step=flops, tokens_per_step=tokens,
                     matmul_peak_gflops=round(peak_used / 1e9, 1), threads=a.threads,
                     batch=a.batch_size, seq_tokens=idx.shape[1], steps=a.steps,
                     shape=mc.to_dict())
    res.notes.append("Same shape: preset {preset}; parameters {params_ours} (ours) and "
                     "{params_theirs} (retro-pytorch, output tied); batch {batch} × "
                     "{seq_tokens} tokens with 2 neighbours of 128 tokens per chunk; "
                     "{steps} timed steps per side after warm-up, interleaved; {threads} "
                     "threads; {flops_per_step} FLOPs per step (ours, counted); matmul "
                     "peak {matmul_peak_gflops} GFLOP/s measured in the run. What still "
                     "differs is retro-pytorch's own design: a learned absolute position "
                     "embedding (ours: rotary, no parameters) and biases in its linear "
                     "layers.")
    res.save()


if __name__ == "__main__":
    main()
