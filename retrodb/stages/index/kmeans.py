"""The coarse quantizer's k-means: flat, two-level, or on the GPU.

Flat k-means costs n × nlist × d per iteration, which at 3 × 10¹⁰ keys (~700k lists,
a 70M-vector sample) is thousands of CPU hours. Two-level k-means first clusters the
sample into nlist/512 groups, then each group into its share of the lists (in
proportion to its size, ~512 each): n × (nlist/512 + 512) × d per iteration. Two-level
alone never moves a vector out of its group, so lists at group borders are worse than
flat k-means'. Rounds of refinement then move every vector to its nearest list among
the groups around it (`refine`), at n × (nlist/512 + 4 × 512) × d a round.

Measured on 1.2M real keys, 4096 lists, recall ceilings of 10,000 queries: with √nlist
groups (64 lists each) and 8 rounds the loss against flat k-means was 0.026 at nprobe
1; with 512 lists per group and 12 rounds it is ≤ 0.008 at every nprobe (flat seeds
differ by ≤ 0.001), and 16 rounds gave ≤ 0.007 for 20% more time. Weighting the
groups' shares by their spread instead of their size changed nothing.
benchmarks/bench_search.py measures recall at the same nprobe for both. When faiss
sees a GPU (faiss-gpu), every k-means runs there.

`auto` picks two-level from `TWO_LEVEL_FROM` lists, flat below. Centroids stay on the
unit sphere (spherical k-means): the keys are unit vectors and inner product against
them is cosine.
"""

from __future__ import annotations

import numpy as np

from ...core.errors import RetrodbError
from ...core.progress import Progress, ProgressFn
from .factory import faiss

# lists: below, flat k-means is the faster. Measured at 4096 lists on 1.2M keys (bench
# search): a two-level distance costs ~3× a flat one (smaller products, per-group
# loops), and two-level computes 2.3× fewer there (106 s against 77 s), 4.6× fewer at
# 8192 lists, ~150× fewer at 524,288.
TWO_LEVEL_FROM = 8192
METHODS = ("auto", "flat", "two-level")
NITER = 20  # iterations of every k-means (faiss's default is 25 for flat)
LISTS_PER_GROUP = 512  # lists of one second-level k-means (groups = nlist / 512)
REFINE_ROUNDS = 12  # Lloyd rounds over all lists after two-level k-means
REFINE_GROUPS = 4  # each round compares a vector with the lists of its 4 nearest groups


def groups_for(nlist: int) -> int:
    """Top-level groups of a two-level k-means of `nlist` lists."""
    return max(1, round(nlist / LISTS_PER_GROUP))


def distances_per_vector(nlist: int, method: str) -> float:
    """Centroid distances one training vector costs over a whole k-means run (the
    plan's unit of work, × dim): flat NITER × nlist; two-level NITER × (groups +
    nlist/groups) for its two levels, then REFINE_ROUNDS × (groups + REFINE_GROUPS ×
    nlist/groups) for the rounds."""
    if method == "flat":
        return float(NITER * nlist)
    top = groups_for(nlist)
    near = min(REFINE_GROUPS, top)
    return float(NITER * (top + nlist / top) + REFINE_ROUNDS * (top + near * nlist / top))


def gpus() -> int:
    f = faiss()
    return int(f.get_num_gpus()) if hasattr(f, "get_num_gpus") else 0


def coarse_method(requested: str, nlist: int) -> str:
    """The k-means to run for `nlist` lists: flat or two-level."""
    if requested not in METHODS:
        raise RetrodbError(f"--kmeans {requested}: use one of {', '.join(METHODS)}")
    if requested != "auto":
        return requested
    return "two-level" if nlist >= TWO_LEVEL_FROM else "flat"


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (k, d) of the float32 rows `x` (on the GPUs when
    faiss sees any)."""
    f = faiss()
    km = f.Kmeans(x.shape[1], k, niter=NITER, seed=seed, spherical=True, gpu=gpus() > 0,
                  max_points_per_centroid=1 << 30, min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def split_lists(sizes: np.ndarray, nlist: int) -> np.ndarray:
    """Lists per group, in proportion to the group sizes, summing to nlist, each at least
    1 and at most the group's size (largest remainders get the rest)."""
    share = sizes / sizes.sum() * nlist
    out = np.minimum(np.maximum(np.floor(share).astype(np.int64), 1), sizes)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while out.sum() < nlist:
        g = order[i % len(order)]
        if out[g] < sizes[g]:
            out[g] += 1
        i += 1
        if i > 4 * len(order) * nlist:  # pragma: no cover - guarded by the caller
            break
    while out.sum() > nlist:
        g = int(np.argmax(out))
        out[g] -= 1
    return out


