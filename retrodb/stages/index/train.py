"""Step 1: train the empty index on a uniform random sample of the keys.

The sample is gathered shard by shard from the memory-mapped key shards. The coarse
k-means is spherical (the keys are unit vectors, so the centroids stay on the sphere
where inner product is cosine). A trained index is reused by later runs; asking for a
different one is refused, not silently mixed.
"""

from __future__ import annotations

import time

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.faults import point
from ...core.manifest import Manifest, entry_records, file_record
from ...core.progress import Progress, ProgressFn
from ...core.util import parse_size
from ...stores.vectors import EmbeddingStore
from .config import MIN_POINTS_PER_CENTROID, TRAINED, IndexConfig, IndexResult
from .factory import (choose_factory, describe, faiss, faiss_message, make_index,
                      min_train_points)
from .kmeans import coarse_method, train_coarse

# 2: trained by this release (its rule, two-level k-means, fast-scan search). An index
# without it was built by an earlier release: still searched, noted as such.
LAYOUT = 2


def pretransformed(index) -> bool:
    f = faiss()
    return isinstance(f.downcast_index(index), f.IndexPreTransform)


def check_normalised(store: EmbeddingStore, sample: np.ndarray) -> None:
    """Inner product is cosine only for unit vectors: refuse anything else."""
    if not store.normalized:
        raise RetrodbError(
            f"{store.db.config_file}: the embedder is not marked normalize=true; the "
            "index uses inner product, which equals cosine only for L2-normalised keys; "
            "re-embed with normalisation (`retrodb embed` does by default)")
    norms = np.linalg.norm(sample, axis=1)
    off = np.abs(norms - 1) > 1e-2  # float16 rounding moves norms by ~1e-3
    if off.any():
        raise RetrodbError(
            f"{store.db.embeddings}: {int(off.sum())} of {len(sample)} sampled keys are "
            f"not unit length (norms {norms.min():.3f}..{norms.max():.3f}); inner product "
            "is then not cosine: re-embed with normalisation")


def gather(store: EmbeddingStore, ids: np.ndarray, on_progress: ProgressFn | None
           ) -> np.ndarray:
    """float32 rows of sorted `ids`, gathered shard by shard."""
    out = np.empty((len(ids), store.dim), dtype=np.float32)
    bounds = np.searchsorted(ids, np.r_[store.first_ids, store.n])
    for s in range(len(store.entries)):
        lo, hi = bounds[s], bounds[s + 1]
        if hi > lo:
            out[lo:hi] = store.shard(s)[ids[lo:hi] - store.first_ids[s]]
        if on_progress:
            on_progress(Progress("read sample", int(hi), len(ids), "vectors"))
    return out


def embedder_key(store: EmbeddingStore) -> dict:
    spec = store.config.get("embedder") or {}
    return {k: spec.get(k) for k in ("name", "dim", "pooling", "normalize",
                                     "tokenizer_sha256")}


def reuse_trained(db: Database, store: EmbeddingStore, cfg: IndexConfig, t: dict,
                  result: IndexResult) -> dict:
    """Check a trained index against this request and the current keys."""
    d = db.index
    if cfg.factory is not None and cfg.factory != t["factory"]:
        raise RetrodbError(f"{d}: trained with --factory {t['factory']!r}, not "
                           f"{cfg.factory!r}; remove {d} to build another index, or drop "
                           "--factory to keep this one")
    if cfg.train_size is not None and cfg.train_size != t["train_size"]:
        raise RetrodbError(f"{d}: trained on --train-size {t['train_size']}, not "
                           f"{cfg.train_size}; remove {d} to retrain")
    if t["dim"] != store.dim:
        raise RetrodbError(f"{d / TRAINED}: dimension {t['dim']}, the embeddings have "
                           f"{store.dim} ({store.entries[0]['file']}); the embeddings "
                           f"changed since training: remove {d} and rerun `retrodb index`")
    if t.get("embedder") != embedder_key(store):
        raise RetrodbError(f"{d / TRAINED}: trained on keys of embedder "
                           f"{t.get('embedder')!r}, the database's embedder is now "
                           f"{embedder_key(store)!r}; remove {d} and rerun `retrodb index`")
    result.factory, result.chosen_by = t["factory"], t["chosen_by"]
    result.train_size = t["train_size"]
    if t.get("layout") != LAYOUT:
        result.notes.append(f"{d}: built by an earlier retrodb ({t['factory']}); it is "
                            "still searched as it is; `retrodb index --rebuild` builds "
                            "the current default (4-bit fast-scan codes: faster search)")
    if t["chosen_by"] != "--factory" and store.n > 10 * t["vectors"]:
        result.notes.append(f"the index was chosen for {t['vectors']:,} vectors and now "
                            f"holds {store.n:,}; remove {d} and rerun to choose a larger one")
    return t


def sample_size(cfg: IndexConfig, store: EmbeddingStore, info: dict, factory: str) -> int:
    """Training vectors: --train-size, else 100 per list and 256 per PQ centroid; checked
    against faiss's minimum and the memory budget."""
    need = min_train_points(info)
    size = cfg.train_size
    if size is None:
        size = min(store.n, max(100 * info["nlist"], 256 * info["pq_ksub"]))
    size = min(size, store.n)
    if size < need:
        what = f"{info['nlist']} lists" if info["nlist"] * 39 == need else \
            f"{info['pq_ksub']} codebook centroids"
        raise RetrodbError(
            f"--factory {factory!r}: faiss needs at least {MIN_POINTS_PER_CENTROID} × "
            f"{what} = {need:,} training vectors, the sample has {size:,} (of {store.n:,} "
            f"embeddings); use fewer lists (e.g. IVF{max(1, store.n // 39 // 2)}) or a "
            f"smaller codebook, or a larger --train-size / more data")
    if size * store.dim * 4 > parse_size(cfg.memory_budget, "--memory-budget"):
        raise RetrodbError(
            f"--train-size {size:,}: the float32 sample takes "
            f"{size * store.dim * 4 / 2**30:.1f} GiB, over --memory-budget "
            f"{cfg.memory_budget}; lower --train-size (≥ {need:,}) or raise the budget")
    return size


def forget(m: Manifest) -> None:
    """Remove the trained index, every part and the merged index (--rebuild)."""
    for e in list(m.shards):
        for rec in entry_records(e):
            m.path_of(rec["file"]).remove()
        m.drop(e["shard"])
    t, merged = m.data.get("trained"), m.data.get("merged")
    m.record(None, trained=None, merged=None, recall=None)
    for rec in ([t] if t else []) + ([merged, merged["ivfdata"]] if merged else []):
        m.path_of(rec["file"]).remove()


def train(db: Database, store: EmbeddingStore, cfg: IndexConfig, result: IndexResult,
          on_progress: ProgressFn | None) -> dict:
    """The trained index's record: reused when there is one, else trained now."""
    m = Manifest(db.index, "index")
    if cfg.rebuild:
        if cfg.factory is not None:
            make_index(cfg.factory, store.dim)  # a bad factory is refused before removing
        forget(m)
    t = m.data.get("trained")
    if t is not None and not m.bad_files(t, "size"):
        return reuse_trained(db, store, cfg, t, result)
    t0 = time.time()
    if cfg.factory is not None:
        factory, chosen_by = cfg.factory, "--factory"
    else:
        factory, chosen_by = choose_factory(store.n, store.dim, cfg.memory_budget,
                                            cfg.max_code_bytes, cfg.chooser)
    index = make_index(factory, store.dim)
    info = describe(index)
    method = coarse_method(cfg.kmeans, info["nlist"])
    if method != "flat" and pretransformed(index):
        if cfg.kmeans != "auto":
            raise RetrodbError(f"--kmeans {method}: only for factories without a "
                               f"transform before the IVF layer ({factory!r} has one, "
                               "e.g. OPQ); use --kmeans flat or auto")
        method = "flat"  # two-level clusters raw keys; OPQ rotates them first
    size = sample_size(cfg, store, info, factory)
    x = gather(store, store.sample_ids(size, cfg.seed), on_progress)
    check_normalised(store, x)
    train_coarse(index, x, method, cfg.seed, on_progress)
    if on_progress:
        on_progress(Progress("train", 0, size, "vectors"))
    try:
        index.train(x)
    except RuntimeError as e:  # pragma: no cover - faiss errors we did not foresee
        raise RetrodbError(f"--factory {factory!r}: faiss could not train it "
                           f"({faiss_message(e)})") from None
    del x
    if on_progress:
        on_progress(Progress("train", size, size, "vectors"))
    loc = db.index / TRAINED
    with loc.writing() as tmp:
        faiss().write_index(index, str(tmp))
    t = {**file_record(loc, TRAINED), "factory": factory, "chosen_by": chosen_by,
         "metric": "inner_product", "dim": store.dim, "train_size": size,
         "vectors": store.n, "seed": cfg.seed, "memory_budget": cfg.memory_budget,
         "embedder": embedder_key(store), "seconds": round(time.time() - t0, 3),
         "kmeans": method, "layout": LAYOUT, **info}
    # A new trained index makes every part and merge from an older one meaningless.
    for e in list(m.shards):
        for rec in entry_records(e):
            m.path_of(rec["file"]).remove()
        m.drop(e["shard"])
    point("index.trained")  # the file is in place; the manifest does not name it yet
    m.record(None, trained=t, merged=None, recall=None, format_faiss=faiss().__version__)
    result.trained = True
    result.factory, result.chosen_by, result.train_size = factory, chosen_by, size
    result.seconds["train"] = t["seconds"]
    return t
