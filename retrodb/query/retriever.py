"""Querying a database by text: `retrodb.open(DB).search(["some text"], k=4)`.

The query is embedded with the database's own embedder (retrodb.json "embedder"),
searched in the merged index (re-ranked with the exact keys at the operating point
chosen when the index was built), and every hit comes back with what RETRO retrieves:
the chunk N, its continuation F (the next chunk of the same document), the score, the
chunk and document ids and where the document came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..stores.chunks import ChunkReader
from ..stores.searcher import IndexSearcher


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


class Retriever:
    """A database opened for search: its embedder, merged index and chunk texts."""

    def __init__(self, db_path: str | Path | Database, embedder: Embedder | None = None,
                 nprobe: int | None = None, candidates: int | None = None):
        self.db = Database(db_path)
        cfg = self.db.config()
        self.searcher = IndexSearcher(self.db, nprobe=nprobe, candidates=candidates)
        self.chunks = ChunkReader(self.db)
        self._embedder = embedder
        self._spec = cfg.get("embedder")
        if embedder is None and not self._spec:
            raise RetrodbError(f"{self.db.config_file}: no embedder recorded; run "
                               f"`retrodb embed --db {self.db.root}` first")

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:  # the embed stage (torch) is heavy: load it lazily
            from ..stages.embed.embedder import load_embedder

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
