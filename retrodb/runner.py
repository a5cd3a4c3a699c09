"""The shared runner: manifests, atomic shard commits, resume, per-stage locks.

Every stage writes numbered shards (`00000.parquet`, `00000.npy`, ...) into its own
directory and records each finished shard in that directory's `manifest.json`:

    {"stage": "chunks", "format": 1, "shards": [{"shard": 0, "file": "00000.parquet",
      "rows": 500000, "first_id": 0, "bytes": ..., "sha256": ..., ...}, ...], ...}

A shard is written under a temporary name, fsynced and renamed; only then is its
manifest entry written (itself atomically). A shard without a manifest entry, or whose
file no longer matches its entry, is pending and is (re)computed on the next run.

Stages whose output shard is a function of one input shard use `run_shard_stage`;
it is executor-agnostic: the shard function runs wherever the executor puts it, and
only this process records completion.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import RetrodbError
from .faults import point
from .storage import atomic_path, read_json, remove_stale_tmp, sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT = 1


def shard_name(index: int, suffix: str) -> str:
    return f"{index:05d}{suffix}"


class Manifest:
    """The record of finished shards of one stage directory."""

    def __init__(self, directory: Path, stage: str):
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST
        self.stage = stage
        if self.path.exists():
            data = read_json(self.path)
            if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
                raise RetrodbError(f"{self.path}: not a retrodb manifest; restore it or "
                                   f"delete {self.directory} and rebuild that stage")
        else:
            data = {"stage": stage, "format": FORMAT, "shards": []}
        self.data: dict[str, Any] = data
        for e in self.shards:
            for name, _, _ in entry_files(e):
                self.path_of(name)  # refuse entries pointing outside the database

    def path_of(self, name: str) -> Path:
        """The file a manifest entry names; it must stay inside the database."""
        p = (self.directory / name).resolve()
        root = self.directory.resolve().parent
        if Path(name).is_absolute() or not p.is_relative_to(root):
            raise RetrodbError(f"{self.path}: entry names {name!r}, outside the database; "
                               "the manifest was edited or corrupted: restore it")
        return p

    @property
    def shards(self) -> list[dict]:
        return self.data["shards"]

    def entry(self, shard: int) -> dict | None:
        for e in self.shards:
            if e["shard"] == shard:
                return e
        return None

    @property
    def rows(self) -> int:
        return sum(e["rows"] for e in self.shards)

    @property
    def next_shard(self) -> int:
        return max((e["shard"] for e in self.shards), default=-1) + 1

    @property
    def next_id(self) -> int:
        """First id after the last shard: ids are dense across shards."""
        if not self.shards:
            return 0
        last = max(self.shards, key=lambda e: e["shard"])
        return last["first_id"] + last["rows"]

    def record(self, entry: dict | None = None, **top: Any) -> None:
        """Add or replace a shard entry and/or top-level fields, then save atomically."""
        if entry is not None:
            self.data["shards"] = [e for e in self.shards if e["shard"] != entry["shard"]]
            self.data["shards"].append(entry)
            self.data["shards"].sort(key=lambda e: e["shard"])
        self.data.update(top)
        write_json(self.path, self.data)

    def files_ok(self, entry: dict, checksum: bool = True) -> bool:
        """Whether every file of `entry` exists with its recorded size (and sha256)."""
        for name, size, digest in entry_files(entry):
            p = self.path_of(name)
            try:
                if p.stat().st_size != size:
                    return False
            except FileNotFoundError:
                return False
            if checksum and sha256_file(p) != digest:
                return False
        return True


def require_files(m: Manifest, fix: str) -> None:
    """Refuse a stage whose recorded files are missing or changed size (a deleted or
    truncated shard): one error naming the first, with what to do. A stat per file."""
    bad = []
    for e in m.shards:
        for name, size, _ in entry_files(e):
            p = m.path_of(name)
            try:
                if p.stat().st_size != size:
                    bad.append(p)
            except FileNotFoundError:
                bad.append(p)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RetrodbError(f"{bad[0]}: missing or truncated{more}; it is recorded in "
                           f"{m.path}: {fix}")


def entry_files(entry: dict) -> list[tuple[str, int, str]]:
    """(file, bytes, sha256) of every file a manifest entry covers.

    The main file is `file`; extra files are listed under `extra` as
    {"file": "../docs/00000.parquet", ...} relative to the stage directory.
    """
    out = [(entry["file"], entry["bytes"], entry["sha256"])]
    for x in entry.get("extra", []):
        out.append((x["file"], x["bytes"], x["sha256"]))
    return out


def file_record(path: Path, name: str) -> dict:
    return {"file": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@contextmanager
def stage_lock(directory: Path, stage: str) -> Iterator[None]:
    """Hold an exclusive lock on a stage directory; refuse a second writer at once."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RetrodbError(
                f"{directory}: another retrodb process (pid {other}) is writing the "
                f"{stage} stage of this database; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        remove_stale_tmp(directory)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# --------------------------------------------------------------------------------------
# Shard-to-shard stages


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: compute output shard `shard` from its input entry."""

    shard: int
    source: dict  # the input stage's manifest entry
    out: Path  # final output path; the function writes to a temporary path instead


def pending_tasks(src: Manifest, dst: Manifest, suffix: str,
                  checksum: bool = True) -> tuple[list[ShardTask], int]:
    """Input shards whose output is missing, stale or corrupt; and how many were redone.

    An output entry is stale when its input shard changed (different sha256), and
    corrupt when its file no longer matches the entry's size or checksum.
    """
    tasks, redo = [], 0
    for s in src.shards:
        e = dst.entry(s["shard"])
        if e is not None:
            if e.get("source_sha256") == s["sha256"] and dst.files_ok(e, checksum):
                continue
            redo += 1
        tasks.append(ShardTask(s["shard"], s, dst.directory / shard_name(s["shard"], suffix)))
    return tasks, redo


def _run_task(fn: Callable[[ShardTask, Path], dict], task: ShardTask) -> dict:
    """Worker side: run the shard function against a temporary path, then publish it."""
    with atomic_path(task.out) as tmp:
        stats = fn(task, tmp)
        point("shard.written")
    point("shard.published")
    rec = file_record(task.out, task.out.name)
    return {"shard": task.shard, **rec, "first_id": task.source["first_id"],
            "source_sha256": task.source["sha256"], **stats}


def run_shard_stage(tasks: Iterable[ShardTask], fn: Callable[[ShardTask, Path], dict],
                    dst: Manifest, executor, on_done: Callable[[dict], None] | None = None
                    ) -> list[dict]:
    """Run `fn` on every task through `executor`; record each finished shard.

    `fn(task, tmp_path) -> stats` writes the output shard to `tmp_path` and returns a
    dict with at least `rows`. It must be picklable for process executors.
    """
    done = []
    for _, entry in executor.imap(_ShardCall(fn), list(tasks), ordered=False):
        dst.record(entry)
        point("shard.recorded")
        done.append(entry)
        if on_done is not None:
            on_done(entry)
    return done


@dataclass(frozen=True)
class _ShardCall:
    fn: Callable[[ShardTask, Path], dict]

    def __call__(self, task: ShardTask) -> dict:
        return _run_task(self.fn, task)
