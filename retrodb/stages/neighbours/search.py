"""Filtered nearest-neighbour search: the k nearest eligible database chunks.

Candidates come from the merged index in PQ order; those from the query's own
document or from validation documents are removed *before* exact re-ranking, so the
index's candidate budget (chosen for unfiltered queries) is spent on eligible chunks
only. The re-ranked list (exact scores) is then leakage-filtered: r ≤ α, with r the
longest common token run of the chunk these neighbours help predict (the query's next
chunk) and the neighbour with its continuation (stores/overlap.py). A query left
with fewer than k is searched again with 4× the candidates, up to `max_search`; then it
is padded with id -1 (score NaN) and counted. Widening also probes 4× the IVF lists:
a query's probed lists may hold fewer eligible chunks than it needs.
"""

from __future__ import annotations

import numpy as np

from ...stores.searcher import IndexSearcher, rerank
from ...stores.overlap import block_rows, leakage, predicted_rows
from ...stores.split import Split
from ...stores.tokens import TokenStore
from ...stores.vectors import EmbeddingStore
from .config import R_BINS

COUNTERS = ("searched", "widened", "short", "missing", "dropped_same_doc",
            "dropped_validation", "dropped_overlap", "duplicates")


class FilteredSearch:
    """The index, the token stores and the filters of one neighbour set, opened once."""

    def __init__(self, db, query_db, k: int, candidates: int | None, same_doc: bool,
                 split: Split | None, alpha: float | None, max_search: int):
        self.store = EmbeddingStore(db)
        self.searcher = IndexSearcher(db, candidates=candidates, store=self.store)
        self.tokens = TokenStore(db, build=False)
        self.qtokens = self.tokens if query_db is None else TokenStore(query_db, build=False)
        self.k, self.same_doc, self.split = k, same_doc, split
        self.alpha, self.max_search = alpha, max_search

    @property
    def nlist(self) -> int:
        return int(self.searcher.trained.get("nlist") or 1)

    @property
    def candidates(self) -> int:
        return self.searcher.candidates

    def search(self, xq: np.ndarray, qids: np.ndarray, nprobe: int, stats: dict,
               overlap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k filtered neighbours (ids, scores) of the queries `xq` (chunk ids `qids`
        of the query set); `stats` accumulates the counters and the r histogram."""
        k, n = self.k, len(xq)
        c = self.searcher.candidates
        alpha = self.alpha if overlap else None
        # eligible candidates to keep per query: the re-ranking budget; with a leakage
        # filter a few more, since it drops some of them after re-ranking
        need = max(c, k) if alpha is None else max(c, 4 * k)
        by_doc = self.same_doc or self.split is not None
        limit = min(max(need, self.max_search), self.searcher.ntotal)
        need = min(need, limit)
        fetch = min(limit, 2 * need + 8 if by_doc else need)
        out_i = np.full((n, k), -1, dtype=np.int64)
        out_s = np.full((n, k), np.nan, dtype=np.float32)
        qrows = self.qtokens.rows(qids)
        qnext = predicted_rows(self.qtokens, qids)  # C_{u+1}: what leakage is measured on
        for name in COUNTERS:
            stats.setdefault(name, 0)
        todo = np.arange(n)
        first_pass = True
        while len(todo):
            retry = []
            # bounded work per call: (queries × candidates) ≤ 2M ids whatever the widening
            step = max(1, (1 << 21) // fetch)
            for lo in range(0, len(todo), step):
                rows = todo[lo:lo + step]
                retry.append(self._pass(xq, rows, (qrows, qnext), fetch, limit, need, alpha,
                                        nprobe, out_i, out_s, stats))
                stats["searched"] += len(rows) * fetch
                if not first_pass:
                    stats["widened"] += len(rows)
            todo = np.concatenate(retry) if retry else todo[:0]
            # wider: more candidates fetched and kept (the leakage filter may have
            # dropped all the first ones), and more lists (IVF lists run dry)
            fetch = min(limit, fetch * 4)
            need = min(fetch, need * 4)
            nprobe = min(self.nlist, nprobe * 4)
            first_pass = False
        valid = out_i >= 0
        r = self.ratios(qnext, out_i, valid)
        stats["duplicates"] += int((valid & (r >= 1.0)).sum())
        bins = np.minimum((r[valid] * R_BINS + 1e-6).astype(np.int64), R_BINS)
        stats["hist"] = stats.get("hist", 0) + np.bincount(bins, minlength=R_BINS + 1)
        return out_i, out_s

    def _eligible(self, I: np.ndarray, qdocs: np.ndarray):
        """(eligible, dropped as same-document, dropped as validation) per candidate."""
        elig = I >= 0
        drop_d = drop_v = np.zeros_like(elig)
        if self.same_doc or self.split is not None:
            doc = self.tokens.doc_ids(np.where(elig, I, -1))
            if self.same_doc:
                drop_d = elig & (doc == qdocs[:, None])
            if self.split is not None:
                drop_v = elig & ~drop_d & self.split.is_validation(doc)
            elig &= ~(drop_d | drop_v)
        return elig, drop_d, drop_v

    def _pass(self, xq, rows, q, fetch, limit, need, alpha, nprobe, out_i, out_s,
              stats) -> np.ndarray:
        """One pass for the queries `rows`: fills out_i/out_s of the finished ones and
        returns the rows to search again wider."""
        k, c = self.k, self.searcher.candidates
        x = np.ascontiguousarray(xq[rows])
        qrows, qnext = q
        D, I = self.searcher.candidates_for(x, fetch, nprobe)
        elig, drop_d, drop_v = self._eligible(I, qrows["doc_id"][rows])
        # a query is out of candidates when every list is probed and came up short, or
        # the widest search is reached
        lists_done = nprobe >= self.nlist
        exhausted = ((I[:, -1] < 0) & lists_done) | (fetch >= limit)
        # the first `need` eligible candidates, in PQ order
        cols = np.argsort(~elig, axis=1, kind="stable")[:, :need]
        ok = np.take_along_axis(elig, cols, axis=1)
        cand = np.where(ok, np.take_along_axis(I, cols, axis=1), -1)
        if c:  # exact scores from the stored keys, best first
            S2, I2 = rerank(self.store, x, cand, cand.shape[1])
        else:
            S2, I2 = np.where(ok, np.take_along_axis(D, cols, axis=1), -np.inf), cand
        keep = I2 >= 0
        drop_o = np.zeros_like(keep)
        if alpha is not None:
            keep, drop_o = self._overlap_keep(qnext[rows], I2, keep, alpha)
        got_n = np.minimum(keep.sum(axis=1), k)
        final = (got_n >= k) | exhausted
        if final.any():
            f = final
            pick = np.argsort(~keep[f], axis=1, kind="stable")[:, :k]
            got = np.take_along_axis(keep[f], pick, axis=1)
            out_i[rows[f]] = np.where(got, np.take_along_axis(I2[f], pick, axis=1), -1)
            out_s[rows[f]] = np.where(got, np.take_along_axis(S2[f], pick, axis=1), np.nan)
            stats["short"] += int((got_n[f] < k).sum())
            stats["missing"] += int((k - got_n[f]).sum())
            # drops that mattered: candidates ranked before the last one used
            any_ok = ok[f].any(axis=1)
            last = np.where(any_ok, np.max(np.where(ok[f], cols[f], -1), axis=1), fetch - 1)
            used = np.arange(fetch)[None, :] <= last[:, None]
            stats["dropped_same_doc"] += int((drop_d[f] & used).sum())
            stats["dropped_validation"] += int((drop_v[f] & used).sum())
            kept_before = np.cumsum(keep[f], axis=1) - keep[f]
            stats["dropped_overlap"] += int((drop_o[f] & (kept_before < k)).sum())
        return rows[~final]

    def _overlap_keep(self, qnext: np.ndarray, ids: np.ndarray, valid: np.ndarray,
                      alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """(keep, dropped): which ranked candidates pass r ≤ α. r (a 64 × 64 dynamic
        programme per pair) is computed for the first 4k candidates, then further down
        only in rows still short of k; rows that are not short never use the rest."""
        k = self.k
        keep = valid.copy()
        dropped = np.zeros_like(valid)
        head = min(ids.shape[1], 4 * k)

        def apply(rows: np.ndarray, lo: int, hi: int) -> None:
            sub = ids[rows, lo:hi]
            mask = valid[rows, lo:hi]
            r = self.ratios(qnext[rows], np.where(mask, sub, -1), mask)
            drop = mask & (r > alpha)
            dropped[rows, lo:hi] |= drop
            keep[rows, lo:hi] &= ~drop

        apply(np.arange(len(ids)), 0, head)
        short = np.flatnonzero(keep[:, :head].sum(axis=1) < k)
        if len(short) and head < ids.shape[1]:
            apply(short, head, ids.shape[1])
        return keep, dropped


    def ratios(self, qnext: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """r of each (query, candidate) where `mask`; 0 elsewhere. qnext (n,) rows of
        the queries' next chunks; ids (n, c) candidates."""
        blocks, lengths = block_rows(self.tokens, np.where(mask, ids, -1))
        return leakage(qnext["tokens"], qnext["length"], blocks, lengths,
                       self.tokens.chunk_size, mask)
