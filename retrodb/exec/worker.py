"""The worker side of every executor: one process's environment and its stage workers.

This module holds the only per-process state of retrodb: the `WorkerEnv` an executor
gave this process (device, threads, progress channel) and, per run, the `ShardWorker`
a stage opened here (a loaded model, tokenizer or index), reused by every shard this
process runs for that run. Stages themselves keep no module-level state.
"""

from __future__ import annotations

from typing import Any

from ..core.faults import point
from .stage import Outputs, Task, WorkerEnv, main_output

_ENV: list[WorkerEnv] = [WorkerEnv()]  # this process's environment (one element)
_OPEN: dict[str, Any] = {}  # run token -> the ShardWorker its stage opened here


def set_env(env: WorkerEnv) -> None:
    _ENV[0] = env


def env() -> WorkerEnv:
    return _ENV[0]


def close_run(token: str) -> None:
    """Forget a run's stage worker in this process (frees its model or index)."""
    w = _OPEN.pop(token, None)
    close = getattr(w, "close", None)
    if close is not None:
        close()


def stage_worker(token: str, stage):
    w = _OPEN.get(token)
    if w is None:
        w = _OPEN[token] = stage.open_worker(env())
    return w


def call(token: str, stage, mode: str, task: Task) -> dict:
    """Run one task in this process. Modes: "run" writes and publishes the shard and
    returns its manifest entry; "count" (ordered stages) returns the task's counts."""
    worker = stage_worker(token, stage)
    if mode == "count":
        return worker.count(task)
    out = Outputs(stage.out, main_output(stage, task))
    try:
        stats = worker.run(task, out)
        point("shard.written")
        records = out.publish()
    except BaseException:
        out.discard()
        raise
    point("shard.published")
    main, extra = records[0], records[1:]
    entry = {"shard": task.shard, **main, **({"extra": extra} if extra else {}),
             **task.identity, **stats}
    entry.setdefault("first_id", task.source.get("first_id"))
    return entry
