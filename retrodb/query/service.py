"""The database as an HTTP retrieval service (`retrodb serve DB`), on FastAPI.

    GET  /health      200 once loaded: chunks, index generation, batching counters
    POST /query       {"texts": [...], "k": 4} → {"results": [[hit, ...], ...]}: what
                      `retrodb.open(DB).search` returns, one list per text, best first
    POST /neighbours  {"chunk_ids": [...]} or {"tokens": [[...], ...]}, "k" and the
                      filters of `retrodb neighbours` → neighbour ids, token blocks
                      [N, F] (2 × chunk size) and their real-token mask, for RETRO
    GET  /docs, /openapi.json   the OpenAPI description

Batching. Requests of all clients go into one asyncio queue. A batcher takes the first
waiting request and keeps collecting until `max_batch` texts (or ids) are gathered or
`batch_wait_ms` have passed since that request arrived, then runs the batch in one
worker thread: one embedding call for all its texts, one index search per distinct
setting (k, filters); each request's future gets its rows. Only that thread calls torch
and faiss. The trade-off: a lone request waits up to `batch_wait_ms` longer (latency);
under load, requests queued while a batch runs form the next one at once, and one model
call over many texts costs far less than one per text (throughput).

Safety. With a token, every request but /health needs `Authorization: Bearer <token>`
(compared in constant time). Refused, the field named: bodies over 1 MB (413), k outside
1..100, texts over 20,000 characters, over 512 texts or ids (422), bad JSON (400). A
request whose client left is dropped from its batch. The database is only read.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.manifest import Manifest
from ..stages.neighbours.search import FilteredSearch
from ..stores.searcher import faiss
from ..stores.split import load_split
from .client import MAX_BODY, NeighboursRequest, QueryRequest, error_body
from .retriever import Retriever

ENV = "RETRODB_SERVE"  # the settings of `app_from_env` (uvicorn worker processes)


class ServeConfig(BaseModel):
    """What a worker opens (passed to uvicorn's worker processes as JSON)."""

    db: str
    token_file: Optional[str] = None
    max_batch: int = 256
    batch_wait_ms: float = 5.0
    set: str = "train"  # the neighbour set whose nprobe and candidates /neighbours uses
    threads: Optional[int] = None  # torch and faiss threads of this process


class Invalid(HTTPException):
    """A refused request, with the field it is about."""

    def __init__(self, status: int, fld: str, msg: str, headers: dict | None = None):
        super().__init__(status, f"{fld}: {msg}", headers)
        self.field = fld


@dataclass
class Job:
    """One request waiting for its batch."""

    kind: str  # "query" | "neighbours"
    key: tuple  # jobs of one kind and key share an index search
    future: asyncio.Future
    t0: float  # loop time of arrival
    texts: list[str] = field(default_factory=list)  # to embed
    ids: Optional[np.ndarray] = None  # query chunk ids (neighbours by id)
    qrows: Optional[np.ndarray] = None  # token rows of token queries
    keys: Optional[np.ndarray] = None  # its texts' keys, set in the batch

    @property
    def n(self) -> int:
        return len(self.ids) if self.ids is not None else len(self.texts)


def request_rows(rows: np.ndarray):
    """Token queries as FilteredSearch's `qtokens`: query ids -1 read the sent tokens
    (the chunk after them is unknown here: leakage is measured against what was sent)."""
    return SimpleNamespace(rows=lambda ids: rows, continuation_ids=lambda ids: ids)


class Backend:
    """The database as one worker process opens it; used by the batch thread only."""

    def __init__(self, cfg: ServeConfig):
        if cfg.threads:  # this worker process's share of the cores
            import torch

            torch.set_num_threads(cfg.threads)
            faiss().omp_set_num_threads(cfg.threads)
        self.db = db = Database(cfg.db)
        self.config, self.split = db.config(), load_split(db)
        self.retriever = Retriever(db)
        self.retriever.embedder  # noqa: B018 - load the model now, not at the first query
        self.tokenizer = db.tokenizer().load()
        self.vocab, self.chunk_size = self.config["tokenizer"]["vocab_size"], \
            self.config["chunk_size"]
        self.stats = {"model_calls": 0, "searches": 0}
        self.fs, self.nb_error, self.set_info, self.nprobe = None, None, None, None
        try:
            self._open_neighbours(cfg.set)
        except RetrodbError as e:
            self.nb_error = str(e)

    def _open_neighbours(self, set_name: str) -> None:
        """FilteredSearch at the set's operating point (the index's without the set)."""
        loc = self.db.neighbours(set_name)
        if (loc / "manifest.json").exists():
            m = Manifest(loc, "neighbours").data
            self.set_info = {"set": set_name, "nprobe": m.get("nprobe"),
                             "candidates": m.get("candidates"),
                             "max_search": (m.get("settings") or {}).get("max_search")}
        info = self.set_info or {}
        fs = FilteredSearch(self.db, None, 1, info.get("candidates"), True, None, None,
                            int(info.get("max_search") or 4096))
        if fs.tokens.n_chunks != self.retriever.chunks.n:
            raise RetrodbError(f"{self.db.tokens}: the token store is missing or "
                               f"incomplete; `retrodb neighbours --db {self.db.root}` "
                               "builds it (then restart the service)")
        self.nprobe = int(info.get("nprobe") or fs.searcher.nprobe)
        self.fs = fs

    def health(self) -> dict:
        s, fs = self.retriever.searcher, self.fs
        nb = {"available": fs is not None, "error": self.nb_error, "nprobe": self.nprobe,
              "set": (self.set_info or {}).get("set"), "candidates": fs and fs.candidates,
              "split": self.split and vars(self.split)}
        return {"status": "ok", "chunks": s.ntotal, "chunk_size": self.chunk_size,
                "index": {"generation": s.merged.get("generation"), "nprobe": s.nprobe,
                          "candidates": s.candidates, "dim": s.d},
                "embedder": (self.config.get("embedder") or {}).get("name"),
                "neighbours": nb, "pid": os.getpid()}

    def run_batch(self, jobs: list[Job]) -> list:
        """Each job's result or exception; a failing batch is retried job by job, so
        that one request cannot fail the others."""
        try:
            return self._run(jobs)
        except Exception as e:  # noqa: BLE001 - handed to the request that caused it
            if len(jobs) == 1:
                return [e]
            return [r for j in jobs for r in self.run_batch([j])]

    def _run(self, jobs: list[Job]) -> list:
        texts = [t for j in jobs for t in j.texts]
        if texts:  # one model call for the whole batch
            keys, at = self.retriever.embed(texts), 0
            self.stats["model_calls"] += 1
            for j in jobs:
                j.keys, at = keys[at:at + len(j.texts)], at + len(j.texts)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, j in enumerate(jobs):
            groups[(j.kind, j.key)].append(i)
        out: list = [None] * len(jobs)
        for (kind, key), idx in groups.items():
            sub = [jobs[i] for i in idx]
            res = self._query(sub, *key) if kind == "query" else self._neighbours(sub, *key)
            self.stats["searches"] += 1
            for i, r in zip(idx, res):
                out[i] = r
        return out

    def _query(self, jobs: list[Job], k: int) -> list:
        r = self.retriever
        scores, ids = r.search_vectors(np.concatenate([j.keys for j in jobs]), k)
        return split_rows([[r.hit(int(c), float(s)).to_dict() for c, s in zip(ri, rs)
                            if c >= 0] for ri, rs in zip(ids, scores)], jobs)

    def _neighbours(self, jobs: list[Job], k: int, by_tokens: bool, same_doc: bool,
                    validation: bool, alpha: Optional[float]) -> list:
        fs = self.fs
        if by_tokens:  # embedded texts; query id -1: no own document
            x = np.concatenate([j.keys for j in jobs])
            qids = np.full(len(x), -1, dtype=np.int64)
            fs.qtokens = request_rows(np.concatenate([j.qrows for j in jobs]))
        else:  # the stored keys: nothing re-embedded
            qids = np.concatenate([j.ids for j in jobs])
            x = fs.store.get(qids)
        fs.k, fs.same_doc, fs.alpha = k, same_doc, alpha
        fs.split = self.split if validation else None
        try:
            ids, scores = fs.search(x, qids, self.nprobe, {})
        finally:
            fs.qtokens = fs.tokens
        t = fs.tokens  # blocks [N, F] and their real tokens, as the trainer reads them
        pos, cont = np.arange(t.chunk_size), t.continuation_ids(ids)
        mask = np.concatenate([pos < t.rows(ids)["length"][..., None],
                               pos < t.rows(cont)["length"][..., None]], -1)
        cols = {"neighbours": ids.tolist(),
                "scores": np.where(ids >= 0, scores.astype(float).round(6), None).tolist(),
                "blocks": t.neighbour_blocks(ids).tolist(),
                "mask": mask.astype(np.uint8).tolist()}
        parts = {name: split_rows(rows, jobs) for name, rows in cols.items()}
        return [{name: parts[name][i] for name in cols} for i in range(len(jobs))]

    def chunk_ids(self, ids: list[int]) -> np.ndarray:
        n = self.retriever.chunks.n
        for i, c in enumerate(ids):
            if not 0 <= c < n:
                raise Invalid(422, f"chunk_ids[{i}]", f"{c} is outside the database "
                              f"(0..{n - 1})")
        return np.asarray(ids, dtype=np.int64)

    def token_rows(self, tokens: list[list[int]]) -> tuple[list[str], np.ndarray]:
        """Checked token queries: their decoded texts and token rows (doc id -1)."""
        rows = np.zeros(len(tokens), dtype=self.fs.tokens.row_dtype)
        rows["doc_id"] = -1
        texts = []
        for i, ids in enumerate(tokens):
            if not 1 <= len(ids) <= self.chunk_size:
                raise Invalid(422, f"tokens[{i}]", f"{len(ids)} token ids; give 1 to "
                              f"{self.chunk_size} (one chunk)")
            bad = [t for t in ids if not 0 <= t < self.vocab]
            if bad:
                raise Invalid(422, f"tokens[{i}]", f"token id {bad[0]} is outside the "
                              f"tokenizer's vocabulary (0..{self.vocab - 1})")
            texts.append(self.tokenizer.decode(ids))
            if not texts[-1].strip():
                raise Invalid(422, f"tokens[{i}]", "decodes to empty text")
            rows["tokens"][i, :len(ids)] = ids
            rows["length"][i] = len(ids)
        return texts, rows


def split_rows(rows: list, jobs: list[Job]) -> list[list]:
    """Consecutive rows cut into each job's share."""
    out, at = [], 0
    for j in jobs:
        out.append(rows[at:at + j.n])
        at += j.n
    return out


class Batcher:
    """Gathers the requests of every client into batches run by one thread."""

    def __init__(self, max_batch: int, wait_ms: float, max_pending: int | None = None):
        self.max_batch, self.wait = max(1, max_batch), max(0.0, wait_ms) / 1000
        self.max_pending = max_pending or max(4096, 8 * self.max_batch)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="retrodb-batch")
        self.queue: asyncio.Queue = asyncio.Queue()
        self.run_batch: Callable[[list[Job]], list] = lambda jobs: []
        self.pending = 0  # items queued or running
        self.held: Optional[Job] = None  # taken from the queue, did not fit its batch
        self.counters = {"requests": 0, "items": 0, "batches": 0, "largest_batch": 0,
                         "dropped": 0}

    async def submit(self, kind: str, key: tuple, **kw) -> Any:
        """Queue a request; its result once its batch has run."""
        loop = asyncio.get_running_loop()
        job = Job(kind, key, loop.create_future(), loop.time(), **kw)
        if self.pending + job.n > self.max_pending:
            raise Invalid(503, "service", f"overloaded: {self.pending} texts or ids are "
                          "waiting; retry later", {"Retry-After": "1"})
        self.pending += job.n
        self.counters["requests"] += 1
        self.counters["items"] += job.n
        self.queue.put_nowait(job)
        return await job.future

    async def _collect(self) -> list[Job]:
        loop = asyncio.get_running_loop()
        first = self.held or await self.queue.get()
        self.held = None
        jobs, n = [first], first.n
        while n < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = first.t0 + self.wait - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if n + job.n > self.max_batch:
                self.held = job
                break
            jobs.append(job)
            n += job.n
        return jobs

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            live = [j for j in jobs if not j.future.done()]  # clients gone: dropped
            c = self.counters
            c["dropped"] += len(jobs) - len(live)
            try:
                if live:
                    c["batches"] += 1
                    c["largest_batch"] = max(c["largest_batch"], sum(j.n for j in live))
                    results = await loop.run_in_executor(self.pool, self.run_batch, live)
                    for j, r in zip(live, results):
                        resolve(j.future, r)
            except Exception as e:  # noqa: BLE001 - the batcher must keep running
                for j in live:
                    resolve(j.future, e)
            finally:
                self.pending -= sum(j.n for j in jobs)


