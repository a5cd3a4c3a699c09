"""`retrodb serve`: the real server on a free localhost port, called with httpx.

One server (1 worker, a token) answers most tests; a second one (2 workers) is stopped
and continued under load. Answers are compared with the in-process retriever and with
the precomputed neighbour set of the same database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dbread import read_chunks
from index_fixtures import copy_db
from serve_process import Server, connections, workers_of

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TOKEN = "test-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served_db(indexed_db, tmp_path_factory) -> Path:
    """The example corpus, indexed, with a neighbour set (k=2, 30% validation)."""
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours

    db = copy_db(indexed_db, tmp_path_factory.mktemp("serve") / "db")
    build_neighbours(db, NeighboursConfig(k=2, val_fraction=0.3, recall_queries=300))
    return db


@pytest.fixture(scope="module")
def server(served_db, tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    (d / "token").write_text(TOKEN + "\n")
    before = _files(served_db)
    s = Server(served_db, d / "serve.log", "--token-file", str(d / "token"))
    s.files_before = before
    yield s
    s.stop()


def _files(db: Path) -> dict[str, tuple]:
    """Every file and directory of a database: (size, mtime) of files."""
    return {str(p.relative_to(db)): (p.stat().st_size, p.stat().st_mtime_ns)
            if p.is_file() else "dir" for p in db.rglob("*")}


@pytest.fixture(scope="module")
def local(served_db):
    """The in-process retriever: what the service must answer."""
    import retrodb

    return retrodb.open(served_db)


@pytest.fixture(scope="module")
def unique_chunks(served_db) -> list[dict]:
    """Full chunks whose text occurs once (each is its own best hit)."""
    chunks = read_chunks(served_db).to_pylist()
    counts = Counter(c["text"].strip() for c in chunks)
    picks = [c for c in chunks if counts[c["text"].strip()] == 1 and c["length"] == 64]
    return picks[:: max(1, len(picks) // 48)][:48]


def post(url: str, path: str, body, headers=AUTH, **kw) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=headers, timeout=60, **kw)


def test_health_openapi_and_loopback_only(server, served_db):
    r = httpx.get(server.url + "/health", timeout=10)  # no token needed
    h = r.json()
    assert r.status_code == 200 and h["status"] == "ok"
    assert h["chunks"] == 874 and h["index"]["generation"] >= 1
    assert h["neighbours"]["available"] and h["neighbours"]["set"] == "train"
    assert h["neighbours"]["nprobe"] == _set_manifest(served_db)["nprobe"]
    assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 401
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=10).json()
    assert {"/query", "/neighbours", "/health"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs", headers=AUTH, timeout=10).status_code == 200
    # listening on 127.0.0.1 only (the default --host)
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A"] if Path("/proc/net/tcp").exists() else []
    mine = [a for a in listening if int(a.split(":")[1], 16) == server.port]
    assert mine == ["0100007F:%04X" % server.port], mine
    assert server.url.startswith("http://127.0.0.1:")


def _set_manifest(db: Path) -> dict:
    import json

    return json.loads((db / "neighbours" / "train" / "manifest.json").read_text())


def test_query_equals_in_process_search(server, local):
    texts = ["How do I define a class?", "reading a file line by line",
             "the for statement iterates over a sequence", "exceptions and try/except",
             "dictionary keys and values", "unicode strings and bytes"]
    r = post(server.url, "/query", {"texts": texts, "k": 4})
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    want = local.search(texts, k=4)
    assert len(got) == len(texts)
    for g, w in zip(got, want):
        assert [h["chunk_id"] for h in g] == [h.chunk_id for h in w]
        for gh, wh in zip(g, w):
            d = wh.to_dict()
            assert gh["score"] == pytest.approx(d.pop("score"), abs=1e-4)
            assert {k: gh[k] for k in d} == d  # text, continuation, source, position...
            assert {"chunk_id", "doc_id", "score", "text", "continuation", "source",
                    "position"} <= set(gh)


def test_neighbours_by_chunk_id_equal_the_precomputed_set(server, served_db):
    from retrodb.stores.neighbour_table import NeighbourTable
    from retrodb.stores.tokens import TokenStore

    ids = list(range(0, 874, 19))  # 46 chunks over every document
    r = post(server.url, "/neighbours", {"chunk_ids": ids, "k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array(body["neighbours"])
    want, _ = NeighbourTable(served_db).lookup(np.array(ids))
    assert (got == want).all(), np.argwhere(got != want)
    store = TokenStore(served_db, build=False)
    docs = store.doc_ids(np.array(ids))
    assert (store.doc_ids(got) != docs[:, None]).all()  # never the query's own document
    blocks, mask = np.array(body["blocks"]), np.array(body["mask"], dtype=bool)
    assert blocks.shape == mask.shape == (len(ids), 2, 128)
    assert (blocks == store.neighbour_blocks(got)).all()
    n, f = store.rows(got), store.rows(store.continuation_ids(got))
    assert (mask.sum(-1) == n["length"] + f["length"]).all()
    assert not blocks[~mask].any()  # padding is 0


def test_neighbours_by_token_ids(server, served_db, local):
    from retrodb.core.db import Database
    from retrodb.stages.neighbours.search import FilteredSearch
    from retrodb.stores.split import load_split
    from retrodb.stores.tokens import TokenStore

    store = TokenStore(served_db, build=False)
    split = load_split(served_db)
    ids = np.arange(0, 874, 53)
    ids = ids[~split.is_validation(store.doc_ids(ids))][:8]
    rows = store.rows(ids)
    toks = [r["tokens"][:r["length"]].tolist() for r in rows]
    r = post(server.url, "/neighbours", {"tokens": toks, "k": 2})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["neighbours"])
    # the same search in process: decoded, embedded, query id -1, no own document
    m = _set_manifest(served_db)
    tok = Database(served_db).tokenizer().load()
    fs = FilteredSearch(served_db, None, 2, m["candidates"], False, split, None, 4096)
    x = local.embed([tok.decode(t) for t in toks])
    want, scores = fs.search(x, np.full(len(ids), -1), m["nprobe"], {})
    assert (got == want).all()
    assert (got[:, 0] == ids).mean() >= 0.75 and (scores[:, 0] > 0.9).all()  # itself
    # α = 0.2: a neighbour repeating the sent tokens is dropped (r measured on them)
    r = post(server.url, "/neighbours", {"tokens": toks, "k": 2, "exclude_overlap": 0.2})
    assert r.status_code == 200, r.text
    assert not (np.array(r.json()["neighbours"]) == ids[:, None]).any()


@pytest.mark.parametrize("body,status,fld", [
    (b"{not json", 400, "body"),
    ({"texts": "a text"}, 422, "texts"),
    ({"texts": [1, 2]}, 422, "texts[0]"),
    ({"texts": ["a"], "k": "4"}, 422, "k"),
    ({"texts": ["a"], "k": 0}, 422, "k"),
    ({"texts": ["a"], "k": 101}, 422, "k"),
    ({"texts": ["a"] * 513}, 422, "texts"),
    ({"texts": ["ok", "x" * 20_001]}, 422, "texts[1]"),
    ({"texts": ["  "]}, 422, "texts[0]"),
    ({"texts": ["a"], "kk": 3}, 422, "kk"),
    ({"texts": ["x" * 19_999] * 60}, 413, "body"),
])
def test_bad_query_requests_name_the_field(server, body, status, fld):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + "/query", headers={**AUTH, "Content-Type":
                                                   "application/json"}, timeout=30, **kw)
    assert r.status_code == status, r.text
    e = r.json()
    assert e["field"] == fld and e["error"].startswith(f"{fld}: "), e


@pytest.mark.parametrize("body,fld", [
    ({"chunk_ids": [1, 874]}, "chunk_ids[1]"),
    ({"chunk_ids": [1], "tokens": [[5]]}, "chunk_ids"),
    ({}, "chunk_ids"),
    ({"tokens": [[2023, 2003]], "exclude_same_doc": True}, "exclude_same_doc"),
    ({"tokens": [list(range(1000, 1065))]}, "tokens[0]"),
    ({"tokens": [[10 ** 9]]}, "tokens[0]"),
    ({"chunk_ids": [1], "exclude_overlap": 1.5}, "exclude_overlap"),
    ({"chunk_ids": [1], "k": 0}, "k"),
    ({"chunk_ids": ["1"]}, "chunk_ids[0]"),
])
def test_bad_neighbour_requests_name_the_field(server, body, fld):
    r = post(server.url, "/neighbours", body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == fld, r.json()


def test_a_token_is_required_and_compared(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = post(server.url, "/query", {"texts": ["a"]}, headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "Authorization", r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert post(server.url, "/neighbours", {"chunk_ids": [1]}, headers={}).status_code == 401


async def _many(url: str, texts: list[str], clients: int, headers=AUTH) -> list:
    """Each text as its own request, `clients` at a time: (status, body, seconds)."""
    sem = asyncio.Semaphore(clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60,
                                 limits=httpx.Limits(max_connections=clients)) as c:
        async def one(t):
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/query", json={"texts": [t], "k": 1})
                return r.status_code, r.json(), time.perf_counter() - t0
        return await asyncio.gather(*(one(t) for t in texts))


def test_concurrent_clients_are_batched(server, unique_chunks):
    chunks = unique_chunks[:32]
    before = httpx.get(server.url + "/health", timeout=10).json()["batching"]
    out = asyncio.run(_many(server.url, [c["text"] for c in chunks], 32))
    after = httpx.get(server.url + "/health", timeout=10).json()["batching"]
    assert all(s == 200 for s, _, _ in out)
    assert [b["results"][0][0]["chunk_id"] for _, b, _ in out] == \
        [c["chunk_id"] for c in chunks]
    assert after["requests"] - before["requests"] == 32
    calls = after["model_calls"] - before["model_calls"]
    assert 1 <= calls < 32, (before, after)
    assert after["largest_batch"] > 1


def test_a_client_that_disconnects_does_not_disturb_the_others(server, unique_chunks):
    host, port = "127.0.0.1", server.port
    body = ('{"texts": [%s], "k": 4}' % ", ".join(['"what is a generator?"'] * 64)).encode()
    head = (f"POST /query HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {{n}}\r\n\r\n")

    def rude():
        for _ in range(3):
            with socket.create_connection((host, port)) as s:  # a whole request, gone
                s.sendall(head.format(n=len(body)).encode() + body)
            with socket.create_connection((host, port)) as s:  # half a body, gone
                s.sendall(head.format(n=len(body)).encode() + body[:50])

    t = threading.Thread(target=rude)
    t.start()
    chunks = unique_chunks[:12]
    out = asyncio.run(_many(server.url, [c["text"] for c in chunks], 4))
    t.join()
    assert [b["results"][0][0]["chunk_id"] for _, b, _ in out] == \
        [c["chunk_id"] for c in chunks]
    r = post(server.url, "/query", {"texts": [chunks[0]["text"]], "k": 1})
    assert r.status_code == 200 and r.json()["results"][0][0]["chunk_id"] == \
        chunks[0]["chunk_id"]


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc")
def test_two_workers_stop_and_continue_lose_nothing(served_db, unique_chunks, tmp_path):
    s = Server(served_db, tmp_path / "serve.log", "--workers", "2")
    try:
        seen, end = set(), time.time() + 60  # both workers loaded and answering
        while len(seen) < 2 and time.time() < end:
            seen.add(httpx.get(s.url + "/health", timeout=30).json()["pid"])
            time.sleep(0.05)
        assert seen <= set(workers_of(s.proc.pid)) and len(workers_of(s.proc.pid)) == 2
        chunks = unique_chunks[:40]
        stopped: list[int] = []

        def pause():  # stop the worker holding the most client connections, 2 s
            end = time.time() + 30
            while time.time() < end:
                held = {w: connections(w, s.port) for w in workers_of(s.proc.pid)}
                if sum(held.values()) >= 4:
                    break
                time.sleep(0.01)
            stopped.append(max(held, key=held.get))
            os.kill(stopped[0], signal.SIGSTOP)
            time.sleep(2.0)  # under uvicorn's 5 s health check: the worker is kept
            os.kill(stopped[0], signal.SIGCONT)

        t = threading.Thread(target=pause)
        t.start()
        try:
            out = asyncio.run(_many(s.url, [c["text"] for c in chunks] * 3, 8, headers={}))
        finally:
            t.join()
        assert all(code == 200 for code, _, _ in out), out
        got = [b["results"][0][0]["chunk_id"] for _, b, _ in out]
        assert got == [c["chunk_id"] for c in chunks] * 3  # no wrong answer
        assert max(sec for _, _, sec in out) > 1.5  # some waited for the stopped worker
        assert stopped[0] in workers_of(s.proc.pid)  # the same worker, not a replacement
    finally:
        for w in stopped:
            os.kill(w, signal.SIGCONT)
        s.stop()


def test_cli_errors_are_one_line(served_db, fake_db, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}

    def serve(*args):
        return subprocess.run([sys.executable, "-m", "retrodb.cli.main", "serve", *args],
                              capture_output=True, text=True, env=env, timeout=120)

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [
            ((str(tmp_path / "nothing"),), "not a retrodb database"),
            ((str(fake_db),), "no merged index"),
            ((str(served_db), "--token-file", str(tmp_path / "missing")), "--token-file"),
            ((str(served_db), "--port", str(busy.getsockname()[1])), "already in use"),
            ((str(served_db), "--workers", "0"), "--workers 0"),
        ]
        for args, msg in cases:
            p = serve(*args)
            assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    finally:
        busy.close()


def test_remote_retriever_client(server, unique_chunks):
    from retrodb.core.errors import RetrodbError
    from retrodb.query.client import RemoteRetriever

    texts = [c["text"] for c in unique_chunks[:3]]
    with RemoteRetriever(server.url, token=TOKEN) as r:
        hits = r.search(texts, k=2)
        assert [h[0]["chunk_id"] for h in hits] == [c["chunk_id"] for c in unique_chunks[:3]]
        nb = r.neighbours(chunk_ids=[3, 500], k=2)
        assert nb["neighbours"].shape == (2, 2) and nb["blocks"].shape == (2, 2, 128)
        assert nb["mask"].dtype == bool and nb["scores"].dtype == np.float32
        assert r.health()["chunks"] == 874
        with pytest.raises(RetrodbError, match="k: "):
            r.search(["a"], k=0)
    with RemoteRetriever(server.url) as r, pytest.raises(RetrodbError, match="401"):
        r.search(["a"])


def test_the_database_is_only_read(server, served_db):
    """Last: after every request above (and the 2-worker server), nothing was written
    into the database: no lock, no token store, no split, no cache."""
    assert _files(served_db) == server.files_before
