"""Validation loss and bits per byte of a trained run, as the paper evaluates.

Modes, on the same validation windows:
  - retrieval: the precomputed neighbours of each validation chunk (own document and
    validation documents excluded: validation retrieves from the training data);
  - no_retrieval: every neighbour removed, so CCA adds nothing (the decoder alone);
  - leakage_filtered: neighbours with r > α removed, r being the longest common token
    run between the chunk a neighbour helps predict (C_{u+1}) and the neighbour with
    its continuation, over the chunk size (the paper's §2.6; stores/overlap.py).
And by leakage (the paper's Fig. 6): every predicted token belongs to one chunk C_{u+1},
predicted with the neighbours of C_u; its bucket is the largest r among them, in eight
buckets of 12.5%. Tokens predicted with no neighbour (a window's first chunk, or all
neighbours dropped) form a group of their own. A baseline run is bucketed by the same
neighbour set, so both models are compared on the same tokens.

Bits per byte count the true UTF-8 bytes of exactly the tokens evaluated: each
predicted token's own byte length for a byte-level tokenizer (`retrodb tokenizer`);
for any other tokenizer (which may drop or rewrite text) the bytes per token of its
document, and the result says "estimated".
"""

from __future__ import annotations

import math

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from .device import autocast_for, to_torch

BUCKETS = 8  # r in [0, 1/8), [1/8, 2/8), …, [7/8, 1]
NONE = BUCKETS  # the group of tokens predicted without neighbours
MODES = ("retrieval", "no_retrieval", "leakage_filtered")


def bucket_labels() -> list[str]:
    labels = [f"{i / BUCKETS:.3f}-{(i + 1) / BUCKETS:.3f}" for i in range(BUCKETS)]
    return labels + ["no neighbours"]


class Tally:
    """Loss (nats), tokens and bytes per group."""

    def __init__(self, groups: int = 1):
        self.loss = np.zeros(groups)
        self.tokens = np.zeros(groups, dtype=np.int64)
        self.bytes = np.zeros(groups)

    def add(self, groups: np.ndarray, loss: np.ndarray, nbytes: np.ndarray) -> None:
        n = len(self.loss)
        self.loss += np.bincount(groups, loss, minlength=n)
        self.tokens += np.bincount(groups, minlength=n)
        self.bytes += np.bincount(groups, nbytes, minlength=n)

    def result(self, i: int | None = None) -> dict:
        loss, tokens, nbytes = ((self.loss.sum(), self.tokens.sum(), self.bytes.sum())
                                if i is None else (self.loss[i], self.tokens[i],
                                                   self.bytes[i]))
        if tokens == 0:
            return {"loss": float("nan"), "bpb": float("nan"), "tokens": 0, "bytes": 0}
        return {"loss": float(loss / tokens), "bpb": float(loss / math.log(2) / nbytes),
                "tokens": int(tokens), "bytes": int(round(nbytes))}


def token_groups(batch, m: int) -> np.ndarray:
    """(b, T) leakage group of the token each position predicts (see the module)."""
    b, T = batch.targets.shape
    S = T // m
    if batch.leakage is None:
        return np.full((b, T), NONE)
    with np.errstate(invalid="ignore"):
        slot_r = np.where(np.isnan(batch.leakage).all(-1), np.nan,
                          np.nan_to_num(batch.leakage, nan=-1.0).max(-1))  # (b, S)
    s = (np.arange(T) + 1) // m  # slot of the predicted token
    prev = np.clip(s - 1, 0, S - 1)
    r = np.where((s >= 1) & (s < S), slot_r[:, prev], np.nan)
    return np.where(np.isnan(r), NONE, np.minimum((np.nan_to_num(r) * BUCKETS).astype(
        np.int64), BUCKETS - 1))


def token_losses(model, t: dict) -> np.ndarray:
    """Loss (nats) of every target position of the torch batch `t`, NaN elsewhere."""
    import torch

    per = model(**t, reduction="none").float()
    keep = t["targets"] != -100
    out = torch.full(keep.shape, float("nan"))
    out[keep.cpu()] = per.cpu()
    return out.numpy()


def _inputs(batch, device, mode: str, alpha: float | None) -> dict:
    t = to_torch(batch, device)
    if mode == "no_retrieval":
        t.pop("neighbours", None)
        t.pop("neighbour_mask", None)
    elif mode == "leakage_filtered" and "neighbour_mask" in t:
        import torch

        leak = np.nan_to_num(batch.leakage, nan=0.0) > alpha  # (b, S, k)
        t["neighbour_mask"] = t["neighbour_mask"] & ~torch.from_numpy(leak)[..., None].to(
            t["neighbour_mask"].device)
    return t


