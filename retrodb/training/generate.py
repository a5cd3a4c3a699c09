"""Sampling from a trained run, chunk by chunk, with live retrieval.

As in the paper at sampling time: whenever a chunk of m tokens is complete (prompt
included), its text is sent to the index (`retrodb.open(DB).search(texts, k)`) and
the hits — chunk ids of the database, each read with its continuation — become that
chunk's neighbours. The next tokens (from the chunk's last token on) attend to them
through CCA; the still incomplete chunk has none yet, which nothing can see anyway.
The model reads at most the `seq_chunks` chunks it was trained on, cut at chunk
boundaries so retrieval stays aligned with chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError


@dataclass
class Retrieved:
    chunk: int  # index of the generated/prompt chunk that was the query
    query: str  # its text
    hits: list[dict]  # {"chunk_id", "doc_id", "source", "text"} per neighbour


@dataclass
class Generation:
    prompt: str
    text: str  # the generated continuation only
    tokens: list[int]
    retrieved: list[Retrieved] = field(default_factory=list)


def open_retriever(db):
    """The database's search API (`retrodb.open(DB)`)."""
    from ..query.retriever import open as open_db

    return open_db(db)


def _hit_id(h) -> int:
    if isinstance(h, (int, np.integer)):
        return int(h)
    if isinstance(h, dict):
        return int(h["chunk_id"])
    return int(getattr(h, "chunk_id"))


def generate(db, run: str, prompt: str, max_tokens: int = 128, k: int = 2,
             temperature: float = 0.8, top_k: int = 50, seed: int = 0,
             retrieval: bool = True, retriever=None, device: str = "cpu") -> Generation:
    import torch

    from ..stores.chunks import ChunkReader
    from ..stores.tokens import TokenStore
    from .runs import load_run

    db = Database(db)
    model, saved, dev = load_run(db, run, device)
    m = model.config.chunk_size
    window = saved["train"]["seq_chunks"] * m
    tok = db.tokenizer().load()
    ids = tok.encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise RetrodbError("PROMPT: empty after tokenisation; give some text")
    use = retrieval and model.config.retrieval
    if use and retriever is None:
        retriever = open_retriever(db)
    store = TokenStore(db)
    reader = ChunkReader(db)
    gen = torch.Generator().manual_seed(seed)
    neigh: dict[int, np.ndarray] = {}  # chunk index -> neighbour chunk ids (k,)
    out = Generation(prompt, "", [])
    while len(out.tokens) < max_tokens:
        seq = ids + out.tokens
        done = len(seq) // m  # complete chunks
        if use:
            new = [c for c in range(done) if c not in neigh]
            if new:
                texts = [tok.decode(seq[c * m:(c + 1) * m]) for c in new]
                for c, q, hits in zip(new, texts, retriever.search(texts, k)):
                    neigh[c] = np.array([_hit_id(h) for h in hits][:k] +
                                        [-1] * max(0, k - len(hits)), dtype=np.int64)
                    out.retrieved.append(Retrieved(c, q, _describe(reader, neigh[c])))
        first = max(0, (len(seq) - 1) // m - window // m + 1) * m  # chunk-aligned window
        ctx = seq[first:]
        L = -(-len(ctx) // m)
        idx = torch.zeros(1, L * m, dtype=torch.long)
        idx[0, :len(ctx)] = torch.tensor(ctx)
        kw = {}
        if use:
            cids = np.array([[neigh.get(first // m + j, np.full(k, -1)) for j in range(L)]])
            kw = dict(zip(("neighbours", "neighbour_mask"),
                          (torch.from_numpy(a).to(dev) for a in _blocks(store, cids))))
        with torch.no_grad():
            h = model.hidden(idx.to(dev), **kw)[0, len(ctx) - 1]
            logits = (h @ model.embed.weight.T).float().cpu() / max(temperature, 1e-5)
        if top_k:
            v, _ = torch.topk(logits, min(top_k, logits.numel()))
            logits[logits < v[-1]] = -float("inf")
        nxt = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))
        out.tokens.append(nxt)
    head, full = tok.decode(ids), tok.decode(ids + out.tokens)
    out.text = full[len(head):] if full.startswith(head) else " " + tok.decode(out.tokens)
    return out


def _blocks(store, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour + continuation tokens (..., 2m) and their real-token mask."""
    r = store.rows(ids)
    c = store.rows(store.continuation_ids(ids))
    pos = np.arange(store.chunk_size)
    mask = np.concatenate([pos < r["length"][..., None], pos < c["length"][..., None]], -1)
    toks = np.concatenate([r["tokens"], c["tokens"]], -1).astype(np.int64)
    return toks, mask


def _describe(reader, ids: np.ndarray) -> list[dict]:
    """Source file and text of each neighbour chunk id, for --show-retrieval."""
    out = []
    for cid in ids.tolist():
        if cid < 0:
            continue
        row = reader.row(cid)
        doc = reader.doc(row["doc_id"])
        out.append({"chunk_id": cid, "doc_id": row["doc_id"], "source": doc["source"],
                    "text": row["text"]})
    return out
