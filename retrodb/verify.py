"""`retrodb verify`: check a database against its manifests and recompute a sample.

Three kinds of check, cheapest first:
  1. manifests against files: every shard exists with its size and sha256, its row
     count and id range agree with the Parquet/npy metadata, ids are dense;
  2. across stages: every derived shard (embeddings, tokens, ...) was computed from the
     chunk shard of the same number as it is now (source sha256), none is missing;
  3. recomputation: a random sample of chunk shards is re-chunked from the recorded
     inputs and compared byte for byte (as Megatron's validate mode recomputes blocks).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .db import Database
from .errors import RetrodbError
from .runner import Manifest, entry_files
from .storage import sha256_file


@dataclass
class Finding:
    level: str  # "error": data is wrong or missing; "warning": will be redone; "ok"
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


# stages derived one-to-one from chunk shards: directory → (stage name, file suffix)
DERIVED = {"embeddings": ("embeddings", ".npy"), "tokens": ("tokens", ".npy")}


def verify(db_path: str | Path, sample: float = 0.01, checksums: bool = True,
           seed: int = 0) -> VerifyReport:
    """Check everything in the database; recompute `sample` of the chunk shards."""
    if not 0 <= sample <= 1:
        raise RetrodbError(f"--sample {sample}: must be a fraction between 0 and 1")
    db = Database(db_path)
    cfg = db.config()
    rep = VerifyReport()
    tok = db.root / "tokenizer.json"
    if not tok.is_file() or sha256_file(tok) != cfg["tokenizer"]["sha256"]:
        rep.add("error", "db", f"{tok}: missing or not the tokenizer recorded in "
                               "retrodb.json; restore it")
    chunks = Manifest(db.chunks_dir, "chunks")
    _check_chunks(db, chunks, rep, checksums)
    for sub, (stage, suffix) in DERIVED.items():
        if (db.root / sub / "manifest.json").exists():
            _check_derived(db, chunks, Manifest(db.root / sub, stage), suffix, rep, checksums)
    _recompute_chunks(db, chunks, sample, seed, rep)
    if (db.index_dir / "manifest.json").exists():
        _check_index(db, rep, checksums)
    nroot = db.root / "neighbours"
    if nroot.is_dir():
        for d in sorted(p for p in nroot.iterdir() if (p / "manifest.json").is_file()):
            _check_neighbours(db, d, rep, checksums, sample, seed)
    return rep


def _check_index(db: Database, rep: VerifyReport, checksums: bool) -> None:
    """Parts and the merged index against their files; every key in the merged index."""
    from .neighbours import _index_identity
    from .vectors import EmbeddingStore

    m = Manifest(db.index_dir, "index")
    _check_files(m, rep, "index", checksums)
    for key in ("trained", "merged"):
        e = m.data.get(key)
        if e is None:
            rep.add("warning", "index", f"no {key} index yet; run `retrodb index`")
            return
        for name, size, digest in entry_files(e):
            p = m.path_of(name)
            rep.checked_files += 1
            if not p.is_file() or p.stat().st_size != size or \
                    (checksums and sha256_file(p) != digest):
                rep.add("error", "index", f"{p}: missing, truncated or changed since it "
                                          "was written; rerun `retrodb index`")
    try:
        _index_identity(db, EmbeddingStore(db.root))
    except RetrodbError as e:
        rep.add("error", "index", str(e))


def _check_neighbours(db: Database, d: Path, rep: VerifyReport, checksums: bool,
                      sample: float, seed: int) -> None:
    """A neighbour set: files, id ranges, neighbour ids inside the database, the index
    it was searched in; a sample of shards recomputed and compared byte for byte."""
    import numpy as np
    import pyarrow.parquet as pq

    stage = f"neighbours/{d.name}"
    m = Manifest(d, "neighbours")
    bad = _check_files(m, rep, stage, checksums)
    n_db = Manifest(db.chunks_dir, "chunks").rows
    for e in m.shards:
        if e["shard"] in bad:
            continue
        t = pq.read_table(m.path_of(e["file"]), columns=["chunk_id", "neighbours"])
        ids = t.column("chunk_id").to_numpy()
        if len(ids) != e["rows"] or (len(ids) and (ids[0] != e["first_id"] or
                                                   (np.diff(ids) != 1).any())):
            rep.add("error", stage, f"{e['file']}: chunk ids do not run from "
                                    f"{e['first_id']} over {e['rows']} rows")
        nb = t.column("neighbours").combine_chunks().flatten().to_numpy()
        if len(nb) and (nb.min() < -1 or nb.max() >= n_db):
            wrong = int(nb.max()) if nb.max() >= n_db else int(nb.min())
            rep.add("error", stage, f"{e['file']}: neighbour id {wrong} outside the "
                                    f"database (0..{n_db - 1})")
    current = (Manifest(db.index_dir, "index").data.get("merged") or {}).get("sha256")
    old = [e["shard"] for e in m.shards if e.get("index_sha256") != current]
    if old:
        rep.add("warning", stage, f"{len(old)} shard(s) were searched in an older index; "
                                  f"rerun `retrodb neighbours --set {d.name}` to redo them")
    from .split import load_split

    want = (m.data.get("settings") or {}).get("split")
    have = load_split(db.root)
    if want is not None and (have is None or want != {"val_fraction": have.val_fraction,
                                                      "seed": have.seed}):
        rep.add("warning", stage, f"built for the split {want}, the database's split.json "
                                  "now differs; rebuild the set (delete it, rerun "
                                  "`retrodb neighbours`)")
        return
    if sample > 0 and m.shards:
        current_shards = [e for e in m.shards if e.get("index_sha256") == current]
        if current_shards:
            try:
                _recompute_neighbours(db, m, stage, sample, seed, rep, current_shards)
            except RetrodbError as err:
                rep.add("warning", stage, f"shards not recomputed: {err}")


def _recompute_neighbours(db: Database, m: Manifest, stage: str, sample: float, seed: int,
                          rep: VerifyReport, entries: list[dict]) -> None:
    from .neighbours import (NeighboursConfig, _init_worker, _NeighbourShard, _WORKER)
    from .runner import ShardTask

    st = m.data.get("settings") or {}
    qroot = st.get("queries")
    qm = Manifest(Path(qroot or db.root) / "embeddings", "embeddings")
    cfg = NeighboursConfig(set=m.directory.name, k=st["k"],
                           exclude_overlap=st.get("exclude_overlap"),
                           exclude_validation=st.get("exclude_validation", True),
                           max_search=st.get("max_search", 4096),
                           candidates=m.data.get("candidates"))
    shards = [e["shard"] for e in entries]
    n = max(1, round(sample * len(shards)))
    _init_worker(str(db.root), qroot, m.data.get("nprobe"), m.data.get("candidates"), 0)
    try:
        for s in sorted(random.Random(seed).sample(shards, n)):
            e, src = m.entry(s), qm.entry(s)
            if src is None:
                rep.add("error", stage, f"{e['file']}: its query embedding shard {s} is "
                                        "gone; rerun `retrodb neighbours`")
                continue
            cands = int(e.get("candidates", m.data.get("candidates") or 0))
            _WORKER["searcher"].candidates = cands  # the shard's own operating point
            fn = _NeighbourShard(str(db.root), qroot, cfg, bool(st.get("exclude_same_doc")),
                                 e.get("index_sha256", ""), int(e.get("nprobe") or
                                                                m.data["nprobe"]), cands)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / e["file"]
                fn(ShardTask(s, src, out), out)
                if sha256_file(out) != e["sha256"]:
                    rep.add("error", stage, f"{e['file']}: recomputed from the index it "
                                            "differs from the stored shard")
            rep.recomputed.append(f"{stage}/{e['file']}")
    finally:
        _WORKER.clear()


def _check_files(m: Manifest, rep: VerifyReport, stage: str, checksums: bool) -> set[int]:
    """Size/sha256 of every file of every entry; returns the shards that are bad."""
    bad = set()
    for e in m.shards:
        for name, size, digest in entry_files(e):
            p = m.path_of(name)
            rep.checked_files += 1
            if not p.is_file():
                rep.add("error", stage, f"{p}: missing (shard {e['shard']}); rerun the "
                                        "stage to recompute it")
                bad.add(e["shard"])
            elif p.stat().st_size != size:
                rep.add("error", stage, f"{p}: {p.stat().st_size} bytes, manifest says "
                                        f"{size} (truncated?); rerun the stage")
                bad.add(e["shard"])
            elif checksums and sha256_file(p) != digest:
                rep.add("error", stage, f"{p}: sha256 differs from the manifest (corrupt); "
                                        "rerun the stage")
                bad.add(e["shard"])
    recorded = {Path(n).name for e in m.shards for n, _, _ in entry_files(e)}
    for p in sorted(m.directory.glob("[0-9]*.*")):
        if p.name not in recorded:
            rep.add("warning", stage, f"{p}: not in the manifest (a run stopped before "
                                      "recording it); the next run redoes it")
    return bad


def _check_chunks(db: Database, m: Manifest, rep: VerifyReport, checksums: bool) -> None:
    import pyarrow.parquet as pq

    if not m.shards:
        rep.add("warning", "chunks", f"{db.chunks_dir}: no chunk shards yet")
        return
    bad = _check_files(m, rep, "chunks", checksums)
    next_id, next_doc = 0, 0
    for i, e in enumerate(sorted(m.shards, key=lambda x: x["shard"])):
        if e["shard"] != i:
            rep.add("error", "chunks", f"shard {i} is missing from the manifest "
                                       f"(next is {e['shard']})")
        if e["first_id"] != next_id:
            rep.add("error", "chunks", f"shard {e['shard']}: first_id {e['first_id']}, "
                                       f"expected {next_id} (ids must be dense)")
        next_id = e["first_id"] + e["rows"]
        if e["shard"] in bad:
            continue
        meta = pq.ParquetFile(m.path_of(e["file"])).metadata
        if meta.num_rows != e["rows"]:
            rep.add("error", "chunks", f"{e['file']}: {meta.num_rows} rows, manifest says "
                                       f"{e['rows']}")
        lo, hi = _id_range(meta)
        if e["rows"] and (lo, hi) != (e["first_id"], e["first_id"] + e["rows"] - 1):
            rep.add("error", "chunks", f"{e['file']}: chunk ids {lo}..{hi}, manifest says "
                                       f"{e['first_id']}..{e['first_id'] + e['rows'] - 1}")
        if e["docs"]:
            if e["first_doc_id"] != next_doc:
                rep.add("error", "docs", f"docs shard {e['shard']}: first doc id "
                                         f"{e['first_doc_id']}, expected {next_doc}")
            next_doc = e["first_doc_id"] + e["docs"]
    if m.data.get("cursor") is not None:
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


def _check_derived(db: Database, chunks: Manifest, m: Manifest, suffix: str,
                   rep: VerifyReport, checksums: bool) -> None:
    import numpy as np

    stage = m.stage
    bad = _check_files(m, rep, stage, checksums)
    for c in chunks.shards:
        e = m.entry(c["shard"])
        if e is None:
            rep.add("warning", stage, f"chunk shard {c['shard']} has no {stage} shard yet; "
                                      f"run the {stage} stage")
            continue
        if e.get("source_sha256") != c["sha256"]:
            rep.add("error", stage, f"{e['file']}: computed from an older chunk shard "
                                    f"{c['shard']}; rerun the {stage} stage")
        if (e["first_id"], e["rows"]) != (c["first_id"], c["rows"]):
            rep.add("error", stage, f"{e['file']}: rows {e['first_id']}+{e['rows']} do not "
                                    f"match chunk shard {c['shard']}")
        if e["shard"] not in bad and suffix == ".npy":
            arr = np.load(m.path_of(e["file"]), mmap_mode="r")
            if len(arr) != e["rows"]:
                rep.add("error", stage, f"{e['file']}: {len(arr)} rows, manifest says "
                                        f"{e['rows']}")
    extra = {e["shard"] for e in m.shards} - {c["shard"] for c in chunks.shards}
    for s in sorted(extra):
        rep.add("error", stage, f"{stage} shard {s} has no chunk shard")


def _recompute_chunks(db: Database, m: Manifest, sample: float, seed: int,
                      rep: VerifyReport) -> None:
    from .chunk import recompute_shard

    shards = [e["shard"] for e in m.shards]
    if not shards or sample <= 0:
        return
    n = max(1, round(sample * len(shards)))
    for s in sorted(random.Random(seed).sample(shards, n)):
        e = m.entry(s)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                c, d = recompute_shard(db.root, s, Path(tmp))
            except RetrodbError as err:
                rep.add("warning", "chunks", f"shard {s} not recomputed: {err}")
                continue
            for f, digest in ((c, e["sha256"]), (d, e["extra"][0]["sha256"])):
                if sha256_file(f) != digest:
                    rep.add("error", "chunks", f"{f.parent.name}/{f.name}: recomputed from "
                                               "its inputs it differs from the stored shard")
        rep.recomputed.append(f"chunks/{e['file']}")
