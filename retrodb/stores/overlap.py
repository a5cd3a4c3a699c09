"""Test-set leakage: the longest common token substring of a chunk and a neighbour.

The paper evaluates with neighbours filtered by r = LCS(query chunk, neighbour) / chunk
size: a neighbour with r > α shares a long verbatim span with the text being predicted
and would inflate the gains of retrieval. LCS here is the longest *contiguous* run of
equal tokens (padding excluded), computed for many pairs at once.
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
