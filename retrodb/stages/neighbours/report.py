"""What a neighbour set holds: counts, candidates searched, and how leaky it is.

r = longest common token run between the chunk a neighbour helps predict (the query's
next chunk, C_{u+1}) and the neighbour with its continuation, / chunk size; r = 1: the
predicted chunk is in the neighbour verbatim (stores/overlap.py). `retrodb neighbours report` prints the distribution of r, so
the leakage filter α can be chosen before evaluating.
"""

from __future__ import annotations

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest
from .config import R_BINS, STAGE


def set_stats(m: Manifest) -> dict:
    """Totals of a set's shard entries: counts, searched candidates, r histogram."""
    keys = ("rows", "searched", "widened", "short", "missing", "dropped_same_doc",
            "dropped_validation", "dropped_overlap", "duplicates")
    tot = {k: sum(int(e.get(k, 0)) for e in m.shards) for k in keys}
    hist = np.zeros(R_BINS + 1, dtype=np.int64)
    for e in m.shards:
        if "r_hist" in e:
            hist += np.asarray(e["r_hist"], dtype=np.int64)
    tot["r_hist"] = hist.tolist()
    tot["searched_per_query"] = round(tot["searched"] / max(tot["rows"], 1), 3)
    tot["k"] = m.data.get("k")
    return tot


def r_histogram_rows(hist: list[int]) -> list[tuple[str, int]]:
    """(label, count) per histogram bin: [0, .05), ..., [.95, 1), exactly 1."""
    out = []
    for b, c in enumerate(hist):
        if b == R_BINS:
            out.append(("r = 1 (copy)", c))
        else:
            out.append((f"{b / R_BINS:.2f}–{(b + 1) / R_BINS:.2f}", c))
    return out


def neighbours_report(db, set_name: str = "train") -> dict:
    """The set's settings, counts and distribution of r (for `neighbours report`)."""
    db = Database(db)
    out = db.neighbours(set_name)
    m = Manifest(out, STAGE)
    if not m.shards:
        raise RetrodbError(f"{out}: no neighbours; run `retrodb neighbours --db {db.root} "
                           f"--set {set_name}` first")
    stats = set_stats(m)
    n = sum(stats["r_hist"]) or 1
    cum = np.cumsum(stats["r_hist"][::-1])[::-1] / n  # share with r ≥ bin start
    over = {}
    for alpha in (0.1, 0.2, 0.5, 0.8):
        b = int(round(alpha * R_BINS))  # bins from alpha on (bin edges are multiples)
        over[f"r >= {alpha}"] = round(float(cum[b]), 4)
    return {"set": set_name, "directory": str(out), "settings": m.data.get("settings"),
            "index": m.data.get("index"), "nprobe": m.data.get("nprobe"),
            "candidates": m.data.get("candidates"), "shards": len(m.shards),
            **stats, "share": over}
