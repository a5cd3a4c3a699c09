"""Test-set leakage: how much of the text being predicted a neighbour holds verbatim.

The neighbours retrieved for chunk C_u are attended while predicting the next chunk,
C_{u+1} (chunked cross-attention is causal by one chunk). The paper (§2.6, Fig. 6)
therefore measures leakage against C_{u+1}: r = LCS(C_{u+1}, [N, F]) / chunk size, with
[N, F] the neighbour and its continuation, LCS the longest *contiguous* run of equal
tokens (padding excluded). A neighbour with r > α would let the model copy the text it
is evaluated on; evaluating by bucket of r shows how much of a gain is copying.
"""

from __future__ import annotations

import numpy as np


def longest_common_run(a: np.ndarray, a_len: np.ndarray, b: np.ndarray,
                       b_len: np.ndarray) -> np.ndarray:
    """Longest common contiguous token run of each pair (a[i], b[i]).

    a, b: (n, L) token ids; a_len, b_len: (n,) real lengths (the rest is padding).
    Returns (n,) int32. Dynamic programming along rows, vectorised over pairs and
    columns: run[i, j] = run[i-1, j-1] + 1 where a[i] == b[j].
    """
    n, L = a.shape
    va = np.arange(L)[None, :] < np.asarray(a_len)[:, None]  # (n, L) real tokens of a
    vb = np.arange(b.shape[1])[None, :] < np.asarray(b_len)[:, None]
    run = np.zeros((n, b.shape[1] + 1), dtype=np.int32)
    best = np.zeros(n, dtype=np.int32)
    for i in range(L):
        eq = (b == a[:, i:i + 1]) & vb & va[:, i:i + 1]  # (n, Lb): a[i] == b[j]
        run[:, 1:] = np.where(eq, run[:, :-1] + 1, 0)
        np.maximum(best, run[:, 1:].max(axis=1), out=best)
    return best


def overlap_ratio(query: np.ndarray, q_len: np.ndarray, neigh: np.ndarray,
                  n_len: np.ndarray, chunk_size: int) -> np.ndarray:
    """r for every (query, neighbour): (n, L), (n,), (n, k, L), (n, k) → (n, k) float32."""
    n, k, L = neigh.shape
    q = np.repeat(query, k, axis=0)
    ql = np.repeat(q_len, k)
    runs = longest_common_run(q, ql, neigh.reshape(n * k, L), n_len.reshape(-1))
    return (runs / chunk_size).astype(np.float32).reshape(n, k)


def predicted_rows(store, ids) -> np.ndarray:
    """Token rows of C_{u+1} for chunk ids C_u (any shape): the next chunk of the same
    document; an all-padding row (length 0) where there is none or id is -1."""
    return store.rows(store.continuation_ids(ids))


def block_rows(store, ids) -> tuple[np.ndarray, np.ndarray]:
    """[N, F] of neighbour ids (any shape): tokens (..., 2m) and real lengths (...).

    F exists only when N is a whole chunk, so the real tokens are contiguous."""
    ids = np.asarray(ids, dtype=np.int64)
    n, f = store.rows(ids), store.rows(store.continuation_ids(ids))
    tokens = np.concatenate([n["tokens"], f["tokens"]], axis=-1)
    return tokens, np.where(ids >= 0, n["length"] + f["length"], 0)


def leakage(target: np.ndarray, t_len: np.ndarray, blocks: np.ndarray, b_len: np.ndarray,
            chunk_size: int, mask: np.ndarray | None = None) -> np.ndarray:
    """r of each (predicted chunk, neighbour block) pair where `mask` (0 elsewhere).

    target (n, m) tokens of C_{u+1} with lengths (n,); blocks (n, c, 2m) with lengths
    (n, c) → (n, c) float32."""
    n, c = blocks.shape[:2]
    valid = (b_len > 0) if mask is None else mask & (b_len > 0)
    r = np.zeros((n, c), dtype=np.float32)
    qi, ci = np.nonzero(valid & (np.asarray(t_len)[:, None] > 0))
    if len(qi):
        runs = longest_common_run(target[qi], t_len[qi], blocks[qi, ci], b_len[qi, ci])
        r[qi, ci] = runs / chunk_size
    return r
