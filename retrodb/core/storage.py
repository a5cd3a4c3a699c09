"""Where a database's files live, and the one way they are written: atomically.

A `Storage` is a root (a local directory, or an object-store prefix such as
`s3://bucket/db`); a `Loc` is one place under it. Every layer names files through a
`Loc` (`db.chunks / "00000.parquet"`), never by joining path strings, so the same code
runs on a local disk and on an object store.

Publishing: a file appears under its final name only when complete. Locally it is
written to a hidden temporary name beside the target, fsynced and renamed; on an object
store it is written to a local temporary file and uploaded in one PUT (objects become
visible whole). `Loc.writing()` yields the temporary path and publishes it on success.

Readers that need a real file (numpy and faiss memory-map) ask `Loc.local()`: the file
itself on a local disk, a cached copy of the (immutable, checksummed) object otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

from .errors import RetrodbError

TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class FileStat:
    name: str  # the file's name (last path component)
    size: int
    mtime_ns: int


class Storage:
    """The interface both backends implement; `rel` is a POSIX path under the root."""

    remote = False

    def display(self, rel: str) -> str:
        raise NotImplementedError

    def stat(self, rel: str) -> FileStat | None:
        raise NotImplementedError

    def is_dir(self, rel: str) -> bool:
        raise NotImplementedError

    def list(self, rel: str) -> list[FileStat]:
        """Files directly under directory `rel` (none if it does not exist)."""
        raise NotImplementedError

    def walk(self, rel: str) -> list[str]:
        """Every file under directory `rel`, recursively, as paths under the root."""
        raise NotImplementedError

    def open_input(self, rel: str) -> BinaryIO:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        with self.open_input(rel) as f:
            return f.read()

    def scratch(self, rel: str) -> Path:
        """A local path to write the future contents of `rel` to."""
        raise NotImplementedError

    def publish(self, tmp: Path, rel: str) -> None:
        """Move a finished scratch file into place, atomically."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        raise NotImplementedError

    def remove_tree(self, rel: str) -> None:
        raise NotImplementedError

    def local(self, rel: str) -> Path:
        raise NotImplementedError

    def mkdir(self, rel: str) -> None:
        pass

    def lock(self, rel: str, what: str):
        """A context manager holding an exclusive lock on directory `rel`; a second
        holder is refused at once with a message naming `what` is being written."""
        raise NotImplementedError

    def remove_tmp(self, rel: str) -> None:
        """Remove temporary files left in directory `rel` by writers that were stopped
        (only while holding its lock)."""


