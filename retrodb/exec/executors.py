"""Executors: where shard work runs. One interface, three places:

    in process      one worker, this process (tests, small runs, one GPU)
    process pool    `--workers N` spawned processes, or one per GPU with `--gpus 0,1`
    Ray             `--executor ray`: Ray tasks on a cluster, a GPU per task with --gpus

`submit(fn, *args)` → handle; `wait(handles, timeout)` → the finished ones;
`result(handle)` → the value (or raises the worker's error). A GPU is a resource the
executor gives a worker (`WorkerEnv.device`), not a second code path. Workers report
progress and notes through the executor's `on_event(kind, label, payload)`.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from ..core.errors import RetrodbError
from ..core.util import cores, first_line
from . import worker as W
from .stage import WorkerEnv

EventFn = Callable[[str, str, Any], None]


@dataclass(frozen=True)
class ExecutorSpec:
    """Where shard work runs; mirrors --executor, --workers, --gpus, --ray-address."""

    kind: str = "local"  # --executor: "local" (this machine) or "ray"
    workers: int = 1  # --workers: local processes (ignored by Ray: the cluster decides)
    ray_address: str | None = None  # --ray-address: None starts or joins a local Ray
    gpus: tuple[int, ...] | None = None  # --gpus: CUDA devices (one worker each)
    threads: int | None = None  # cores per worker; None = this machine's / workers
    # "cpu": GPU workers compute on the CPU. Tests use it to run everything of --gpus
    # that is not a kernel (a worker per device, batch sizes, fp16 autocast, failures).
    gpu_backend: str = "cuda"

    def validate(self) -> None:
        if self.kind not in ("local", "ray"):
            raise RetrodbError(f"--executor {self.kind}: use local or ray")
        if self.workers <= 0:
            raise RetrodbError(f"--workers {self.workers}: must be at least 1")
        if self.kind == "ray" and self.workers != 1:
            raise RetrodbError("--workers: with --executor ray the cluster's resources "
                               "decide how many shards run at once; drop --workers")
        if self.gpus is not None:
            if not self.gpus:
                raise RetrodbError("--gpus: give device numbers, e.g. --gpus 0,1")
            if min(self.gpus) < 0:
                bad = min(self.gpus)
                raise RetrodbError(f"--gpus {bad}: device numbers start at 0, e.g. "
                                   "--gpus 0,1")
            if len(set(self.gpus)) != len(self.gpus):
                raise RetrodbError(f"--gpus {','.join(map(str, self.gpus))}: list each "
                                   "device number once, e.g. --gpus 0,1")
            if self.workers != 1:
                raise RetrodbError("--workers: with --gpus there is one worker per GPU; "
                                   "drop --workers")
        if self.threads is not None and self.threads <= 0:
            raise RetrodbError(f"threads {self.threads}: must be at least 1")

    def devices(self) -> list[str]:
        """One torch device per local worker; checks that the GPUs asked for exist.
        (On Ray: the kind of device every task gets.)"""
        if self.kind == "ray":
            return ["ray:cuda" if self.gpus is not None else "ray:cpu"]
        if self.gpus is None:
            return ["cpu"] * self.workers
        if self.gpu_backend == "cpu":
            return ["cpu"] * len(self.gpus)
        import torch

        flag = f"--gpus {','.join(map(str, self.gpus))}"
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no CUDA device"
            raise RetrodbError(f"{flag}: CUDA is not available (torch {torch.__version__}, "
                               f"{build}); omit --gpus to run on the CPU")
        n = torch.cuda.device_count()
        missing = [g for g in self.gpus if g >= n]
        if missing:
            raise RetrodbError(f"{flag}: no CUDA device {missing[0]} (this machine has "
                               f"{n}: 0..{n - 1})")
        return [f"cuda:{g}" for g in self.gpus]

    def make(self, on_event: EventFn | None = None):
        self.validate()
        on_event = on_event or (lambda kind, label, payload: None)
        if self.kind == "ray":
            return RayExecutor(self.ray_address, self.threads or 1,
                               1 if self.gpus is not None else 0)
        devices = self.devices()
        threads = self.threads or max(1, cores() // len(devices))
        gpu = self.gpus is not None
        labels = [f"gpu{g}" for g in self.gpus] if gpu else _labels(devices)
        if len(devices) == 1:
            return InProcessExecutor(devices[0], threads, on_event, gpu, labels[0])
        return ProcessExecutor(devices, threads, on_event, gpu, labels)


class _Done:
    """A finished in-process call."""

    def __init__(self, value=None, error: BaseException | None = None):
        self.value, self.error = value, error


class InProcessExecutor:
    """Runs every call in this process, at submit time."""

    slots = window = 1  # one call at a time, recorded before the next starts

    def __init__(self, device: str = "cpu", threads: int = 1, on_event: EventFn | None = None,
                 gpu: bool = False, label: str = "cpu"):
        on_event = on_event or (lambda kind, label, payload: None)
        self._saved = W.env()
        W.set_env(WorkerEnv(device, threads, lambda n: on_event("progress", label, n),
                            lambda msg: on_event("note", label, msg), label,
                            in_process=True, gpu=gpu))
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(device)

    def submit(self, fn: Callable, *args) -> _Done:
        try:
            return _Done(fn(*args))
        except Exception as e:  # handed back by result(), as a pool would
            return _Done(error=e)

    def wait(self, handles, timeout: float | None = None) -> list:
        return list(handles)

    def result(self, handle: _Done):
        if handle.error is not None:
            raise handle.error
        return handle.value

    def close(self) -> None:
        W.set_env(self._saved)

    def terminate(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ProcessExecutor:
    """A pool of spawned worker processes (safe with threaded libraries), each with its
    own device from `devices` and `threads` cores; they die with their parent."""

    def __init__(self, devices: list[str], threads: int, on_event: EventFn, gpu: bool,
                 labels: list[str]):
        ctx = mp.get_context("spawn")
        self.slots = len(devices)
        self.window = 2 * self.slots  # a task queued behind each running one
        self.events = ctx.Queue()
        device_q = ctx.Queue()
        for label, device in zip(labels, devices):
            device_q.put((label, device))
        self.pool = ProcessPoolExecutor(len(devices), mp_context=ctx,
                                        initializer=_process_init,
                                        initargs=(device_q, threads, self.events, gpu))
        self.on_event = on_event
        self.drainer = threading.Thread(target=self._drain, name="retrodb-events",
                                        daemon=True)
        self.drainer.start()

    def _drain(self) -> None:
        while True:
            ev = self.events.get()
            if ev is None:
                return
            self.on_event(*ev)

    def submit(self, fn: Callable, *args):
        return self.pool.submit(fn, *args)

    def wait(self, handles, timeout: float | None = None) -> list:
        done, _ = wait(list(handles), timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle):
        return handle.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.events.put(None)
        self.drainer.join(timeout=5)

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


def _labels(devices: list[str]) -> list[str]:
    """A label per worker: its device, CPU workers numbered (cpu0, cpu1)."""
    if devices[0] == "cpu":
        return [f"cpu{i}" for i in range(len(devices))]
    return list(devices)


def _process_init(device_q, threads: int, events, gpu: bool) -> None:
    """A pool worker: die with the parent, take a device, set up the environment."""
    _die_with_parent()
    label, device = device_q.get(timeout=120)
    W.set_env(WorkerEnv(device, threads, lambda n: events.put(("progress", label, n)),
                        lambda msg: events.put(("note", label, msg)), label, gpu=gpu))
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)


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
    """The same calls as Ray tasks on a cluster (or a local Ray). A task whose worker or
    node dies is retried by Ray (`max_retries`); a run whose driver dies is resumed by
    running the same command again. Stage workers are opened once per Ray worker
    process and reused, as in a local pool."""

    def __init__(self, address: str | None, num_cpus: float = 1, num_gpus: float = 0,
                 max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise RetrodbError("--executor ray needs Ray: pip install 'retrodb[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise RetrodbError(f"--ray-address {address}: cannot connect to Ray "
                                   f"({first_line(e)})") from None
        total = ray.cluster_resources()
        per = "GPU" if num_gpus else "CPU"
        self.slots = max(1, int(total.get(per, 1) // max(num_gpus or num_cpus, 1)))
        self.window = 2 * self.slots
        env = {"device": "cuda:0" if num_gpus else "cpu", "threads": int(num_cpus),
               "gpu": bool(num_gpus)}
        self.tag = uuid.uuid4().hex
        self.remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus,
                                 max_retries=max_retries, retry_exceptions=False)(_ray_call)
        self.env = env

    def submit(self, fn: Callable, *args):
        return self.remote.remote(self.env, fn, *args)

    def wait(self, handles, timeout: float | None = None) -> list:
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return ready

    def result(self, handle):
        return self.ray.get(handle)

    def close(self) -> None:
        pass  # the Ray runtime belongs to the caller (or ends with this process)

    def terminate(self) -> None:
        pass  # tasks in flight finish or are dropped with the driver; the runner resumes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ray_call(env: dict, fn: Callable, *args) -> Any:
    """Ray task body: this process's environment, then `fn(*args)`."""
    import os

    if W.env().label != f"ray-{os.getpid()}":
        W.set_env(WorkerEnv(env["device"], env["threads"], label=f"ray-{os.getpid()}",
                            gpu=env["gpu"]))
    return fn(*args)
