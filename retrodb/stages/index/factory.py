"""Choosing and building the empty faiss index, and the faiss facts retrodb relies on.

Without `--factory`, retrodb's rule chooses (`rule_factory`): IVF lists ~4√n (an HNSW
coarse quantizer from 8,192 lists) and 4-bit PQ codes of d/8 bytes, which the merge
writes in faiss's fast-scan layout (benchmarks/bench_search.py measures it against
ScaNN, HNSW and the other faiss layouts). `--chooser autofaiss` asks autofaiss's
`get_optimal_index_keys_v2` instead, for the vector count and the memory budget (its
own builder breaks on faiss ≥ 1.14.2, so faiss builds the index). Any `--factory` must
have an IVF layer with plain inverted lists: the lists are what is sharded per part and
merged on disk.
"""

from __future__ import annotations

import re

import numpy as np

from ...core.errors import RetrodbError
from ...core.util import parse_size
from ...stores.searcher import faiss, read_index  # noqa: F401 - the stage's faiss
from .config import MIN_POINTS_PER_CENTROID


def faiss_message(e: Exception) -> str:
    """The human part of a faiss C++ exception ('Error in ... at file:line: msg')."""
    text = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    m = re.search(r"Error in .*? at \S+:\d+: (.*)", str(e), re.S)
    return (m.group(1).strip() if m else text)[:300]


def describe(index) -> dict:
    """Facts about a (trained) faiss index that retrodb relies on."""
    faiss_ = faiss()
    ivf = faiss_.extract_index_ivf(index)
    sub = faiss_.downcast_index(ivf)
    pq = getattr(sub, "pq", None)
    ksubs = [int(pq.ksub)] if pq is not None else []
    if isinstance(faiss_.downcast_index(index), faiss_.IndexPreTransform):
        pt = faiss_.downcast_index(index)
        for i in range(pt.chain.size()):
            vt = faiss_.downcast_VectorTransform(pt.chain.at(i))
            if isinstance(vt, faiss_.OPQMatrix):
                ksubs.append(256)  # OPQ trains its own 8-bit PQ
    q = faiss_.downcast_index(ivf.quantizer)
    return {"nlist": int(ivf.nlist), "code_size": int(ivf.code_size), "dim": int(index.d),
            "ivf_class": type(sub).__name__, "quantizer": type(q).__name__,
            "pq_ksub": max(ksubs) if ksubs else 0,
            "bytes_per_vector": int(ivf.code_size) + 8}


def min_train_points(info: dict) -> int:
    """Training vectors faiss needs: 39 per centroid of the largest k-means it runs (one
    list and no codebook train on any number)."""
    largest = max(info["nlist"], info["pq_ksub"], 1)
    return 1 if largest == 1 else MIN_POINTS_PER_CENTROID * largest


HNSW_FROM_LISTS = 8192  # an HNSW coarse quantizer from this many lists on