class LocalStorage(Storage):
    """A directory tree on a local (or shared, POSIX) file system."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def display(self, rel: str) -> str:
        return str(self.path(rel))

    def stat(self, rel: str) -> FileStat | None:
        try:
            st = self.path(rel).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not _is_file_mode(st.st_mode):
            return None
        return FileStat(PurePosixPath(rel).name, st.st_size, st.st_mtime_ns)

    def is_dir(self, rel: str) -> bool:
        return self.path(rel).is_dir()

    def list(self, rel: str) -> list[FileStat]:
        d = self.path(rel)
        if not d.is_dir():
            return []
        out = []
        for entry in os.scandir(d):
            if entry.is_file():
                st = entry.stat()
                out.append(FileStat(entry.name, st.st_size, st.st_mtime_ns))
        return sorted(out, key=lambda s: s.name)

    def walk(self, rel: str) -> list[str]:
        base = self.path(rel)
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def open_input(self, rel: str) -> BinaryIO:
        return open(self.path(rel), "rb")

    def scratch(self, rel: str) -> Path:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p.with_name(f"{TMP_PREFIX}{p.name}")

    def publish(self, tmp: Path, rel: str) -> None:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.path(rel)
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def remove(self, rel: str) -> None:
        self.path(rel).unlink(missing_ok=True)

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self.path(rel), ignore_errors=True)

    def local(self, rel: str) -> Path:
        return self.path(rel)

    def remove_tmp(self, rel: str) -> None:
        for p in self.path(rel).glob(f"{TMP_PREFIX}*"):
            if p.is_file():
                p.unlink(missing_ok=True)

    def mkdir(self, rel: str) -> None:
        self.path(rel).mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self, rel: str, what: str) -> Iterator[None]:
        import fcntl

        directory = self.path(rel)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise RetrodbError(f"{directory}: exists and is not a directory; give "
                               "another --db") from None
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise RetrodbError(
                    f"{directory}: another retrodb process (pid {other}) is writing "
                    f"{what} of this database; wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self.remove_tmp(rel)  # left by a crashed writer
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _is_file_mode(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Loc:
    """One file or directory of a storage; immutable, cheap, picklable."""

    storage: Storage
    rel: str = ""

    def __truediv__(self, name: str) -> "Loc":
        rel = posixpath.normpath(posixpath.join(self.rel, name)) if self.rel else \
            posixpath.normpath(name)
        return Loc(self.storage, "" if rel == "." else rel)

    def __str__(self) -> str:
        return self.storage.display(self.rel)

    @property
    def name(self) -> str:
        return PurePosixPath(self.rel).name

    @property
    def parent(self) -> "Loc":
        parent = str(PurePosixPath(self.rel).parent)
        return Loc(self.storage, "" if parent == "." else parent)

    @property
    def remote(self) -> bool:
        return self.storage.remote

    # reading ------------------------------------------------------------------------
    def stat(self) -> FileStat | None:
        return self.storage.stat(self.rel)

    def exists(self) -> bool:
        return self.storage.stat(self.rel) is not None

    def is_dir(self) -> bool:
        return self.storage.is_dir(self.rel)

    def size(self) -> int:
        st = self.stat()
        if st is None:
            raise FileNotFoundError(str(self))
        return st.size

    def list(self) -> list[FileStat]:
        return self.storage.list(self.rel)

    def walk(self) -> list["Loc"]:
        return [Loc(self.storage, rel) for rel in self.storage.walk(self.rel)]

    def open(self) -> BinaryIO:
        return self.storage.open_input(self.rel)

    def read_bytes(self) -> bytes:
        return self.storage.read_bytes(self.rel)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self) -> Any:
        try:
            return json.loads(self.read_bytes())
        except json.JSONDecodeError as e:
            raise RetrodbError(f"{self}: not valid JSON ({e.msg} at line {e.lineno}); "
                               "restore it or rebuild that stage") from None
        except UnicodeDecodeError:
            raise RetrodbError(f"{self}: not UTF-8 JSON; restore it or rebuild that "
                               "stage") from None

    def local(self) -> Path:
        """A real file with this content (the file itself, or a cached copy)."""
        return self.storage.local(self.rel)

    def sha256(self, block: int = 1 << 20) -> str:
        h = hashlib.sha256()
        with self.open() as f:
            while data := f.read(block):
                h.update(data)
        return h.hexdigest()

    # writing ------------------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a local temporary path; publish it here on success, drop it on error."""
        tmp = self.storage.scratch(self.rel)
        tmp.unlink(missing_ok=True)
        try:
            yield tmp
            self.storage.publish(tmp, self.rel)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_bytes(self, data: bytes) -> None:
        with self.writing() as tmp:
            tmp.write_bytes(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, data: Any) -> None:
        self.write_text(json.dumps(data, indent=1) + "\n")

    def remove(self) -> None:
        self.storage.remove(self.rel)

    def remove_tree(self) -> None:
        self.storage.remove_tree(self.rel)

    def mkdir(self) -> None:
        self.storage.mkdir(self.rel)

    def lock(self, what: str):
        """Hold this directory's writer lock (see `Storage.lock`)."""
        return self.storage.lock(self.rel, what)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def is_url(text: str) -> bool:
    """`s3://...`, `gs://...`, `file://...`: a scheme of two letters or more."""
    head, sep, _ = str(text).partition("://")
    return bool(sep) and len(head) >= 2 and head.replace("+", "").isalnum()


def storage_for(location: str | Path) -> Loc:
    """The storage root named by a path or URL (object stores: see `remote.py`)."""
    text = str(location)
    if is_url(text):
        if text.startswith("file://"):
            return Loc(LocalStorage(Path(text[len("file://"):])))
        from .remote import object_storage

        return Loc(object_storage(text))
    return Loc(LocalStorage(Path(text)))


def local_loc(path: Path) -> Loc:
    """A local file as a `Loc` (atomic JSON writes for run directories)."""
    path = Path(path)
    return Loc(LocalStorage(path.parent), path.name)
