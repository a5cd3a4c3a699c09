"""The index stage: keys → a faiss IVF index with on-disk inverted lists.

    config   options, file names, the result
    factory  choosing (autofaiss) and building (faiss) the empty index
    train    step 1: train on a uniform sample of the keys
    add      step 2: one part per key shard, in parallel (a Stage)
    merge    step 3: merge the parts into on-disk lists (a new generation)
    recall   recall against exact search; the operating point
    build    the entry points (all steps, or each alone) and the summary

Layout (all written atomically; the manifest names what is current):

    DB/index/manifest.json        "trained", "merged", "recall" records, one entry per part
    DB/index/trained.faiss        the trained, empty index (faiss's own format)
    DB/index/00000.invlists       part of key shard 0: bare inverted lists
    DB/index/merged.<g>.faiss     the merged index of generation g (quantizer, OPQ, ...)
    DB/index/merged.<g>.ivfdata   its inverted lists (codes + ids), memory-mapped
"""

from .build import add_parts, build_index, index_summary, merge_index, train_index
from .config import IndexConfig, IndexResult
from .factory import choose_factory, make_index
from .recall import exact_search, measure_recall, recall_at

__all__ = ["IndexConfig", "IndexResult", "add_parts", "build_index", "choose_factory",
           "exact_search", "index_summary", "make_index", "measure_recall", "merge_index",
           "recall_at", "train_index"]
