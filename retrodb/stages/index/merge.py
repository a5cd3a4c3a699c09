"""Step 3: merge every part into one index whose inverted lists live in a file.

The merge streams the lists from the memory-mapped parts and never holds them in RAM:
4-bit PQ lists are written packed for fast-scan search (`packed.py`), other codes as
they are by `OnDiskInvertedLists.merge_from_multiple`. A merged index in an earlier
layout is merged again (the parts are kept; nothing is retrained). Each merge writes
a new generation (`merged.<g>.faiss` + `merged.<g>.ivfdata`) and switches the manifest
to it, so a reader never sees a half-written index; then recall is measured against
exact search and the operating point chosen (`recall.py`).
"""

from __future__ import annotations

import time

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.faults import point
from ...core.manifest import Manifest, file_record
from ...core.progress import Progress, ProgressFn
from ...core.storage import sha256_file
from ...core.util import quiet_c_stdout, ranges
from ...stores.searcher import FAST_SCAN, merged_ok, packable
from ...stores.vectors import EmbeddingStore
from .config import TRAINED, IndexConfig, IndexResult
from .factory import faiss, read_index
from .packed import write_packed
from .recall import measure_recall


def merge(db: Database, store: EmbeddingStore, cfg: IndexConfig, result: IndexResult,
          on_progress: ProgressFn | None) -> None:
    """Merge the current parts (unless the merged index has exactly them); measure
    recall (unless measured with these settings)."""
    m = Manifest(db.index, "index")
    t = m.data.get("trained")
    if t is None:
        raise RetrodbError(f"{db.index}: no trained index; run `retrodb index --db "
                           f"{db.root}` first")
    parts = {e["shard"]: e for e in m.shards}
    listing = m.listing()
    missing = [e["shard"] for e in store.entries
               if e["shard"] not in parts
               or parts[e["shard"]].get("source_sha256") != e["sha256"]
               or parts[e["shard"]].get("trained_sha256") != t["sha256"]
               or m.bad_files(parts[e["shard"]], "size", listing)]
    if missing:
        raise RetrodbError(f"{db.index}: no current part for embedding shard(s) "
                           f"{ranges(missing)}; run `retrodb index add --db {db.root}` "
                           "first")
    want = [{"shard": e["shard"], "sha256": parts[e["shard"]]["sha256"]}
            for e in store.entries]
    merged = m.data.get("merged")
    current = merged is not None and merged.get("parts") == want and merged_ok(m, merged)
    if current and merged.get("format") != FAST_SCAN \
            and packable(read_index((db.index / TRAINED).local())):
        current = False  # 4-bit lists of an earlier release, plain: packed now
        result.notes.append(f"{m.path_of(merged['file'])}: merged again as fast-scan "
                            "lists (it was merged by an earlier retrodb in the plain "
                            "layout); the parts were kept, nothing was retrained")
    if current:
        result.ntotal = merged["ntotal"]
    else:
        merged = merge_parts(db, m, [parts[p["shard"]] for p in want], want, on_progress)
        result.merged = True
        result.ntotal = merged["ntotal"]
        result.seconds["merge"] = merged["seconds"]
    result.factory, result.chosen_by = t["factory"], t["chosen_by"]
    result.train_size = t["train_size"]
    rec = m.data.get("recall")
    want_rec = recall_settings(cfg, merged)
    if rec is None or {k: rec.get(k) for k in want_rec} != want_rec:
        t0 = time.time()
        rec = {**want_rec, **measure_recall(db, store, cfg, on_progress)}
        rec["seconds"] = round(time.time() - t0, 3)
        m.record(None, recall=rec)
        result.seconds["recall"] = rec["seconds"]
    result.recall = rec


def recall_settings(cfg: IndexConfig, merged: dict) -> dict:
    return {"merged": merged["file"], "k": cfg.k, "queries": cfg.recall_queries,
            "seed": cfg.seed, "target": cfg.target_recall,
            "candidates": list(cfg.candidates), "max_nprobe": cfg.max_nprobe}


