"""`retrodb verify` of the index and the neighbour sets (see verify.py)."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest, entry_records
from ..exec.runner import recompute
from ..exec.stage import Task
from .verify import VerifyReport, check_files


def check_index(db: Database, rep: VerifyReport, checksums: bool) -> None:
    """Parts and the merged index against their files; every key in the merged index."""
    from ..stages.neighbours.checks import index_identity
    from ..stores.vectors import EmbeddingStore

    m = Manifest(db.index, "index")
    check_files(m, rep, "index", checksums)
    for key in ("trained", "merged"):
        e = m.data.get(key)
        if e is None:
            rep.add("warning", "index", f"no {key} index yet; run `retrodb index`")
            return
        for rec in entry_records(e):
            loc = m.path_of(rec["file"])
            st = loc.stat()
            rep.checked_files += 1
            if st is None or st.size != rec["bytes"] or \
                    (checksums and loc.sha256() != rec["sha256"]):
                rep.add("error", "index", f"{loc}: missing, truncated or changed since it "
                                          "was written; rerun `retrodb index`")
    try:
        index_identity(db, EmbeddingStore(db))
    except RetrodbError as e:
        rep.add("error", "index", str(e))


def check_neighbours(db: Database, d, rep: VerifyReport, checksums: bool,
                     sample: float, seed: int) -> None:
    """A neighbour set: files, id ranges, neighbour ids inside the database, the index
    it was searched in; a sample of shards recomputed and compared byte for byte."""
    import numpy as np
    import pyarrow.parquet as pq

    stage = f"neighbours/{d.name}"
    m = Manifest(d, "neighbours")
    bad = check_files(m, rep, stage, checksums)
    n_db = Manifest(db.chunks, "chunks").rows
    for e in m.shards:
        if e["shard"] in bad:
            continue
        loc = m.path_of(e["file"])
        t = pq.read_table(loc.open(), columns=["chunk_id", "neighbours"])
        ids = t.column("chunk_id").to_numpy()
        if len(ids) != e["rows"] or (len(ids) and (ids[0] != e["first_id"] or
                                                   (np.diff(ids) != 1).any())):
            rep.add("error", stage, f"{loc}: chunk ids do not run from {e['first_id']} "
                                    f"over {e['rows']} rows")
        nb = t.column("neighbours").combine_chunks().flatten().to_numpy()
        if len(nb) and (nb.min() < -1 or nb.max() >= n_db):
            wrong = int(nb.max()) if nb.max() >= n_db else int(nb.min())
            rep.add("error", stage, f"{loc}: neighbour id {wrong} outside the database "
                                    f"(0..{n_db - 1})")
    current = (Manifest(db.index, "index").data.get("merged") or {}).get("sha256")
    old = [e["shard"] for e in m.shards if e.get("index_sha256") != current]
    if old:
        rep.add("warning", stage, f"{len(old)} shard(s) were searched in an older index; "
                                  f"rerun `retrodb neighbours --set {d.name}` to redo them")
    from ..stores.split import load_split

    want = (m.data.get("settings") or {}).get("split")
    have = load_split(db)
    if want is not None and (have is None or want != {"val_fraction": have.val_fraction,
                                                      "seed": have.seed}):
        rep.add("warning", stage, f"built for the split {want}, the database's split.json "
                                  "now differs; rebuild the set (delete it, rerun "
                                  "`retrodb neighbours`)")
        return
    entries = [e for e in m.shards if e.get("index_sha256") == current]
    from ..stages.neighbours.config import SEARCH

    if entries and m.data.get("search") != SEARCH:
        rep.add("warning", stage, "shards not recomputed: computed by an earlier retrodb, "
                                  "whose search ranks differently; rerun `retrodb "
                                  f"neighbours --set {d.name}` in a new set to redo them")
        entries = []
    if sample > 0 and entries:
        try:
            _recompute(db, m, stage, sample, seed, rep, entries)
        except RetrodbError as err:
            rep.add("warning", stage, f"shards not recomputed: {err}")


def _query_db(db: Database, m: Manifest) -> Database | None:
    where = m.data.get("queries_location")
    if (m.data.get("settings") or {}).get("queries") is None:
        return None
    if where is None:
        raise RetrodbError("the set's query database location is not recorded")
    if "://" in where:
        return Database(where)
    return Database(db.root.local() / where)


def _recompute(db: Database, m: Manifest, stage_name: str, sample: float, seed: int,
               rep: VerifyReport, entries: list[dict]) -> None:
    from ..stages.neighbours.config import NeighboursConfig
    from ..stages.neighbours.stage import NeighboursStage
    from ..stores.split import load_split
    from ..stores.vectors import EmbeddingStore

    st = m.data.get("settings") or {}
    qdb = _query_db(db, m)
    qstore = EmbeddingStore(qdb or db)
    shards = [e["shard"] for e in entries]
    n = max(1, round(sample * len(shards)))
    for s in sorted(random.Random(seed).sample(shards, n)):
        e = m.entry(s)
        src = next((x for x in qstore.entries if x["shard"] == s), None)
        if src is None:
            rep.add("error", stage_name, f"{m.path_of(e['file'])}: its query key shard {s} "
                                         "is gone; rerun `retrodb neighbours`")
            continue
        cfg = NeighboursConfig(set=m.directory.name, k=st["k"],
                               exclude_overlap=st.get("exclude_overlap"),
                               exclude_validation=st.get("exclude_validation", True),
                               max_search=st.get("max_search", 4096),
                               candidates=int(e.get("candidates",
                                                    m.data.get("candidates") or 0)))
        stage = NeighboursStage(db, qdb, cfg, bool(st.get("exclude_same_doc")),
                                load_split(db), m.data.get("index") or {}, st,
                                lambda msg: None)
        stage.nprobe = int(e.get("nprobe") or m.data["nprobe"])
        with tempfile.TemporaryDirectory() as tmp:
            got = recompute(stage, Task(s, src), Path(tmp))
        if got.get(e["file"]) != e["sha256"]:
            rep.add("error", stage_name, f"{m.path_of(e['file'])}: recomputed from the "
                                         "index it differs from the stored shard")
        rep.recomputed.append(f"{stage_name}/{e['file']}")