def rule_factory(n: int, dim: int, max_code_bytes: int = 64) -> tuple[str, str]:
    """retrodb's rule: (factory, how) for `n` unit vectors of dimension `dim`.

    Lists: the power of two nearest 4√n (the faiss guidelines' range for 1M-1B
    vectors), with at least 39 training vectors each; HNSW32 finds the nearest lists
    from 8,192 lists on (below, a flat scan of the centroids is as fast and exact:
    measured on 1,000 real queries, 1 thread, flat 18-42 ms at 2,048 centroids, 33-70
    ms at 4,096, HNSW 30-33 ms at both; from 8,192 HNSW is ahead). Codes: 4-bit PQ with one sub-quantizer per 4 dimensions
    (d/8 bytes: 48 B for 384-d), at most `max_code_bytes`: 4-bit codes are what
    fast-scan searches 32 at a time in SIMD registers, and re-ranking with the exact
    keys makes up for their coarseness. Below 39 × 16 vectors (too few to train a 4-bit
    codebook) the lists hold the float32 vectors themselves (Flat): exact and small."""
    nlist = 2 ** max(0, round(np.log2(max(1.0, 4 * np.sqrt(n)))))
    cap = 2 ** int(np.floor(np.log2(max(n // MIN_POINTS_PER_CENTROID, 1))))
    nlist = max(1, min(nlist, cap))
    coarse = f"IVF{nlist}_HNSW32" if nlist >= HNSW_FROM_LISTS else f"IVF{nlist}"
    limit = min(max(2, dim // 4), 2 * max_code_bytes)
    m = max([x for x in range(2, limit + 1, 2) if dim % x == 0] or [1])
    if n < MIN_POINTS_PER_CENTROID * 16:
        return f"{coarse},Flat", (f"retrodb rule for {n} vectors of dimension {dim}: "
                                  f"{nlist} lists (~4√n), float32 vectors (too few to "
                                  "train 4-bit codes)")
    factory = f"{coarse},PQ{m}x4"
    return factory, (f"retrodb rule for {n} vectors of dimension {dim}: {nlist} lists "
                     f"(~4√n), {m}×4-bit codes ({m // 2} B, fast-scan)")


def choose_factory(n: int, dim: int, budget: str, max_code_bytes: int = 64,
                   chooser: str = "rule") -> tuple[str, str]:
    """(factory string, how it was chosen) for `n` vectors of `dim` under `budget`:
    retrodb's rule, or (chooser "autofaiss") autofaiss's choice, below.

    autofaiss's `get_optimal_index_keys_v2` with `should_be_memory_mappable` (an IVF:
    the lists are what retrodb merges on disk) and quantization forced
    (`ivf_flat_threshold=0`): IVF-Flat would store the float32 vectors again, and the
    exact vectors are already on disk as float16 for re-ranking. The budget it gets is
    at most `max_code_bytes` + 8 (the id) per vector: autofaiss then proposes the
    largest PQ code under that. autofaiss only picks parameters here; faiss builds the
    index (autofaiss's own builder breaks on faiss ≥ 1.14.2, see DESIGN.md).
    """
    budget_b = parse_size(budget, "--memory-budget")
    if chooser == "rule":
        factory, how = rule_factory(n, dim, max_code_bytes)
        need = n * (max_code_bytes + 8)
        if need > budget_b:
            raise RetrodbError(f"--memory-budget {budget}: {n:,} vectors need ~{need:,} "
                               "B of codes and ids to search in RAM; raise it")
        return factory, how
    from autofaiss.external.optimize import get_optimal_index_keys_v2

    # 1% slack: autofaiss compares compression ratios, and equality must pass
    capped = min(budget_b, int(n * (max_code_bytes + 8) * 1.01))
    keys = get_optimal_index_keys_v2(n, dim, f"{capped}B", should_be_memory_mappable=True,
                                     ivf_flat_threshold=0)
    if not keys:
        smallest = 4 + 8  # autofaiss's smallest candidate: PQ4 codes + 8-byte ids
        raise RetrodbError(
            f"--memory-budget {budget}: too small for {n:,} vectors of dimension {dim}; the "
            f"most compressed index autofaiss proposes needs ~{smallest} B/vector "
            f"(~{smallest * n / 2**30:.1f} GiB); raise --memory-budget or give --factory")
    key = keys[0]
    how = f"autofaiss get_optimal_index_keys_v2({n}, {dim}, {budget}" + \
        (f", codes ≤ {max_code_bytes} B)" if capped < budget_b else ")")
    # autofaiss sizes lists by √n but does not check the training sample; keep
    # 39 points per list so that faiss's k-means is well posed.
    m = re.search(r"IVF(\d+)", key)
    if m and MIN_POINTS_PER_CENTROID * int(m.group(1)) > n:
        nlist = max(1, 2 ** int(np.floor(np.log2(max(n // MIN_POINTS_PER_CENTROID, 1)))))
        key = key.replace(m.group(0), f"IVF{nlist}", 1)
        how += f", lists lowered to {nlist} for {n} training vectors"
    return key, how


def make_index(factory: str, dim: int):
    """An untrained inner-product index from a factory string, checked for retrodb."""
    faiss_ = faiss()
    try:
        index = faiss_.index_factory(dim, factory, faiss_.METRIC_INNER_PRODUCT)
    except (RuntimeError, ValueError, TypeError) as e:
        raise RetrodbError(
            f"--factory {factory!r}: faiss rejects it ({faiss_message(e)}); give a faiss "
            "index_factory string such as IVF1024,PQ32 or OPQ32_128,IVF65536_HNSW32,PQ32"
        ) from None
    try:
        ivf = faiss_.extract_index_ivf(index)
    except RuntimeError:
        raise RetrodbError(
            f"--factory {factory!r}: not an IVF index; retrodb shards and merges inverted "
            "lists on disk, so it needs an IVF layer, e.g. IVF1024,PQ32 or "
            "IVF16384_HNSW32,PQ64") from None
    lists = type(faiss_.downcast_InvertedLists(ivf.invlists)).__name__
    if lists != "ArrayInvertedLists":
        raise RetrodbError(
            f"--factory {factory!r}: its inverted lists ({lists}, e.g. fast-scan 'fs' "
            "codes) cannot be sharded and merged on disk; give plain 4-bit PQ codes "
            "instead (e.g. PQ48x4 for PQ48x4fs): retrodb searches them fast-scan")
    if ivf.metric_type != faiss_.METRIC_INNER_PRODUCT:  # pragma: no cover - faiss contract
        raise RetrodbError(f"--factory {factory!r}: faiss built a non-inner-product index")
    # Normalised keys: spherical k-means keeps the centroids on the unit sphere, where
    # inner product against them means cosine.
    ivf.cp.spherical = True
    sub = faiss_.downcast_index(ivf)
    if isinstance(sub, faiss_.IndexIVFPQ):
        # Polysemous training reorders PQ centroids for Hamming-distance filtering,
        # which retrodb's searches never use; it costs most of a small index's training
        # time (0.6 of 0.7 s for IVF8,PQ8x4 on 874 vectors).
        sub.do_polysemous_training = False
    return index
