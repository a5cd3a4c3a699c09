"""The record of a stage's finished shards: `<stage dir>/manifest.json`.

    {"stage": "chunks", "format": 1, "shards": [{"shard": 0, "file": "00000.parquet",
      "rows": 500000, "first_id": 0, "bytes": ..., "sha256": ..., "mtime_ns": ...,
      "extra": [{"file": "../docs/00000.parquet", ...}], ...}, ...], ...}

A shard is published (renamed or uploaded whole) before its entry is recorded, so an
entry always names a complete file. The manifest is rewritten atomically after every
record while it is small (under 1 MB, about 1,500 shards); beyond that at most every
`flush_every` seconds and at the end of a run, so the coordinator's cost per shard
stays bounded however many shards a stage has, and a crash loses at most a few seconds
of records, whose shards the next run redoes (the same bytes).

Checking a shard's files: `quick` compares size and modification time with the entry
and hashes only files whose time changed (as rsync does); `full` always hashes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .errors import RetrodbError
from .storage import FileStat, Loc

MANIFEST = "manifest.json"
FORMAT = 1
SMALL = 1 << 20  # a manifest this small is written after every record


def shard_name(index: int, suffix: str) -> str:
    return f"{index:05d}{suffix}"


class Manifest:
    """The finished shards of one stage directory."""

    def __init__(self, directory, stage: str, flush_every: float = 0.0):
        if not isinstance(directory, Loc):  # a local path (tests, scripts)
            from pathlib import Path

            from .storage import local_loc

            directory = local_loc(Path(directory))
        self.directory = directory
        self.path = directory / MANIFEST
        self.stage = stage
        self.flush_every = flush_every
        self._dirty = False
        self._last_flush = time.monotonic()
        self._size = 0  # bytes of the manifest as last written
        data = self.path.read_json() if self.path.exists() else None
        if data is None:
            data = {"stage": stage, "format": FORMAT, "shards": []}
        elif not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise RetrodbError(f"{self.path}: not a retrodb manifest; restore it or "
                               f"delete {self.directory} and rebuild that stage")
        self.data: dict[str, Any] = data
        self._by_shard = {e["shard"]: e for e in self.shards}
        for e in self.shards:
            for name, _, _ in entry_files(e):
                self.path_of(name)  # refuse entries pointing outside the database

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def path_of(self, name: str) -> Loc:
        """The file a manifest entry names; it must stay inside the database."""
        loc = self.directory / name
        if name.startswith("/") or loc.rel.startswith("..") or "\\" in name:
            raise RetrodbError(f"{self.path}: entry names {name!r}, outside the database; "
                               "the manifest was edited or corrupted: restore it")
        return loc

    @property
    def shards(self) -> list[dict]:
        return self.data["shards"]

    def entry(self, shard: int) -> dict | None:
        return self._by_shard.get(shard)

    @property
    def rows(self) -> int:
        return sum(e["rows"] for e in self.shards)

    @property
    def next_shard(self) -> int:
        return max(self._by_shard, default=-1) + 1

    @property
    def next_id(self) -> int:
        """First id after the last shard: ids are dense across shards."""
        if not self.shards:
            return 0
        last = self._by_shard[max(self._by_shard)]
        return last["first_id"] + last["rows"]

    # writing ------------------------------------------------------------------------
    def record(self, entry: dict | None = None, **top: Any) -> bool:
        """Add or replace a shard entry and/or top-level fields; save when due.

        Returns whether the manifest was written now."""
        if entry is not None:
            old = self._by_shard.get(entry["shard"])
            if old is not None:
                self.shards.remove(old)
            self.shards.append(entry)
            self._by_shard[entry["shard"]] = entry
        self.data.update(top)
        self._dirty = True
        if entry is None or self._size < SMALL or \
                time.monotonic() - self._last_flush >= self.flush_every:
            self.flush()
            return True
        return False

    def forget(self, key: str) -> None:
        """Remove a top-level field and save."""
        if key in self.data:
            del self.data[key]
            self._dirty = True
            self.flush()

    def drop(self, shard: int) -> None:
        e = self._by_shard.pop(shard, None)
        if e is not None:
            self.shards.remove(e)
            self._dirty = True

    def flush(self) -> None:
        if not self._dirty and self.path.exists():
            return
        self.data["shards"].sort(key=lambda e: e["shard"])
        text = json.dumps(self.data, indent=1) + "\n"
        self.path.write_text(text)
        self._size = len(text)
        self._dirty = False
        self._last_flush = time.monotonic()

    # checking -----------------------------------------------------------------------
    def bad_files(self, entry: dict, mode: str = "quick",
                  stats: dict[str, FileStat] | None = None) -> list[Loc]:
        """Files of `entry` that are missing or differ from it (see module docstring).

        `stats` may give the directory listing (name → stat) to save a call per file."""
        bad = []
        for rec in entry_records(entry):
            loc = self.path_of(rec["file"])
            st = stats.get(loc.name) if stats is not None and "/" not in rec["file"] \
                else loc.stat()
            if st is None or st.size != rec["bytes"]:
                bad.append(loc)
                continue
            if mode == "size" or (mode == "quick" and rec.get("mtime_ns") == st.mtime_ns):
                continue
            if loc.sha256() != rec["sha256"]:
                bad.append(loc)
            elif mode == "quick":
                rec["mtime_ns"] = st.mtime_ns  # verified: trust this time from now on
                self._dirty = True
        return bad

    def files_ok(self, entry: dict, checksum: bool = True) -> bool:
        return not self.bad_files(entry, "full" if checksum else "size")

    def listing(self) -> dict[str, FileStat]:
        """The stage directory's files by name (one listing call)."""
        return {s.name: s for s in self.directory.list()}


def require_files(m: Manifest, fix: str) -> None:
    """Refuse a stage whose recorded files are missing or changed size (a deleted or
    truncated shard): one error naming the first, with what to do. A stat per file."""
    stats = m.listing()
    bad = [loc for e in m.shards for loc in m.bad_files(e, "size", stats)]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise RetrodbError(f"{bad[0]}: missing or truncated{more}; it is recorded in "
                           f"{m.path}: {fix}")


def entry_records(entry: dict) -> list[dict]:
    """The file records of an entry: the main file, then `extra` files (relative to the
    stage directory, e.g. "../docs/00000.parquet")."""
    return [entry] + list(entry.get("extra", []))


def entry_files(entry: dict) -> list[tuple[str, int, str]]:
    """(file, bytes, sha256) of every file a manifest entry covers."""
    return [(r["file"], r["bytes"], r["sha256"]) for r in entry_records(entry)]


def file_record(loc: Loc, name: str | None = None, digest: str | None = None) -> dict:
    """What an entry records of a published file: name, size, sha256, time.

    `digest` is the sha256 computed before publishing (an object store would otherwise
    have to be read back)."""
    if not isinstance(loc, Loc):  # a local path (tests, scripts)
        from .storage import local_loc

        loc = local_loc(loc)
    st = loc.stat()
    if st is None:
        raise RetrodbError(f"{loc}: missing right after it was written")
    return {"file": name or loc.name, "bytes": st.size,
            "sha256": digest or loc.sha256(), "mtime_ns": st.mtime_ns}
