"""Executors: where shard functions run. The shard function is the same under each.

`imap(fn, items, ordered=...)` yields `(item, fn(item))` pairs. Ordered mode keeps at
most `window` items in flight, so a stage that streams an unbounded input (chunk)
holds a bounded amount of it in memory.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
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

    def terminate(self) -> None:
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

    def terminate(self) -> None:
        """Stop now: kill the workers instead of waiting for the shards they hold (a
        shard can take hours); their temporary files are removed by the next run."""
        for p in list((getattr(self.pool, "_processes", None) or {}).values()):
            p.terminate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:  # an error or Ctrl-C: do not wait for running shards
            self.terminate()
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


class RayExecutor:
    """Runs the same functions as Ray tasks on a cluster (or a local Ray).

    Each task calls `fn` in a Ray worker process; the initializer runs once per worker
    process (cached), so a tokenizer or a model is loaded once and reused. Tasks whose
    worker dies are retried by Ray (`max_retries`). Ordered mode keeps at most `window`
    tasks in flight, as the local executors do.
    """

    def __init__(self, address: str | None = None, initializer: Callable | None = None,
                 initargs: tuple = (), num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 3, window: int | None = None):
        try:
            import ray
        except ImportError:
            from .errors import RetrodbError

            raise RetrodbError("--executor ray needs Ray: pip install 'retrodb[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                from .errors import RetrodbError

                raise RetrodbError(f"--ray-address {address}: cannot connect to Ray "
                                   f"({str(e).splitlines()[0][:200]})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, cpus // max(int(num_cpus), 1))
        self.window = window or 2 * self.workers
        self.initializer = initializer
        # put once: every task receives the reference, not another copy of the data
        self.initargs = ray.put(initargs)
        self.tag = uuid.uuid4().hex  # identifies this initializer call in each worker
        self.remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                                 max_retries=max_retries, retry_exceptions=False)(_ray_call)

    def imap(self, fn: Callable, items: Iterable, ordered: bool = True,
             key: Callable[[Any], Any] | None = None) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
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
                ref = self.remote.remote(self.tag, self.initializer, self.initargs, fn,
                                         key(item) if key else item)
                inflight.append((item, ref))
            if not inflight:
                return
            if ordered:
                item, ref = inflight.popleft()
                yield item, ray.get(ref)
            else:
                ready, _ = ray.wait([r for _, r in inflight], num_returns=1)
                pair = next(p for p in inflight if p[1] == ready[0])
                inflight.remove(pair)
                yield pair[0], ray.get(pair[1])

    def close(self) -> None:
        pass  # the Ray runtime belongs to the caller (or ends with this process)

    def terminate(self) -> None:
        pass  # tasks in flight finish or are dropped with the driver; the runner resumes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_RAY_INIT: set = set()


def _ray_call(tag: str, initializer: Callable | None, initargs: tuple, fn: Callable,
              item: Any) -> Any:
    """Ray task body: run the initializer once per worker process, then `fn(item)`."""
    if initializer is not None and tag not in _RAY_INIT:
        initializer(*initargs)
        _RAY_INIT.add(tag)
    return fn(item)


@dataclass(frozen=True)
class ExecutorSpec:
    """Where shard functions run; mirrors --executor, --workers and --ray-address."""

    kind: str = "local"  # --executor: "local" (processes on this machine) or "ray"
    workers: int = 1  # --workers: local processes (ignored by Ray: it uses the cluster)
    ray_address: str | None = None  # --ray-address: None starts or joins a local Ray

    def validate(self) -> None:
        from .errors import RetrodbError

        if self.kind not in ("local", "ray"):
            raise RetrodbError(f"--executor {self.kind}: use local or ray")
        if self.workers <= 0:
            raise RetrodbError(f"--workers {self.workers}: must be at least 1")

    def make(self, initializer: Callable | None = None, initargs: tuple = (),
             num_gpus: float = 0):
        if self.kind == "ray":
            return RayExecutor(self.ray_address, initializer, initargs, num_gpus=num_gpus)
        return local_executor(self.workers, initializer, initargs)


def local_executor(workers: int, initializer: Callable | None = None,
                   initargs: tuple = ()) -> InProcessExecutor | ProcessExecutor:
    """In-process for one worker, else a process pool."""
    if workers <= 1:
        return InProcessExecutor(initializer, initargs)
    return ProcessExecutor(workers, initializer, initargs)
