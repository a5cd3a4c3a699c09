"""Leakage ratio r: longest common contiguous token run / chunk size."""

from __future__ import annotations

import numpy as np

from retrodb.stores.overlap import longest_common_run, overlap_ratio


def _slow(a, b):
    best = 0
    for i in range(len(a)):
        for j in range(len(b)):
            k = 0
            while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
                k += 1
            best = max(best, k)
    return best


def test_matches_brute_force_and_ignores_padding():
    rng = np.random.default_rng(1)
    a = rng.integers(1, 6, size=(200, 16))
    b = rng.integers(1, 6, size=(200, 16))
    b[:20] = a[:20]  # identical pairs
    la = rng.integers(1, 17, size=200)
    lb = rng.integers(1, 17, size=200)
    got = longest_common_run(a, la, b, lb)
    want = [_slow(list(x[:m]), list(y[:n])) for x, m, y, n in zip(a, la, b, lb)]
    assert got.tolist() == want
    # padding zeros on both sides never count as a match
    z = np.zeros((1, 8), dtype=np.int64)
    assert longest_common_run(z, np.array([2]), z, np.array([3])).tolist() == [2]
    assert longest_common_run(z, np.array([0]), z, np.array([8])).tolist() == [0]


def test_overlap_ratio_shapes():
    q = np.arange(1, 65)[None, :]
    neigh = np.stack([q[0], np.r_[q[0, 32:], np.zeros(32, int)]])[None]
    r = overlap_ratio(q, np.array([64]), neigh, np.array([[64, 32]]), 64)
    assert r.shape == (1, 2) and r.tolist() == [[1.0, 0.5]]
