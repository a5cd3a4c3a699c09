"""Querying a database by text: `retrodb.open(DB).search(["some text"], k=4)`.

The query is embedded with the database's own embedder (retrodb.json "embedder"),
searched in the merged index (re-ranked with the exact keys at the operating point
chosen when the index was built), and every hit comes back with what RETRO retrieves:
the chunk N, its continuation F (the next chunk of the same document), the score, the
chunk and document ids and where the document came from.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .db import Database
from .errors import RetrodbError
from .runner import Manifest


class Embedder(Protocol):
    def encode_texts(self, texts: list[str]) -> np.ndarray:  # float32 (n, dim), normalised
        ...


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: a RETRO neighbour [N, F] and where it came from."""

    chunk_id: int
    score: float  # inner product of normalised keys = cosine similarity
    text: str  # the chunk N
    continuation: str | None  # F: the next chunk of the same document (None at its end)
    continuation_id: int | None
    doc_id: int
    pos: int  # the chunk's index within its document
    source: str  # the input file the document came from
    position: int  # 1-based line (.txt/.jsonl) or 0-based row (.parquet) of the document

    def to_dict(self) -> dict:
        return asdict(self)


class ChunkReader:
    """Chunk rows by id from the Parquet shards, a few row groups cached at a time."""

    def __init__(self, db: Database, cache: int = 8):
        m = Manifest(db.chunks_dir, "chunks")
        shards = sorted(m.shards, key=lambda e: e["first_id"])
        self.manifest = m
        self.shards = shards
        self.first_ids = np.array([e["first_id"] for e in shards], dtype=np.int64)
        self.n = int(sum(e["rows"] for e in shards))
        self._files: dict[int, object] = {}
        self._groups: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self.cache = cache
        # documents: shard s holds the docs whose last chunk is in chunk shard s
        with_docs = [e for e in shards if e.get("docs")]
        self.doc_shards = with_docs
        self.first_doc_ids = np.array([e["first_doc_id"] for e in with_docs], dtype=np.int64)
        self._docs: OrderedDict[int, dict] = OrderedDict()

    def _file(self, s: int):
        import pyarrow.parquet as pq

        f = self._files.get(s)
        if f is None:
            f = pq.ParquetFile(self.manifest.path_of(self.shards[s]["file"]))
            starts = np.cumsum([0] + [f.metadata.row_group(i).num_rows
                                      for i in range(f.metadata.num_row_groups)])
            self._files[s] = f = (f, starts)
        return f

    def _group(self, s: int, g: int) -> dict:
        key = (s, g)
        got = self._groups.get(key)
        if got is not None:
            self._groups.move_to_end(key)
            return got
        f, _ = self._file(s)
        t = f.read_row_group(g, columns=["chunk_id", "doc_id", "pos", "text"])
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
        _, starts = self._file(s)
        r = chunk_id - int(self.first_ids[s])
        g = int(np.searchsorted(starts, r, side="right") - 1)
        grp = self._group(s, g)
        i = r - int(starts[g])
        return {"chunk_id": int(grp["chunk_id"][i]), "doc_id": int(grp["doc_id"][i]),
                "pos": int(grp["pos"][i]), "text": grp["text"][i]}

    def doc(self, doc_id: int) -> dict:
        import pyarrow.parquet as pq

        s = int(np.searchsorted(self.first_doc_ids, doc_id, side="right") - 1)
        if s < 0:
            raise RetrodbError(f"document {doc_id} is not in {self.manifest.directory}")
        e = self.doc_shards[s]
        got = self._docs.get(s)
        if got is None:
            extra = e["extra"][0]["file"]
            t = pq.read_table(self.manifest.path_of(extra),
                              columns=["doc_id", "source", "position"])
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


class Retriever:
    """A database opened for search: its embedder, merged index and chunk texts."""

    def __init__(self, db_path: str | Path, embedder: Embedder | None = None,
                 nprobe: int | None = None, candidates: int | None = None):
        from .index import IndexSearcher

        self.db = Database(db_path)
        cfg = self.db.config()
        self.searcher = IndexSearcher(self.db.root, nprobe=nprobe, candidates=candidates)
        self.chunks = ChunkReader(self.db)
        self._embedder = embedder
        self._spec = cfg.get("embedder")
        if embedder is None and not self._spec:
            raise RetrodbError(f"{self.db.config_path}: no embedder recorded; run "
                               f"`retrodb embed --db {self.db.root}` first")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # the embed stage (torch) is heavy: load it lazily
            from .embedder import load_embedder

            self._embedder = load_embedder(self._spec, device="cpu")
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        x = np.asarray(self.embedder.encode_texts(list(texts)), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.searcher.d:
            raise RetrodbError(f"the embedder returned vectors of shape {x.shape}, the "
                               f"index has dimension {self.searcher.d}; the database's "
                               "embedder changed since indexing: rebuild the index")
        return x

    def search_vectors(self, xq: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of normalised float32 query keys (n, dim)."""
        return self.searcher.search(xq, k)

    def search(self, texts: str | Sequence[str], k: int = 4) -> list[list[Hit]]:
        """For each text, its `k` nearest chunks (best first) with continuations."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                which = "the query" if len(texts) == 1 else f"query {i + 1}"
                raise RetrodbError(f"{which} is empty: give the text to search for")
        if k <= 0:
            raise RetrodbError(f"-k {k}: must be positive")
        scores, ids = self.search_vectors(self.embed(texts), k)
        return [[self.hit(int(c), float(s)) for c, s in zip(row_i, row_s) if c >= 0]
                for row_i, row_s in zip(ids, scores)]

    def hit(self, chunk_id: int, score: float) -> Hit:
        row = self.chunks.row(chunk_id)
        cont_text, cont_id = None, None
        if chunk_id + 1 < self.chunks.n:
            nxt = self.chunks.row(chunk_id + 1)
            if nxt["doc_id"] == row["doc_id"]:
                cont_text, cont_id = nxt["text"], chunk_id + 1
        doc = self.chunks.doc(row["doc_id"])
        return Hit(chunk_id=chunk_id, score=round(score, 6), text=row["text"],
                   continuation=cont_text, continuation_id=cont_id, doc_id=row["doc_id"],
                   pos=row["pos"], source=doc["source"], position=doc["position"])


def open(db_path: str | Path, embedder: Embedder | None = None, nprobe: int | None = None,
         candidates: int | None = None) -> Retriever:  # noqa: A001 - the public name
    """Open a database for search: `retrodb.open(DB).search(["text"], k=4)`.

    `embedder` defaults to the database's own (loaded at the first search); `nprobe`
    and `candidates` default to the operating point chosen when the index was built.
    """
    return Retriever(db_path, embedder, nprobe, candidates)