def _open_parts(db: Database, m: Manifest, ivf, entries: list[dict]):
    """The parts' inverted lists, memory-mapped (the readers must outlive the merge)."""
    f = faiss()
    lists = f.InvertedListsPtrVector()
    keep = []
    for e in entries:
        loc = m.path_of(e["file"])
        reader = f.FileIOReader(str(loc.local()))
        il = f.read_InvertedLists(reader, f.IO_FLAG_MMAP)
        if il.nlist != ivf.nlist or il.code_size != ivf.code_size:
            raise RetrodbError(f"{loc}: {il.nlist} lists of {il.code_size} B, the trained "
                               f"index has {ivf.nlist} of {ivf.code_size} B; rerun "
                               "`retrodb index add`")
        keep.append((reader, il))
        lists.push_back(il)
    return lists, keep


def write_plain(index, lists, ivf_tmp, ivf_name: str, idx_tmp) -> int:
    """The parts' lists merged as they are (codes other than 4-bit PQ)."""
    f = faiss()
    ivf = f.extract_index_ivf(index)
    ondisk = f.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivf_tmp))
    with quiet_c_stdout():
        ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False, False)
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # the index owns the lists now
    index.ntotal = ivf.ntotal = ntotal
    # The lists' file name without its directory: readers open it next to the index
    # (IO_FLAG_ONDISK_SAME_DIR), so a database can be moved or copied, and the merged
    # index is the same bytes wherever it was built.
    ondisk.filename = ivf_name
    f.write_index(index, str(idx_tmp))
    return int(ntotal)


def merge_parts(db: Database, m: Manifest, entries: list[dict], want: list[dict],
                on_progress: ProgressFn | None) -> dict:
    """Write generation g+1 of the merged index; switch the manifest to it; drop g."""
    f = faiss()
    t0 = time.time()
    old = m.data.get("merged")
    gen = (old or {}).get("generation", 0) + 1
    ivf_loc, idx_loc = db.index / f"merged.{gen}.ivfdata", db.index / f"merged.{gen}.faiss"
    index = read_index((db.index / TRAINED).local())
    ivf = f.extract_index_ivf(index)
    if on_progress:
        on_progress(Progress("merge", 0, len(entries), "parts"))
    lists, keep = _open_parts(db, m, ivf, entries)
    packed = packable(index)
    with ivf_loc.writing() as ivf_tmp, idx_loc.writing() as idx_tmp:
        if packed:
            ntotal = write_packed(index, [lists.at(i) for i in range(lists.size())],
                                  ivf_tmp, ivf_loc.name, idx_tmp, on_progress)
        else:
            ntotal = write_plain(index, lists, ivf_tmp, ivf_loc.name, idx_tmp)
        if on_progress:
            on_progress(Progress("merge", len(entries), len(entries), "parts"))
        expected = sum(e["rows"] for e in entries)
        if ntotal != expected:  # pragma: no cover - a faiss contract
            raise RetrodbError(f"{ivf_loc}: merged {ntotal} vectors, parts hold {expected}")
        del index, ivf, keep, lists  # unmap the parts and the on-disk lists
        ivf_digest, idx_digest = sha256_file(ivf_tmp), sha256_file(idx_tmp)
        point("index.merge")  # lists on disk, the merged index not yet named
    merged = {**file_record(idx_loc, idx_loc.name, idx_digest),
              "ivfdata": file_record(ivf_loc, ivf_loc.name, ivf_digest),
              "generation": gen, "ntotal": int(ntotal), "parts": want,
              "seconds": round(time.time() - t0, 3)}
    if packed:
        merged["format"] = FAST_SCAN
    merged["extra"] = [merged["ivfdata"]]
    m.record(None, merged=merged, recall=None)
    if old is not None:  # readers that opened it keep their mapping until they close
        for name in (old["file"], old["ivfdata"]["file"]):
            m.path_of(name).remove()
    return merged