def resolve(fut: asyncio.Future, r: Any) -> None:
    """A request's result, or its exception; nothing for a request already gone."""
    if not fut.done():
        fut.set_exception(r) if isinstance(r, BaseException) else fut.set_result(r)


class Guard:
    """ASGI middleware: the bearer token (every path but /health) and the body limit."""

    def __init__(self, app, token: Optional[str], max_body: int = MAX_BODY):
        self.app, self.max_body = app, max_body
        self.token = None if token is None else b"Bearer " + token.encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        refuse = None
        if self.token is not None and scope.get("path") != "/health" and \
                not hmac.compare_digest(headers.get(b"authorization", b""), self.token):
            refuse = Invalid(401, "Authorization", "missing or wrong bearer token; send "
                             "the header Authorization: Bearer <token>",
                             {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"0")
        if refuse is None and (not length.isdigit() or int(length) > self.max_body):
            refuse = Invalid(413, "body", f"larger than {self.max_body} bytes; send fewer "
                             "texts per request")
        if refuse is not None:
            return await http_error(None, refuse)(scope, receive, send)
        seen = 0

        async def limited():  # a body without Content-Length is counted as it comes
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_body:
                raise Invalid(413, "body", f"larger than {self.max_body} bytes")
            return msg

        await self.app(scope, limited, send)


def http_error(_request, e: Exception) -> JSONResponse:
    if not isinstance(e, HTTPException):  # a bug or a damaged database: 500 (and logged)
        e = Invalid(500, "service", f"internal error: {e.__class__.__name__}: {e}")
    return JSONResponse({"error": str(e.detail), "field": getattr(e, "field", None)},
                        e.status_code, getattr(e, "headers", None))


def create_app(db: str, token: Optional[str] = None, max_batch: int = 256,
               batch_wait_ms: float = 5.0, set_name: str = "train",
               threads: Optional[int] = None, backend: Optional[Backend] = None) -> FastAPI:
    """The service of one worker process. The database is opened at startup, in the
    batch thread (unless `backend` is given, already open)."""
    cfg = ServeConfig(db=db, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                      set=set_name, threads=threads)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(cfg.max_batch, cfg.batch_wait_ms)
        be = backend or await asyncio.get_running_loop().run_in_executor(
            batcher.pool, Backend, cfg)
        batcher.run_batch = be.run_batch
        state.update(backend=be, batcher=batcher)
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.pool.shutdown(wait=False)

    deps = [Depends(HTTPBearer(auto_error=False))] if token else []
    app = FastAPI(title="retrodb", lifespan=lifespan, description=__doc__.split("\n\n")[0])
    app.add_middleware(Guard, token=token)
    app.add_exception_handler(RequestValidationError,
                              lambda r, e: JSONResponse(*error_body(e.errors())))
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, http_error)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the database is loaded: chunks, index generation, batching counters
        (of this worker process)."""
        be, b = state["backend"], state["batcher"]
        return JSONResponse({**be.health(), "batching": {
            **b.counters, **be.stats, "max_batch": b.max_batch, "wait_ms": b.wait * 1000}})

    @app.post("/query", dependencies=deps)
    async def query(req: QueryRequest) -> JSONResponse:
        """The k nearest chunks of each text, best first, with continuation and source."""
        for i, t in enumerate(req.texts):
            if not t.strip():
                raise Invalid(422, f"texts[{i}]", "empty; give the text to search for")
        rows = await state["batcher"].submit("query", (req.k,), texts=req.texts)
        return JSONResponse({"results": rows})

    @app.post("/neighbours", dependencies=deps)
    async def neighbours(req: NeighboursRequest) -> JSONResponse:
        """RETRO neighbours of chunks given by id (their stored keys) or by token ids:
        ids, scores, token blocks [N, F] and their real-token mask (-1: all padding)."""
        be: Backend = state["backend"]
        if be.fs is None:
            raise Invalid(503, "neighbours", be.nb_error or "unavailable")
        if (req.chunk_ids is None) == (req.tokens is None):
            raise Invalid(422, "chunk_ids", "give either chunk_ids or tokens, not both")
        if req.tokens is not None and req.exclude_same_doc:
            raise Invalid(422, "exclude_same_doc", "not allowed with tokens (a token "
                          "query has no document); exclude_overlap removes copied text")
        if req.tokens is not None:
            texts, rows = be.token_rows(req.tokens)
            kw: dict = {"texts": texts, "qrows": rows}
        else:
            kw = {"ids": be.chunk_ids(req.chunk_ids)}
        same_doc = req.tokens is None and req.exclude_same_doc is not False
        key = (req.k, req.tokens is not None, same_doc, req.exclude_validation,
               req.exclude_overlap)
        return JSONResponse(await state["batcher"].submit("neighbours", key, **kw))

    return app


def app_from_env() -> FastAPI:
    """The app of a uvicorn worker process, from the settings `retrodb serve` put in the
    environment (RETRODB_SERVE, JSON); the token is read from its file."""
    cfg = ServeConfig.model_validate_json(os.environ[ENV])
    with open(cfg.token_file or os.devnull, encoding="utf-8") as f:
        token = f.readline().strip() or None
    return create_app(cfg.db, token, cfg.max_batch, cfg.batch_wait_ms, cfg.set, cfg.threads)
