"""`retrodb verify`: check a database against its manifests and recompute a sample.

Three kinds of check, cheapest first:
  1. manifests against files: every shard exists with its size and sha256, its row
     count and id range agree with the Parquet/npy metadata, ids are dense;
  2. across stages: every derived shard (keys, tokens, index parts, neighbours) was
     computed from the current version of its input shard; the merged index holds
     exactly the current keys;
  3. recomputation: a random sample of chunk shards is re-chunked from the recorded
     inputs (found under --root) and a sample of neighbour shards searched again,
     through the stages' own code, and compared byte for byte.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest, entry_records
from ..exec.runner import recompute
from ..exec.stage import Task


@dataclass
class Finding:
    level: str  # "error": data is wrong or missing; "warning": will be redone
    stage: str
    message: str


@dataclass
class VerifyReport:
    findings: list[Finding] = field(default_factory=list)
    checked_files: int = 0
    recomputed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)

    def add(self, level: str, stage: str, message: str) -> None:
        self.findings.append(Finding(level, stage, message))


# stages derived one-to-one from chunk shards
DERIVED = ("embeddings", "tokens")


def verify(db, sample: float = 0.01, checksums: bool = True, seed: int = 0,
           root: str = ".") -> VerifyReport:
    """Check everything in the database; recompute `sample` of the shards."""
    if not 0 <= sample <= 1:
        raise RetrodbError(f"--sample {sample}: must be a fraction between 0 and 1")
    db = Database(db)
    cfg = db.config()
    rep = VerifyReport()
    tok = db.tokenizer_file
    if not tok.exists() or tok.sha256() != cfg["tokenizer"]["sha256"]:
        rep.add("error", "db", f"{tok}: missing or not the tokenizer recorded in "
                               "retrodb.json; restore it")
    chunks = Manifest(db.chunks, "chunks")
    check_chunks(db, chunks, rep, checksums)
    for name in DERIVED:
        if (db.root / name / "manifest.json").exists():
            check_derived(chunks, Manifest(db.root / name, name), rep, checksums)
    recompute_chunks(db, chunks, sample, seed, root, rep)
    if (db.index / "manifest.json").exists():
        from .verify_sets import check_index

        check_index(db, rep, checksums)
    from ..query.info import neighbour_sets
    from .verify_sets import check_neighbours

    for d in neighbour_sets(db):
        check_neighbours(db, d, rep, checksums, sample, seed)
    return rep


def check_files(m: Manifest, rep: VerifyReport, stage: str, checksums: bool) -> set[int]:
    """Size/sha256 of every file of every entry; returns the shards that are bad."""
    bad = set()
    listing = m.listing()
    for e in m.shards:
        for rec in entry_records(e):
            loc = m.path_of(rec["file"])
            rep.checked_files += 1
            st = listing.get(loc.name) if "/" not in rec["file"] else loc.stat()
            if st is None:
                rep.add("error", stage, f"{loc}: missing (shard {e['shard']}); rerun the "
                                        "stage to recompute it")
            elif st.size != rec["bytes"]:
                rep.add("error", stage, f"{loc}: {st.size} bytes, manifest says "
                                        f"{rec['bytes']} (truncated?); rerun the stage")
            elif checksums and loc.sha256() != rec["sha256"]:
                rep.add("error", stage, f"{loc}: sha256 differs from the manifest "
                                        "(corrupt); rerun the stage")
            else:
                continue
            bad.add(e["shard"])
    recorded = {Path(r["file"]).name for e in m.shards for r in entry_records(e)}
    for name in sorted(listing):
        if name[:1].isdigit() and name not in recorded:
            rep.add("warning", stage, f"{m.directory / name}: not in the manifest (a run "
                                      "stopped before recording it); the next run redoes it")
    return bad


def check_chunks(db: Database, m: Manifest, rep: VerifyReport, checksums: bool) -> None:
    import pyarrow.parquet as pq

    if not m.shards:
        rep.add("warning", "chunks", f"{db.chunks}: no chunk shards yet")
        return
    bad = check_files(m, rep, "chunks", checksums)
    next_id, next_doc = 0, 0
    for i, e in enumerate(sorted(m.shards, key=lambda x: x["shard"])):
        if e["shard"] != i:
            rep.add("error", "chunks", f"shard {i} is missing from the manifest "
                                       f"(next is {e['shard']})")
        if e["first_id"] != next_id:
            rep.add("error", "chunks", f"shard {e['shard']}: first_id {e['first_id']}, "
                                       f"expected {next_id} (ids must be dense)")
        next_id = e["first_id"] + e["rows"]
        if e["docs"]:
            if e["first_doc_id"] != next_doc:
                rep.add("error", "docs", f"docs shard {e['shard']}: first doc id "
                                         f"{e['first_doc_id']}, expected {next_doc}")
            next_doc = e["first_doc_id"] + e["docs"]
        if e["shard"] in bad:
            continue
        loc = m.path_of(e["file"])
        meta = pq.ParquetFile(loc.open()).metadata
        if meta.num_rows != e["rows"]:
            rep.add("error", "chunks", f"{loc}: {meta.num_rows} rows, manifest says "
                                       f"{e['rows']}")
        lo, hi = _id_range(meta)
        if e["rows"] and (lo, hi) != (e["first_id"], e["first_id"] + e["rows"] - 1):
            rep.add("error", "chunks", f"{loc}: chunk ids {lo}..{hi}, manifest says "
                                       f"{e['first_id']}..{e['first_id'] + e['rows'] - 1}")
    if m.data.get("cursor") is not None or m.data.get("plan") is not None:
        rep.add("warning", "chunks", "an interrupted chunk run: rerun the same `retrodb "
                                     "chunk` command to finish it")


def _id_range(meta) -> tuple[int, int]:
    col = meta.schema.to_arrow_schema().get_field_index("chunk_id")
    lo, hi = None, None
    for rg in range(meta.num_row_groups):
        st = meta.row_group(rg).column(col).statistics
        if st is None or not st.has_min_max:
            return -1, -1
        lo = st.min if lo is None else min(lo, st.min)
        hi = st.max if hi is None else max(hi, st.max)
    return lo, hi


def check_derived(chunks: Manifest, m: Manifest, rep: VerifyReport, checksums: bool) -> None:
    import numpy as np

    stage = m.stage
    bad = check_files(m, rep, stage, checksums)
    for c in chunks.shards:
        e = m.entry(c["shard"])
        if e is None:
            rep.add("warning", stage, f"chunk shard {c['shard']} has no {stage} shard yet; "
                                      f"run the {stage} stage")
            continue
        loc = m.path_of(e["file"])
        if e.get("source_sha256") != c["sha256"]:
            rep.add("error", stage, f"{loc}: computed from an older chunk shard "
                                    f"{c['shard']}; rerun the {stage} stage")
        if (e["first_id"], e["rows"]) != (c["first_id"], c["rows"]):
            rep.add("error", stage, f"{loc}: rows {e['first_id']}+{e['rows']} do not "
                                    f"match chunk shard {c['shard']}")
        if e["shard"] not in bad and e["rows"]:
            arr = np.load(loc.local(), mmap_mode="r")
            if len(arr) != e["rows"]:
                rep.add("error", stage, f"{loc}: {len(arr)} rows, manifest says "
                                        f"{e['rows']}")
    extra = {e["shard"] for e in m.shards} - {c["shard"] for c in chunks.shards}
    for s in sorted(extra):
        rep.add("error", stage, f"{stage} shard {s} has no chunk shard")


def recompute_chunks(db: Database, m: Manifest, sample: float, seed: int, root: str,
                     rep: VerifyReport) -> None:
    """Re-chunk a sample of shards from their recorded inputs; compare every byte."""
    from ..stages.chunk.config import ChunkConfig
    from ..stages.chunk.stage import ChunkStage

    shards = [e["shard"] for e in m.shards]
    if not shards or sample <= 0:
        return
    cfg = db.config()
    stage = ChunkStage(db, ChunkConfig(root=root), cfg["chunk_size"], cfg["token_dtype"],
                       [])
    n = max(1, round(sample * len(shards)))
    for s in sorted(random.Random(seed).sample(shards, n)):
        e = m.entry(s)
        if "split" not in e:
            rep.add("warning", "chunks", f"shard {s} not recomputed: made by an earlier "
                                         "retrodb (format 1)")
            continue
        task = Task(s, {"pieces": e["split"]["pieces"], "made_with": e["made_with"],
                        "split_id": e["split_id"]}, offsets=stage.offsets_of(e))
        with tempfile.TemporaryDirectory() as tmp:
            try:
                got = recompute(stage, task, Path(tmp))
            except RetrodbError as err:
                rep.add("warning", "chunks", f"shard {s} not recomputed: {err}")
                continue
        for rec in entry_records(e):
            if got.get(rec["file"]) != rec["sha256"]:
                rep.add("error", "chunks", f"{m.path_of(rec['file'])}: recomputed from its "
                                           "inputs it differs from the stored shard")
        rep.recomputed.append(f"chunks/{e['file']}")
