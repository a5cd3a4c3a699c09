"""Reading the chunk stage's output: chunk rows by id, documents by id, the doc table.

A shard that cannot be read (deleted, truncated, corrupt) is named in one line with
what to do: rerun `retrodb chunk` with the same inputs, which rebuilds it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest

FIX = "rerun `retrodb chunk` with the same inputs to rebuild it"


def read_parquet(loc, columns: list[str] | None = None, row_group: int | None = None):
    """A Parquet table (or one row group) of a shard, or one line naming the shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(loc.open())
        if row_group is None:
            return pf.read(columns=columns)
        return pf.read_row_group(row_group, columns=columns)
    except (OSError, pa.ArrowInvalid, ValueError) as e:
        raise RetrodbError(f"{loc}: cannot read this shard ({str(e).splitlines()[0][:120]});"
                           f" {FIX}") from None


def document_table(db, columns=("doc_id", "first_chunk_id", "n_chunks", "n_tokens",
                                 "n_bytes")) -> dict[str, np.ndarray]:
    """Columns of every document, in doc id order (int64; `source` as a list)."""
    import pyarrow as pa

    db = Database(db)
    m = Manifest(db.chunks, "chunks")
    locs = [m.path_of(e["extra"][0]["file"]) for e in sorted(m.shards,
                                                              key=lambda e: e["shard"])
            if e.get("extra")]
    if not locs:
        raise RetrodbError(f"{db.root}: no documents; run `retrodb chunk INPUT --db "
                           f"{db.root}` first")
    t = pa.concat_tables([read_parquet(loc, list(columns)) for loc in locs])
    return {c: (t.column(c).to_pylist() if c == "source" else
                t.column(c).to_numpy().astype(np.int64)) for c in columns}


class ChunkReader:
    """Chunk rows by id from the Parquet shards, a few row groups cached at a time."""

    def __init__(self, db, cache: int = 8):
        db = Database(db)
        m = Manifest(db.chunks, "chunks")
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.manifest = m
        self.shards = shards
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.n = int(sum(e["rows"] for e in shards))
        self._files: dict[int, tuple] = {}
        self._groups: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self.cache = cache
        # documents: a docs shard holds the documents of its chunk shard
        with_docs = [e for e in shards if e.get("docs")]
        self.doc_shards = with_docs
        self.first_doc_ids = np.array([e["first_doc_id"] for e in with_docs], dtype=np.int64)
        self._docs: OrderedDict[int, dict] = OrderedDict()

    def _file(self, s: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = self._files.get(s)
        if f is None:
            loc = self.manifest.path_of(self.shards[s]["file"])
            try:
                pf = pq.ParquetFile(loc.open())
            except (OSError, pa.ArrowInvalid) as e:
                raise RetrodbError(f"{loc}: cannot read this shard ({str(e)[:120]}); "
                                   f"{FIX}") from None
            starts = np.cumsum([0] + [pf.metadata.row_group(i).num_rows
                                      for i in range(pf.metadata.num_row_groups)])
            self._files[s] = f = (pf, starts, loc)
        return f

    def _group(self, s: int, g: int) -> dict:
        import pyarrow as pa

        key = (s, g)
        got = self._groups.get(key)
        if got is not None:
            self._groups.move_to_end(key)
            return got
        pf, _, loc = self._file(s)
        try:
            t = pf.read_row_group(g, columns=["chunk_id", "doc_id", "pos", "text"])
        except (OSError, pa.ArrowInvalid) as e:
            raise RetrodbError(f"{loc}: cannot read this shard ({str(e)[:120]}); {FIX}") \
                from None
        got = {c: t.column(c).to_pylist() if c == "text" else t.column(c).to_numpy()
               for c in ("chunk_id", "doc_id", "pos", "text")}
        self._groups[key] = got
        if len(self._groups) > self.cache:
            self._groups.popitem(last=False)
        return got

    def row(self, chunk_id: int) -> dict:
        if not 0 <= chunk_id < self.n:
            raise RetrodbError(f"chunk id {chunk_id} is outside the database "
                               f"(0..{self.n - 1}); the index and the chunks disagree: "
                               "rebuild the index")
        s = int(np.searchsorted(self.first_ids, chunk_id, side="right") - 1)
        _, starts, _ = self._file(s)
        r = chunk_id - int(self.first_ids[s])
        g = int(np.searchsorted(starts, r, side="right") - 1)
        grp = self._group(s, g)
        i = r - int(starts[g])
        return {"chunk_id": int(grp["chunk_id"][i]), "doc_id": int(grp["doc_id"][i]),
                "pos": int(grp["pos"][i]), "text": grp["text"][i]}

    def doc(self, doc_id: int) -> dict:
        s = int(np.searchsorted(self.first_doc_ids, doc_id, side="right") - 1)
        if s < 0:
            raise RetrodbError(f"document {doc_id} is not in {self.manifest.directory}")
        got = self._docs.get(s)
        if got is None:
            loc = self.manifest.path_of(self.doc_shards[s]["extra"][0]["file"])
            t = read_parquet(loc, ["doc_id", "source", "position"])
            got = {"doc_id": t.column("doc_id").to_numpy(),
                   "source": t.column("source").to_pylist(),
                   "position": t.column("position").to_numpy()}
            self._docs[s] = got
            if len(self._docs) > self.cache:
                self._docs.popitem(last=False)
        i = int(np.searchsorted(got["doc_id"], doc_id))
        if i >= len(got["doc_id"]) or got["doc_id"][i] != doc_id:
            raise RetrodbError(f"document {doc_id} is not in {self.manifest.directory}")
        return {"source": got["source"][i], "position": int(got["position"][i])}
