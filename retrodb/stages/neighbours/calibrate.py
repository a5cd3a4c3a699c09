"""Calibration: filtered recall against exact filtered search, and the nprobe it needs.

Filtered neighbours lie farther from a chunk than its unfiltered ones (its own
document's chunks are the nearest), so the index's operating point, chosen for
self-retrieval, finds fewer of them. The stage samples chunks, computes their exact
filtered top-k by streaming every key, and doubles nprobe from the index's choice until
filtered recall@k reaches the target.
"""

from __future__ import annotations

import numpy as np

from ...stores.vectors import EmbeddingStore
from .search import FilteredSearch


def exact_filtered(store: EmbeddingStore, tokens, split, xq: np.ndarray,
                   qdocs: np.ndarray | None, k: int, block: int = 1 << 15
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) over every key, the query's own document (`qdocs`) and
    validation documents (`split`) removed; streamed block by block."""
    n = len(xq)
    best_s = np.full((n, k), -np.inf, dtype=np.float32)
    best_i = np.full((n, k), -1, dtype=np.int64)
    for first, xb in store.blocks(block):
        ids = np.arange(first, first + len(xb), dtype=np.int64)
        s = xq @ xb.T
        if qdocs is not None or split is not None:
            bd = tokens.doc_ids(ids)
            if qdocs is not None:
                s[qdocs[:, None] == bd[None, :]] = -np.inf
            if split is not None:
                s[:, split.is_validation(bd)] = -np.inf
        kk = min(k, len(xb))
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        ci = np.concatenate([best_i, ids[part]], axis=1)
        top = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cs, top, axis=1)
        best_i = np.where(np.isfinite(best_s), np.take_along_axis(ci, top, axis=1), -1)
    return best_s, best_i


def filtered_recall(store: EmbeddingStore, xq: np.ndarray, ids: np.ndarray,
                    gt_s: np.ndarray, eps: float = 1e-4) -> float:
    """Share of the true filtered neighbours found: a result counts when its exact
    score reaches the exact k-th (ties count); queries with fewer than k eligible
    chunks count only the ones that exist."""
    valid = ids >= 0
    vecs = np.zeros(ids.shape + (store.dim,), dtype=np.float32)
    vecs[valid] = store.get(ids[valid])
    exact = np.einsum("qcd,qd->qc", vecs, xq)
    n_true = np.isfinite(gt_s).sum(axis=1)
    kth = np.take_along_axis(gt_s, np.maximum(n_true - 1, 0)[:, None], axis=1)
    hits = (valid & (exact >= kth - eps)).sum(axis=1)
    return float(np.minimum(hits, n_true).sum() / max(n_true.sum(), 1))


def calibrate(qstore: EmbeddingStore, fs: FilteredSearch, start: int, fixed: bool,
              target: float, queries: int, exclude_validation: bool) -> dict:
    """Choose nprobe for the filtered search, from `start` (`fixed`: measure only)."""
    nlist = int(fs.searcher.trained["nlist"])
    out = {"queries": 0, "target": target, "points": [], "nprobe": start,
           "recall": None, "reached": None, "measured": False}
    if queries == 0:
        return out
    qids = qstore.sample_ids(min(queries, qstore.n), seed=1)
    xq = qstore.get(qids)
    qdocs = fs.qtokens.doc_ids(qids) if fs.same_doc else None
    gt_s, _ = exact_filtered(fs.store, fs.tokens, fs.split if exclude_validation else None,
                             xq, qdocs, fs.k)
    p = start
    while True:
        ids, _ = fs.search(xq, qids, p, {}, overlap=False)
        r = round(filtered_recall(fs.store, xq, ids, gt_s), 4)
        out["points"].append({"nprobe": p, f"recall@{fs.k}": r})
        out.update(nprobe=p, recall=r)
        if r >= target or fixed or p >= nlist:
            break
        p = min(p * 2, nlist)
    out.update(queries=len(qids), reached=out["recall"] >= target, measured=True)
    return out
