"""The coarse quantizer's k-means: flat, two-level, or on the GPU.

Flat k-means costs n × nlist × d per iteration, which at 3 × 10¹⁰ keys (~700k lists,
a 70M-vector sample) is thousands of CPU hours. Two-level k-means first clusters the
sample into √nlist groups, then each group into its share of the lists (in proportion
to its size): n × (√nlist + nlist/√nlist) × d per iteration, √nlist/2 times less.
Two-level alone never moves a vector out of its group, so lists at group borders are
worse than flat k-means' (recall at nprobe 8 fell by 0.03 at 4096 lists). Rounds of
refinement then move every vector to its nearest list among the groups around it
(`refine`), which closes most of that gap at a fraction of a flat iteration's cost;
benchmarks/bench_search.py measures recall at the same nprobe for both. When faiss sees
a GPU (faiss-gpu), every k-means runs there.

`auto` picks two-level from `TWO_LEVEL_FROM` lists, flat below. Centroids stay on the
unit sphere (spherical k-means): the keys are unit vectors and inner product against
them is cosine.
"""

from __future__ import annotations

import math

import numpy as np

from ...core.errors import RetrodbError
from ...core.progress import Progress, ProgressFn
from .factory import faiss

TWO_LEVEL_FROM = 4096  # lists: below, flat k-means takes seconds to minutes
METHODS = ("auto", "flat", "two-level")
NITER = 20  # iterations of every k-means (faiss's default is 25 for flat)
REFINE_ROUNDS = 8  # Lloyd rounds over all lists after two-level k-means
REFINE_GROUPS = 4  # each round compares a vector with the lists of its 4 nearest groups


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
    top = max(1, int(round(math.sqrt(nlist))))
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
    compared only with the centroids filed under its `near` nearest `groups`.

    The centroids are put in an IVF-flat index whose lists are the groups, searched
    with nprobe = `near`: a round costs n × (√nlist + near × nlist/√nlist) × d where a
    flat iteration costs n × nlist × d. A centroid that no vector chose stays put."""
    import torch  # index_add_: the per-centroid sums, threaded

    f = faiss()
    d = x.shape[1]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for r in range(rounds):
        q = f.IndexFlatIP(d)
        q.add(groups)
        ivf = f.IndexIVFFlat(q, d, len(groups), f.METRIC_INNER_PRODUCT)
        ivf.is_trained = True
        ivf.add(cents)
        ivf.nprobe = min(near, len(groups))
        _, lab = ivf.search(x, 1)
        lab = torch.from_numpy(lab[:, 0])
        ok = lab >= 0  # -1: no centroid under any of the vector's nearest groups
        sums = torch.zeros(cents.shape, dtype=torch.float32)
        sums.index_add_(0, lab[ok], xt[ok] if not bool(ok.all()) else xt)
        sums = sums.numpy()
        norm = np.linalg.norm(sums, axis=1, keepdims=True)
        moved = norm[:, 0] > 0
        cents = cents.copy()
        cents[moved] = sums[moved] / norm[moved]
        del ivf, q
        if on_progress:
            on_progress(Progress("refine lists", r + 1, rounds, "rounds"))
    return cents


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
