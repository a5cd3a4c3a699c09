"""`retrodb serve`: the database as an HTTP retrieval service (FastAPI on uvicorn)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Optional

import typer

from .common import err, escape, read_token, user_errors
from .options import DB_ARG, WORKERS

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_database(db: str) -> None:
    """What serving needs, checked before any worker starts and without loading the
    model: a database with keys and a current merged index."""
    from retrodb.core.db import Database
    from retrodb.core.errors import RetrodbError
    from retrodb.stores.searcher import merged_index

    d = Database(db)
    if not d.config().get("embedder"):
        raise RetrodbError(f"{d.root}: not embedded yet; run `retrodb embed --db {d.root}` "
                           f"and `retrodb index --db {d.root}` first")
    merged_index(d)


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken now: a port in use is one line, not a traceback."""
    from retrodb.core.errors import RetrodbError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise RetrodbError(f"--port {port}: {host}:{port} is already in use; choose "
                               "another --port (0: any free one)") from None
        raise RetrodbError(f"--host {host} --port {port}: cannot listen there "
                           f"({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


@user_errors
def serve_cli(
    db: str = DB_ARG,
    host: str = typer.Option("127.0.0.1", help="Address to listen on; 0.0.0.0 exposes "
                             "the service to the network (give --token-file then)."),
    port: int = typer.Option(8000, help="Port to listen on (0: any free port, printed)."),
    workers: int = WORKERS,
    token_file: Optional[str] = typer.Option(
        None, help="File whose first line is a secret: every request but /health then "
        "needs the header 'Authorization: Bearer <secret>'.", show_default=False),
    max_batch: int = typer.Option(256, help="Most texts (or chunk ids) embedded and "
                                  "searched together."),
    batch_wait_ms: float = typer.Option(5.0, help="Longest wait for more requests to "
                                        "join a batch (latency against throughput)."),
    set_name: str = typer.Option("train", "--set", help="Neighbour set whose calibrated "
                                 "nprobe and candidates /neighbours searches with [default: "
                                 "train; without it, the index's operating point].",
                                 show_default=False),
):
    """Serve the database over HTTP: /query (texts → nearest chunks), /neighbours
    (chunk ids or token ids → RETRO neighbour blocks), /health, and the OpenAPI page
    /docs. Requests of all clients are batched; the database is only read.

    Example: retrodb serve mydb --port 8000 --workers 2 --token-file secret.txt
    """
    from retrodb.core.errors import RetrodbError

    if not 0 <= port <= 65535:
        raise RetrodbError(f"--port {port}: must be in 0..65535")
    if workers < 1:
        raise RetrodbError(f"--workers {workers}: must be at least 1")
    if max_batch < 1:
        raise RetrodbError(f"--max-batch {max_batch}: must be at least 1")
    if not 0 <= batch_wait_ms <= 10_000:
        raise RetrodbError(f"--batch-wait-ms {batch_wait_ms}: must be in 0..10000")
    token = read_token(token_file) if token_file else None
    check_database(db)
    if host not in LOOPBACK and token is None:
        err.print(f"[yellow]note:[/] listening on {escape(host)} without --token-file: "
                  "anyone who can reach this port can query the database")
    sock = bind(host, port)
    try:
        run(db, sock, workers, token, token_file, max_batch, batch_wait_ms, set_name)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def run(db: str, sock: socket.socket, workers: int, token: Optional[str],
        token_file: Optional[str], max_batch: int, batch_wait_ms: float,
        set_name: str) -> None:
    import uvicorn

    from retrodb.core.errors import RetrodbError
    from retrodb.query import service

    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    opts = dict(log_level="warning", access_log=False, timeout_graceful_shutdown=10)
    if workers == 1:
        backend = service.Backend(service.ServeConfig(db=db, set=set_name))
        app = service.create_app(db, token, max_batch, batch_wait_ms, set_name,
                                 backend=backend)
        err.print(f"serving {escape(db)} at {url} (1 worker; API docs at {url}/docs)")
        uvicorn.Server(uvicorn.Config(app, **opts)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ[service.ENV] = service.ServeConfig(
        db=db, token_file=os.path.abspath(token_file) if token_file else None,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, set=set_name,
        threads=threads).model_dump_json()
    config = uvicorn.Config("retrodb.query.service:app_from_env", factory=True,
                            workers=workers, **opts)
    err.print(f"serving {escape(db)} at {url} ({workers} workers, each loading the "
              f"database; API docs at {url}/docs)")
    try:
        sup = Multiprocess(config, sockets=[sock])
    except TypeError:  # uvicorn < 0.30: the supervisor is given the target
        sup = Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock])
    sup.run()
    if any(getattr(p, "exitcode", None) == 3 for p in getattr(sup, "processes", [])):
        raise RetrodbError("a worker process could not open the database (see the "
                           "messages above); `retrodb serve` with --workers 1 shows why")