def evaluate_modes(model, seqs, max_sequences: int, device, autocast,
                   modes=("retrieval",), alpha: float = 0.2, batch_size: int = 8,
                   byte_len: np.ndarray | None = None, by_leakage: bool = False) -> dict:
    """{mode: {loss, bpb, tokens, bytes[, by_leakage: [...]]}} over the first
    `max_sequences` windows of `seqs` (0: all)."""
    import torch

    n = len(seqs) if not max_sequences else min(len(seqs), max_sequences)
    groups = BUCKETS + 1 if by_leakage else 1
    tallies = {mode: Tally(groups) for mode in modes}
    measure = seqs.table is not None and (by_leakage or "leakage_filtered" in modes)
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch_size):
            rows = np.arange(i, min(n, i + batch_size))
            b = seqs.batch(rows, leakage=measure)
            keep = b.targets != -100
            if byte_len is not None:
                nbytes = byte_len[np.where(keep, b.targets, 0)].astype(np.float64)
            else:
                nbytes = np.broadcast_to(seqs.bytes_per_token[rows][:, None], keep.shape)
            g = token_groups(b, seqs.m) if by_leakage else np.zeros(keep.shape, np.int64)
            for mode, tally in tallies.items():
                with autocast:
                    loss = token_losses(model, _inputs(b, device, mode, alpha))
                tally.add(g[keep], loss[keep], nbytes[keep])
    model.train(was)
    out = {}
    for mode, tally in tallies.items():
        out[mode] = {**tally.result(), "sequences": n}
        if by_leakage:
            out[mode]["by_leakage"] = [{"r": label, **tally.result(j)}
                                       for j, label in enumerate(bucket_labels())]
    return out


def evaluate_loss(model, seqs, max_sequences: int, device, autocast,
                  retrieval: bool = True, batch_size: int = 8,
                  byte_len: np.ndarray | None = None) -> dict:
    """Mean loss (nats/token) and bits per byte of one mode (the trainer's check)."""
    mode = "retrieval" if retrieval else "no_retrieval"
    return evaluate_modes(model, seqs, max_sequences, device, autocast, (mode,),
                          batch_size=batch_size, byte_len=byte_len)[mode]


def evaluate_run(db, run: str, max_sequences: int = 0, overlap_alpha: float = 0.2,
                 neighbours: str | None = None, device: str = "cpu",
                 batch_size: int = 8, server=None) -> dict:
    """Every mode of the run (a baseline: no_retrieval), each with loss (nats/token),
    bpb, tokens, bytes and by_leakage; plus the run's step and what was measured.

    server: a `RemoteRetriever` (`retrodb serve`) to take the neighbours from instead
    of the precomputed set; the validation tokens still come from `db`."""
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
    retro = model.config.retrieval
    name = neighbours or tcfg["neighbours"]
    table = None
    if server is not None:
        from ..query.client import RemoteNeighbours

        local = (db.neighbours(name) / "manifest.json").exists()
        table = RemoteNeighbours(server, neighbour_table(db, name).k if local else 2)
        name = f"{server.url} ({name})"
    elif retro or neighbours or (db.neighbours(name) / "manifest.json").exists():
        table = neighbour_table(db, name)  # a baseline: only to bucket by leakage
    val = Sequences(db, split, "val", tcfg["seq_chunks"], TokenStore(db), table)
    if len(val) == 0:
        raise RetrodbError(f"{db.root}: no validation documents (--val-fraction "
                           f"{split.val_fraction}); retrain with a larger one")
    byte_len = db.tokenizer().byte_lengths()
    modes = MODES if retro else ("no_retrieval",)
    res = evaluate_modes(model, val, max_sequences, dev, autocast_for(dev), modes,
                         overlap_alpha, batch_size, byte_len, by_leakage=table is not None)
    out = {"run": run, "step": latest_step(db, run), "retrieval_model": retro,
           "validation_docs": val.n_docs, "neighbours": name if table else None,
           "bytes": "exact" if byte_len is not None else "estimated",
           **res, "overlap_alpha": overlap_alpha if retro else None,
           "max_sequences": max_sequences}
    write_json(run_dir(db, run) / "eval.json", out)  # the run's latest evaluation
    return out
