"""Executors: where shard functions run. The shard function is the same under each.

`imap(fn, items, ordered=...)` yields `(item, fn(item))` pairs. Ordered mode keeps at
most `window` items in flight, so a stage that streams an unbounded input (chunk)
holds a bounded amount of it in memory.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator


class InProcessExecutor:
    """Runs everything in this process, one item at a time."""

    workers = 1

    def __init__(self, initializer: Callable | None = None, initargs: tuple = ()):
        if initializer is not None:
            initializer(*initargs)

    def imap(self, fn: Callable, items: Iterable, ordered: bool = True,
             key: Callable[[Any], Any] | None = None) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(key(item) if key else item)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProcessExecutor:
    """A pool of `workers` processes (spawned: safe with threaded libraries)."""

    def __init__(self, workers: int, initializer: Callable | None = None,
                 initargs: tuple = (), window: int | None = None):
        self.workers = workers
        self.window = window or 2 * workers
        self.pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                        initializer=_worker_init,
                                        initargs=(initializer, initargs))

    def imap(self, fn: Callable, items: Iterable, ordered: bool = True,
             key: Callable[[Any], Any] | None = None) -> Iterator[tuple[Any, Any]]:
        inflight: deque = deque()
        it = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(inflight) < self.window:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                inflight.append((item, self.pool.submit(fn, key(item) if key else item)))
            if not inflight:
                return
            if ordered:
                item, fut = inflight.popleft()
                yield item, fut.result()
            else:
                wait([f for _, f in inflight], return_when=FIRST_COMPLETED)
                for pair in [p for p in inflight if p[1].done()]:
                    inflight.remove(pair)
                    yield pair[0], pair[1].result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _worker_init(initializer: Callable | None, initargs: tuple) -> None:
    """Make a worker die with its parent (a killed run must not leave orphans)."""
    _die_with_parent()
    if initializer is not None:
        initializer(*initargs)


def _die_with_parent() -> None:
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def local_executor(workers: int, initializer: Callable | None = None,
                   initargs: tuple = ()) -> InProcessExecutor | ProcessExecutor:
    """In-process for one worker, else a process pool."""
    if workers <= 1:
        return InProcessExecutor(initializer, initargs)
    return ProcessExecutor(workers, initializer, initargs)
