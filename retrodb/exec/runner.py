"""The one runner: pending shards, executor, atomic publish, manifest, resume.

`run_stage(stage, executor_spec)`:
  1. takes the stage directory's lock (a second writer is refused at once);
  2. asks the stage for its tasks (`stage.tasks(manifest)`, one per input unit);
  3. keeps those whose output entry is missing, whose identity changed (its input shard
     was rebuilt, the trained index changed, ...) or whose files are missing or
     corrupt (size and time, then sha256 of changed files), and drops entries of units
     that no longer exist;
  4. runs them on the executor; each worker writes its shard to temporary files and
     publishes them (rename, or one upload), then this process records the entry.

A crash at any point leaves complete shards and a manifest naming only complete
shards; the same command resumes where it stopped, and the result is byte-identical to
an uninterrupted run because every shard is a function of its task alone.

Ordered stages (chunk): ids are global and dense, so a shard's first id is the sum of
the counts of every shard before it. Each task is first *counted* (the worker tokenises
its split into a spill file and reports its counts); as soon as the counts of all
earlier tasks are known, the task is *run* with its offsets (the worker turns its spill
into the final shard). A task whose offsets are known when it is handed out (the first
one, every one with one worker, a rebuilt shard) is run directly, without a spill.
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import RetrodbError
from ..core.faults import point
from ..core.manifest import Manifest, entry_records
from ..core.progress import NoteFn, Progress, ProgressFn
from . import worker as W
from .executors import ExecutorSpec
from .stage import Task

FLUSH_EVERY = 5.0  # seconds between manifest writes while shards complete


@dataclass
class RunReport:
    entries: list[dict] = field(default_factory=list)  # recorded by this run
    tasks: int = 0  # input units in all
    skipped: int = 0  # already current
    redone: int = 0  # had an entry, but stale or with bad files: recomputed
    dropped: int = 0  # entries whose input unit no longer exists
    seconds: float = 0.0


def pending(m: Manifest, tasks: list[Task], check: str = "quick",
            valid=None) -> tuple[list[Task], int]:
    """Tasks whose shard is not current; and how many of them had an entry. `valid`
    (the stage's, optional) looks inside a file for what its entry cannot show."""
    stats = m.listing()
    todo, redo = [], 0
    for t in tasks:
        e = m.entry(t.shard)
        if e is None:
            todo.append(t)
        elif any(e.get(k) != v for k, v in t.identity.items()) or \
                m.bad_files(e, check, stats) or (valid is not None and not valid(e)):
            todo.append(t)
            redo += 1
    return todo, redo


def drop_orphans(m: Manifest, tasks: list[Task]) -> int:
    """Remove entries (and files) of shards that no task produces any more."""
    live = {t.shard for t in tasks}
    gone = [e for e in m.shards if e["shard"] not in live]
    for e in gone:
        for rec in entry_records(e):
            m.path_of(rec["file"]).remove()
        m.drop(e["shard"])
    return len(gone)


class _Progress:
    """Units done per task (workers may report inside a shard), summed for the user."""

    def __init__(self, stage, todo: list[Task], on_progress: ProgressFn | None,
                 on_note: NoteFn | None):
        self.p = Progress(getattr(stage, "label", stage.name),
                          0, sum(t.units for t in todo), stage.unit)
        self.on_progress, self.on_note = on_progress, on_note
        self.lock = threading.Lock()
        self.reported = 0.0  # units reported from inside shards not yet completed
        self.by_worker: dict[str, float] = {}
        self.notes: list[str] = []

    def event(self, kind: str, label: str, payload: Any) -> None:
        with self.lock:
            if kind == "progress":
                self.reported += payload
                self.p.done += payload
                self.by_worker[label] = self.by_worker.get(label, 0) + payload
                if len(self.by_worker) > 1:  # units done per worker, e.g. per GPU
                    self.p.workers = dict(sorted(self.by_worker.items()))
                self._emit()
            elif kind == "note":
                msg = f"{label}: {payload}"
                if msg not in self.notes:
                    self.notes.append(msg)
                    if self.on_note:
                        self.on_note(msg)

    def finished(self, task: Task, reported: float | None = None) -> None:
        """A task is done: count its units exactly once, whatever was reported."""
        with self.lock:
            self.p.done += task.units - min(self.reported, task.units)
            self.reported = max(0.0, self.reported - task.units)
            self._emit()

    def _emit(self) -> None:
        if self.on_progress:
            self.on_progress(self.p)


def run_stage(stage, spec: ExecutorSpec, on_progress: ProgressFn | None = None,
              on_note: NoteFn | None = None, check: str = "quick",
              prune: bool = True, locked: bool = False) -> RunReport:
    """Bring `stage`'s output up to date (see the module docstring). `locked`: the
    caller already holds the stage directory's lock."""
    t0 = time.time()
    rep = RunReport()
    with (nullcontext() if locked else stage.out.lock(stage.name)):
        m = Manifest(stage.out, stage.name, flush_every=FLUSH_EVERY)
        tasks = stage.tasks(m)
        rep.tasks = len(tasks)
        if prune:
            rep.dropped = drop_orphans(m, tasks)
        todo, rep.redone = pending(m, tasks, check, getattr(stage, "valid", None))
        rep.skipped = len(tasks) - len(todo)
        try:
            if todo:
                _execute(stage, spec, m, tasks, todo, rep, on_progress, on_note)
            finish = getattr(stage, "finished", None)
            if finish is not None:
                finish(m, rep)
        except BaseException as e:
            for d in [stage.out] + list(getattr(stage, "extra_dirs", ())):
                d.storage.remove_tmp(d.rel)  # of workers stopped mid-shard
            failed = getattr(stage, "failed", None)
            if failed is not None:
                failed(m, e)
            raise
        finally:
            m.flush()
    rep.seconds = round(time.time() - t0, 3)
    return rep


def _execute(stage, spec: ExecutorSpec, m: Manifest, tasks: list[Task], todo: list[Task],
             rep: RunReport, on_progress, on_note) -> None:
    from concurrent.futures.process import BrokenProcessPool

    prog = _Progress(stage, todo, on_progress, on_note)
    prog._emit()
    token = uuid.uuid4().hex
    try:
        with spec.make(prog.event) as ex:
            if getattr(stage, "ordered", False):
                _run_ordered(stage, ex, token, m, tasks, todo, prog, rep)
            else:
                _run_unordered(stage, ex, token, m, todo, prog, rep)
    except BrokenProcessPool:
        raise RetrodbError(f"{stage.out}: a worker process died (killed, out of memory, or "
                           "its device was lost); the shards it finished are kept: rerun "
                           "the same command to resume") from None
    finally:
        W.close_run(token)  # the in-process worker's model or index


def _record(m: Manifest, entry: dict, rep: RunReport) -> None:
    m.record(entry)
    point("shard.recorded")
    rep.entries.append(entry)


def _run_unordered(stage, ex, token: str, m: Manifest, todo: list[Task], prog,
                   rep: RunReport) -> None:
    it = iter(sorted(todo, key=lambda t: t.shard))
    inflight: dict[Any, Task] = {}
    window = ex.window
    while True:
        while len(inflight) < window:
            t = next(it, None)
            if t is None:
                break
            inflight[ex.submit(W.call, token, stage, "run", t)] = t
        if not inflight:
            return
        for h in ex.wait(list(inflight), timeout=1.0):
            t = inflight.pop(h)
            _record(m, ex.result(h), rep)
            prog.finished(t)


def _run_ordered(stage, ex, token: str, m: Manifest, tasks: list[Task],
                 todo: list[Task], prog, rep: RunReport) -> None:
    """Count ahead, run in order of known offsets (see the module docstring)."""
    index = {t.shard: i for i, t in enumerate(tasks)}
    n = len(tasks)
    offsets: list[dict | None] = [None] * n
    counts: list[dict | None] = [None] * n
    offsets[0] = stage.start_offsets(m)
    waiting = {index[t.shard] for t in todo}  # not yet recorded by this run
    for i, t in enumerate(tasks):
        e = m.entry(t.shard)
        if e is not None:  # done, or a recorded shard to rebuild: its place is known
            offsets[i], counts[i] = stage.offsets_of(e), stage.counts_of(e)
    state: dict[int, str] = {}  # i -> "counting" | "counted" | "running"
    inflight: dict[Any, tuple[int, str]] = {}
    window = ex.window

    def propagate() -> None:
        for i in range(n - 1):
            if offsets[i + 1] is None and offsets[i] is not None and counts[i] is not None:
                offsets[i + 1] = stage.offsets_after(tasks[i], offsets[i], counts[i])

    def submit() -> None:
        for i in sorted(waiting):
            if len(inflight) >= window:
                return
            s = state.get(i)
            if offsets[i] is not None and s in (None, "counted"):
                task = tasks[i].with_offsets(offsets[i])
                inflight[ex.submit(W.call, token, stage, "run", task)] = (i, "run")
                state[i] = "running"
            elif offsets[i] is None and s is None:
                inflight[ex.submit(W.call, token, stage, "count", tasks[i])] = (i, "count")
                state[i] = "counting"

    while waiting:
        propagate()
        submit()
        if not inflight:  # pragma: no cover - a task neither countable nor runnable
            raise RuntimeError("ordered stage stalled")
        for h in ex.wait(list(inflight), timeout=1.0):
            i, mode = inflight.pop(h)
            result = ex.result(h)
            if mode == "count":
                counts[i] = result
                state[i] = "counted"
                continue
            _record(m, result, rep)
            counts[i] = stage.counts_of(result)
            waiting.discard(i)
            prog.finished(tasks[i])


def recompute(stage, task: Task, scratch) -> dict[str, str]:
    """Compute one shard again into `scratch` (a local directory), in this process;
    return the sha256 of each file by its name in the manifest entry (`verify`)."""
    from .stage import Outputs, WorkerEnv, main_output

    worker = stage.open_worker(WorkerEnv())
    out = Outputs(stage.out, main_output(stage, task), scratch=scratch)
    try:
        worker.run(task, out)
        return out.digests()
    finally:
        out.discard()
        close = getattr(worker, "close", None)
        if close is not None:
            close()