def two_level(x: np.ndarray, nlist: int, seed: int,
              on_progress: ProgressFn | None = None) -> np.ndarray:
    """nlist centroids by two-level spherical k-means of the sample `x`."""
    if len(x) < nlist:
        raise RetrodbError(f"two-level k-means: {len(x)} training vectors for {nlist} "
                           "lists; give a larger --train-size")
    top = groups_for(nlist)
    c1 = kmeans(x, top, seed)
    f = faiss()
    _, assign = f.knn(x, c1, 1, metric=f.METRIC_INNER_PRODUCT)
    assign = assign[:, 0]
    sizes = np.bincount(assign, minlength=top)
    groups = np.flatnonzero(sizes)
    per = split_lists(sizes[groups], nlist)
    out = []
    for i, (g, k) in enumerate(zip(groups, per)):
        xs = x[assign == g]
        out.append(xs[:1] / np.linalg.norm(xs[:1], axis=1, keepdims=True) if k == 1
                   and len(xs) == 1 else kmeans(xs, int(k), seed + 1 + i))
        if on_progress:
            on_progress(Progress("two-level k-means", i + 1, len(groups), "groups"))
    cents = np.concatenate(out).astype(np.float32)
    return refine(x, c1, cents, REFINE_ROUNDS, REFINE_GROUPS, on_progress)


def refine(x: np.ndarray, groups: np.ndarray, cents: np.ndarray, rounds: int, near: int,
           on_progress: ProgressFn | None = None) -> np.ndarray:
    """`rounds` spherical Lloyd rounds over all `cents` at once, each vector of `x`
    compared only with the centroids filed under its `near` nearest `groups` (a
    centroid is filed under the group nearest to it).

    Group by group, the vectors that see it are scored against its centroids by one
    matrix product (faiss's BLAS search): a round costs n × (groups + near ×
    nlist/groups) × d where a flat iteration costs n × nlist × d. A centroid that no
    vector chose stays put."""
    import torch  # index_add_: the per-centroid sums, threaded

    f = faiss()
    ip = f.METRIC_INNER_PRODUCT
    x = np.ascontiguousarray(x, dtype=np.float32)
    near = min(near, len(groups))
    _, probe = f.knn(x, groups, near, metric=ip)  # the groups stay: probed once
    seen_by = members(probe.reshape(-1), len(groups))
    xt = torch.from_numpy(x)
    for r in range(rounds):
        _, owner = f.knn(cents, groups, 1, metric=ip)
        filed = members(owner[:, 0], len(groups))
        best = np.full(len(x), -np.inf, dtype=np.float32)
        lab = np.full(len(x), -1, dtype=np.int64)
        for g in range(len(groups)):
            pts, mine = seen_by(g) // near, filed(g)
            if not len(pts) or not len(mine):
                continue
            score, at = f.knn(x[pts], cents[mine], 1, metric=ip)
            better = score[:, 0] > best[pts]
            best[pts[better]] = score[better, 0]
            lab[pts[better]] = mine[at[better, 0]]
        ok = torch.from_numpy(lab >= 0)  # False: no centroid under its nearest groups
        labt = torch.from_numpy(lab)
        sums = torch.zeros(cents.shape, dtype=torch.float32)
        sums.index_add_(0, labt[ok], xt[ok] if not bool(ok.all()) else xt)
        sums = sums.numpy()
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
        moved = norm[:, 0] > 0
        cents = cents.copy()
        cents[moved] = sums[moved] / norm[moved]
        if on_progress:
            on_progress(Progress("refine lists", r + 1, rounds, "rounds"))
    return cents


def members(labels: np.ndarray, k: int):
    """g → the positions of `labels` equal to g (0 ≤ g < k), by one stable sort."""
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(k + 1))
    return lambda g: order[starts[g]:starts[g + 1]]


def train_coarse(index, x: np.ndarray, method: str, seed: int,
                 on_progress: ProgressFn | None = None) -> None:
    """Give the IVF index its coarse centroids by `method` (flat on the CPU: faiss's own
    training, done by `index.train`); the index's train() then trains only its codes."""
    if method == "flat" and not gpus():
        return
    f = faiss()
    ivf = f.extract_index_ivf(index)
    if isinstance(f.downcast_index(index), f.IndexPreTransform):
        raise RetrodbError(f"--kmeans {method}: only for factories without a transform "
                           "before the IVF layer (e.g. no OPQ); use --kmeans flat")
    cents = kmeans(x, int(ivf.nlist), seed) if method == "flat" else \
        two_level(x, int(ivf.nlist), seed, on_progress)
    ivf.quantizer.add(cents)  # the quantizer now holds nlist centroids: IVF skips k-means
