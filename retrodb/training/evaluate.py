"""Validation loss and bits per byte of a trained run, with and without retrieval.

Three numbers for a RETRO run, on the same validation windows:
  - retrieval: the precomputed neighbours of each validation chunk (own document
    excluded, as in training);
  - no retrieval: every neighbour removed, so CCA adds nothing (the decoder alone);
  - leakage-filtered: neighbours whose longest common token run with the query chunk
    exceeds `overlap_alpha` × chunk size are removed too (the paper's test-set leakage
    filter, stores/overlap.py).
A --no-retrieval baseline run gives the one number it can.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from .device import autocast_for, to_torch


def evaluate_loss(model, seqs, max_sequences: int, device, autocast,
                  retrieval: bool = True, exclude_overlap: float | None = None,
                  batch_size: int = 8) -> dict:
    """Mean loss (nats/token) and bits per byte over the first windows of `seqs`.

    Bits per byte = bits per predicted token × tokens per UTF-8 byte of the evaluated
    documents (from the docs table), so it compares across tokenizers.
    """
    import torch

    n = len(seqs) if not max_sequences else min(len(seqs), max_sequences)
    if n == 0:
        return {"loss": float("nan"), "bpb": float("nan"), "tokens": 0, "sequences": 0}
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = seqs.batch(np.arange(i, min(n, i + batch_size)), exclude_overlap)
            t = to_torch(b, device)
            if not retrieval:
                t.pop("neighbours", None)
                t.pop("neighbour_mask", None)
            with autocast:
                total += float(model(**t, reduction="sum"))
            count += int((b.targets != -100).sum())
    model.train(was)
    loss = total / max(count, 1)
    bpb = loss / math.log(2) * seqs.n_tokens / max(seqs.n_bytes, 1)
    return {"loss": loss, "bpb": bpb, "tokens": count, "sequences": n}



def evaluate_run(db, run: str, max_sequences: int = 0, overlap_alpha: float = 0.2,
                 neighbours: str | None = None, device: str = "cpu",
                 batch_size: int = 8) -> dict:
    """{"retrieval": {...}, "no_retrieval": {...}, "leakage_filtered": {...}}, each
    with loss (nats/token), bpb, tokens, sequences; plus the run's step."""
    from ..stores.split import load_split
    from ..stores.tokens import TokenStore
    from .runs import latest_step, load_run, run_dir, write_json
    from .sequences import Sequences, neighbour_table

    db = Database(db)
    if not 0 <= overlap_alpha <= 1:
        raise RetrodbError(f"--exclude-overlap {overlap_alpha}: α must be in [0, 1] "
                           "(r = common token run / chunk size; 0.2 is usual)")
    model, saved, dev = load_run(db, run, device)
    tcfg = saved["train"]
    split = load_split(db)
    if split is None:
        raise RetrodbError(f"{db.root}: no train/validation split; it is recorded by "
                           "`retrodb train`")
    store = TokenStore(db)
    retro = model.config.retrieval
    table = neighbour_table(db, neighbours or tcfg["neighbours"]) if retro else None
    val = Sequences(db, split, "val", tcfg["seq_chunks"], store, table)
    if len(val) == 0:
        raise RetrodbError(f"{db.root}: no validation documents (--val-fraction "
                           f"{split.val_fraction}); retrain with a larger one")
    autocast = autocast_for(dev)

    def run_eval(**kw) -> dict:
        return evaluate_loss(model, val, max_sequences, dev, autocast,
                             batch_size=batch_size, **kw)

    out = {"run": run, "step": latest_step(db, run), "validation_docs": val.n_docs,
           "no_retrieval": run_eval(retrieval=False)}
    if retro:
        out["retrieval"] = run_eval()
        out["leakage_filtered"] = run_eval(exclude_overlap=overlap_alpha)
        out["overlap_alpha"] = overlap_alpha
    out["max_sequences"] = max_sequences
    write_json(run_dir(db, run) / "eval.json", out)  # the run's latest evaluation
    return out
