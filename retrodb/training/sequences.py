"""Training and evaluation sequences: consecutive chunks of one document + neighbours.

A sequence is `seq_chunks` chunk slots; slot j holds chunk first + j of one document,
so every 64-token slot is one database chunk with its own neighbours. Sequences never
cross documents: a document of n chunks gives ⌈n / seq_chunks⌉ windows, the last one
padded with empty slots. Targets are the next token within the window (across chunk
boundaries); a target that is padding (beyond a chunk's `length`, or an empty slot) is
-100 and never counts in the loss. The first token of a window is not predicted.

Neighbours come from a precomputed set (DB/neighbours/<set>/). Whatever that set
holds, neighbours from the query's own document and from validation documents are
dropped here: the model must neither copy its own future nor see the text it is
validated on, and validation retrieves from the training documents only, as in the
paper (its retrieval database is the training data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import RetrodbError
from ..stores.chunks import document_table
from ..stores.split import Split
from ..stores.tokens import TokenStore


def neighbour_table(db, name: str):
    """The neighbour set `name` (a `NeighbourTable`), or one line saying what to do."""
    from ..stores.neighbour_table import NeighbourTable

    try:
        return NeighbourTable(db, name)
    except RetrodbError as e:
        raise RetrodbError(f"--neighbours {name}: {e}; or train the baseline with "
                           "--no-retrieval") from None


@dataclass
class Batch:
    """Numpy arrays of one batch (b sequences, S chunk slots of m tokens)."""

    tokens: np.ndarray  # (b, S*m) int64 input ids (padding = whatever the DB stored)
    targets: np.ndarray  # (b, S*m) int64 next token, -100 where none
    chunk_ids: np.ndarray  # (b, S) int64, -1 = empty slot
    neighbours: np.ndarray | None = None  # (b, S, k, 2m) int64 neighbour + continuation
    neighbour_mask: np.ndarray | None = None  # (b, S, k, 2m) bool, True = real token
    neighbour_ids: np.ndarray | None = None  # (b, S, k) int64, -1 = none
    # (b, S, k) float: r of each of slot u's neighbours against the chunk it helps
    # predict (slot u + 1, or the next chunk past the window); NaN where there is no
    # neighbour. Asked for by evaluation only (stores/overlap.py).
    leakage: np.ndarray | None = None


class Sequences:
    """The windows of one side of the split, and batches of them."""

    def __init__(self, db, split: Split, part: str, seq_chunks: int,
                 store: TokenStore | None = None, table=None):
        docs = document_table(db)
        val = split.is_validation(docs["doc_id"])
        keep = val if part == "val" else ~val
        self.n_docs = int(keep.sum())
        self.n_tokens = int(docs["n_tokens"][keep].sum())
        self.n_bytes = int(docs["n_bytes"][keep].sum())
        first, n = docs["first_chunk_id"][keep], docs["n_chunks"][keep]
        per = -(-n // seq_chunks)  # windows per document
        starts = np.repeat(first, per) + seq_chunks * _ranges(per)
        ends = np.repeat(first + n, per)
        self.windows = np.stack([starts, np.minimum(ends - starts, seq_chunks)], 1)
        # UTF-8 bytes per token of each window's document (bits per byte for tokenizers
        # whose tokens have no byte length of their own)
        bpt = docs["n_bytes"][keep] / np.maximum(docs["n_tokens"][keep], 1)
        self.bytes_per_token = np.repeat(bpt, per)
        self.seq_chunks, self.split, self.part = seq_chunks, split, part
        self.store = store if store is not None else TokenStore(db)
        self.m = self.store.chunk_size
        self.table = table

    def __len__(self) -> int:
        return len(self.windows)

    def batch(self, rows, leakage: bool = False) -> Batch:
        """The windows `rows` as a batch; with a neighbour table, with neighbours (and
        with `leakage`, each neighbour's r: see `Batch.leakage`)."""
        w = self.windows[np.asarray(rows)]
        j = np.arange(self.seq_chunks)
        ids = np.where(j[None] < w[:, 1:2], w[:, :1] + j[None], -1)  # (b, S)
        r = self.store.rows(ids)
        b, m = len(ids), self.m
        tokens = r["tokens"].astype(np.int64).reshape(b, -1)
        valid = (np.arange(m)[None, None] < r["length"][..., None]).reshape(b, -1)
        targets = np.full_like(tokens, -100)
        targets[:, :-1] = np.where(valid[:, 1:], tokens[:, 1:], -100)
        out = Batch(tokens, targets, ids)
        if self.table is not None:
            self._neighbours(out, r["doc_id"], leakage)
        return out

    def _neighbours(self, out: Batch, doc_ids, want_leakage: bool) -> None:
        from ..stores.overlap import leakage, predicted_rows

        ids = out.chunk_ids
        nb, _ = self.table.lookup(np.maximum(ids, 0))  # (b, S, k)
        nb = np.where(ids[..., None] >= 0, nb, -1)
        nr = self.store.rows(nb)
        # never the query's own document (its own future), never validation text
        drop = (nr["doc_id"] == doc_ids[..., None]) | self.split.is_validation(nr["doc_id"])
        nb = np.where(drop, -1, nb)
        cont = self.store.rows(self.store.continuation_ids(nb))
        nl = np.where(nb >= 0, nr["length"], 0)
        cl = np.where(nb >= 0, cont["length"], 0)
        blocks = np.concatenate([nr["tokens"], cont["tokens"]], -1).astype(np.int64)
        if want_leakage:
            b, S, k = nb.shape
            target = predicted_rows(self.store, ids)  # C_{u+1}, which slot u's help predict
            ratio = leakage(target["tokens"].reshape(b * S, -1), target["length"].reshape(-1),
                            blocks.reshape(b * S, k, -1), (nl + cl).reshape(b * S, k),
                            self.m).reshape(b, S, k)
            out.leakage = np.where(nb >= 0, ratio, np.nan)
        pos = np.arange(self.m)
        mask = np.concatenate([pos < nl[..., None], pos < cl[..., None]], -1)
        out.neighbours, out.neighbour_mask, out.neighbour_ids = blocks, mask, nb


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), … concatenated."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts
