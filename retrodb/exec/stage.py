"""The Stage protocol: what every shard stage tells the runner, and nothing more.

A stage is a small picklable object (its config and the `Database`). It knows its input
units and how one unit becomes one output shard; it does not know who runs it:

    stage.tasks()            one Task per input unit (a chunk shard, an input split),
                             in order; the runner decides which are pending
    stage.open_worker(env)   in a worker process, once: the state that is expensive to
                             build (a tokenizer, a model, a trained index)
    worker.run(task, out)    writes the shard to `out.main()` (+ `out.extra(loc)`) and
                             returns its statistics; the runner publishes and records it

Ordered stages (chunk: ids are prefix sums of the counts of earlier shards) also have
`worker.count(task)` → counts, and `stage.offsets_after(task, offsets, counts)` → the
offsets of the next task; `run` then receives `task.offsets`. See `runner.py`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from ..core.manifest import shard_name
from ..core.storage import Loc, sha256_file


@dataclass(frozen=True)
class Task:
    """One unit of work: output shard `shard`, made from `source`."""

    shard: int
    source: dict  # what the shard is made from: an input manifest entry, a split, ...
    # fields of the output entry that must equal these for the shard to be current
    # (e.g. {"source_sha256": ...}); a differing entry is recomputed
    identity: dict = field(default_factory=dict)
    units: float = 0  # work in the stage's progress unit (rows, bytes)
    offsets: dict | None = None  # ordered stages: where this shard's ids start

    def with_offsets(self, offsets: dict) -> "Task":
        return replace(self, offsets=offsets)


@dataclass
class WorkerEnv:
    """What a worker process was given: its device, its threads, a way to report."""

    device: str = "cpu"  # "cpu" or "cuda:N"
    threads: int = 1  # cores this worker may use
    report: Callable[[float], None] = lambda units: None  # progress within a shard
    note: Callable[[str], None] = lambda msg: None  # a one-line remark for the user
    label: str = "worker"  # how progress and notes name this worker
    # the coordinator's own process (one worker): leave its library thread settings
    in_process: bool = False
    gpu: bool = False  # a GPU worker (with `device` "cpu" only in tests of the GPU path)


class ShardWorker(Protocol):
    def run(self, task: Task, out: "Outputs") -> dict:
        """Write the shard; return its statistics (at least `rows`)."""
        ...


class Stage(Protocol):
    name: str  # the manifest's stage name ("embeddings")
    out: Loc  # the output directory
    suffix: str  # the shard file suffix (".npy")
    unit: str  # what Task.units counts ("chunks", "bytes", ...)
    ordered: bool  # counts first, then ids from prefix sums (chunk)

    def tasks(self) -> list[Task]:
        ...

    def open_worker(self, env: WorkerEnv) -> ShardWorker:
        ...


class Outputs:
    """The files one shard writes: local temporary paths now, published by the runner
    (renamed, or uploaded whole) once `run` returned, main file last."""

    def __init__(self, stage_out: Loc, main: Loc, scratch: Path | None = None):
        self.stage_out = stage_out
        self.target = main
        self.scratch = scratch  # recomputing (verify): temporary files go here instead
        self.files: list[tuple[Loc, Path]] = []

    def main(self) -> Path:
        return self._add(self.target)

    def extra(self, loc: Loc) -> Path:
        return self._add(loc)

    def _add(self, loc: Loc) -> Path:
        for known, tmp in self.files:
            if known == loc:
                return tmp
        if self.scratch is not None:
            tmp = self.scratch / loc.rel.replace("/", "__")
        else:
            tmp = loc.storage.scratch(loc.rel)
        tmp.unlink(missing_ok=True)
        self.files.append((loc, tmp))
        return tmp

    def digests(self) -> dict[str, str]:
        """sha256 of every written file by its name relative to the stage directory
        (what `verify` compares with the entry)."""
        return {posixpath.relpath(loc.rel, self.stage_out.rel or "."): sha256_file(tmp)
                for loc, tmp in self.files}

    def discard(self) -> None:
        for _, tmp in self.files:
            tmp.unlink(missing_ok=True)

    def publish(self) -> list[dict]:
        """Publish every file (extras first); their records, main file first."""
        from ..core.manifest import file_record

        extras = [(loc, tmp) for loc, tmp in self.files if loc != self.target]
        main = [(loc, tmp) for loc, tmp in self.files if loc == self.target]
        records = []
        for loc, tmp in extras + main:
            digest = sha256_file(tmp)
            loc.storage.publish(tmp, loc.rel)
            name = posixpath.relpath(loc.rel, self.stage_out.rel or ".")
            records.append(file_record(loc, name, digest))
        return records[-1:] + records[:-1]


def main_output(stage: Any, task: Task) -> Loc:
    return stage.out / shard_name(task.shard, stage.suffix)
