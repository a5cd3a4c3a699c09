"""Object stores as a `Storage`: `s3://`, `gs://` (pyarrow.fs), any other fsspec URL.

Publishing writes a local temporary file and uploads it in one PUT (objects become
visible whole, so readers never see a partial shard); there is no rename. Files that
numpy or faiss memory-map are downloaded once into a local cache
(`$XDG_CACHE_HOME/retrodb`, else `~/.cache/retrodb`) and reused while the object's size
and time are unchanged. The S3 endpoint comes from `AWS_ENDPOINT_URL`, credentials from
the usual AWS chain.

Locks are leases: an object `<dir>/.lock` created only if absent (S3's conditional PUT,
through boto3), renewed every 20 s and taken over once it has not been renewed for 60 s,
so a node that dies holding a lock blocks writers for a minute at most.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import RetrodbError
from .storage import FileStat, Storage
from .util import first_line

LEASE_S = 60.0  # a lock not renewed for this long belongs to a dead writer
RENEW_S = 20.0


def object_storage(url: str) -> "ObjectStorage":
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise RetrodbError(f"{url}: give a bucket, e.g. {scheme}://bucket/path")
    return ObjectStorage(scheme, bucket, prefix.strip("/"))


def _filesystem(scheme: str):
    import pyarrow.fs as pafs

    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return pafs.S3FileSystem(endpoint_override=endpoint, region=region,
                                 connect_timeout=5, request_timeout=60,
                                 retry_strategy=pafs.AwsStandardS3RetryStrategy(3))
    if scheme in ("gs", "gcs"):
        return pafs.GcsFileSystem()
    try:
        import fsspec
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(fsspec.filesystem(scheme)))
    except (ImportError, ValueError) as e:
        raise RetrodbError(f"{scheme}:// URLs: no file system for them ({first_line(e)}); "
                           "install the fsspec implementation of that scheme") from None


class ObjectStorage(Storage):
    """A bucket and a prefix of an object store."""

    remote = True

    def __init__(self, scheme: str, bucket: str, prefix: str):
        self.scheme, self.bucket, self.prefix = scheme, bucket, prefix
        self.fs = _filesystem(scheme)
        self._checked = False

    def __getstate__(self) -> dict:  # workers open their own connection
        return {k: v for k, v in self.__dict__.items() if k != "fs"} | {"_checked": True}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fs = _filesystem(self.scheme)

    def key(self, rel: str) -> str:
        parts = [self.bucket] + ([self.prefix] if self.prefix else []) + ([rel] if rel else [])
        return "/".join(parts)

    def display(self, rel: str) -> str:
        return f"{self.scheme}://{self.key(rel)}"

    @contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """OSErrors of the store as one line naming the URL."""
        self._check()
        try:
            yield
        except OSError as e:
            raise RetrodbError(f"{self.display(rel)}: {_reason(e)}") from None

    def _check(self) -> None:
        """Once: the endpoint answers and the bucket exists."""
        if self._checked:
            return
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self.bucket)
        except OSError as e:
            raise RetrodbError(f"{self.scheme}://{self.bucket}: {_reason(e)}") from None
        if info.type == pafs.FileType.NotFound:
            raise RetrodbError(f"{self.scheme}://{self.bucket}: no such bucket; create it "
                               "or check the URL (and AWS_ENDPOINT_URL)")
        self._checked = True

    # reading ------------------------------------------------------------------------
    def stat(self, rel: str) -> FileStat | None:
        import pyarrow.fs as pafs

        with self._errors(rel):
            info = self.fs.get_file_info(self.key(rel))
        if info.type != pafs.FileType.File:
            return None
        return FileStat(info.base_name, info.size, _ns(info))

    def is_dir(self, rel: str) -> bool:
        return bool(self._infos(rel, recursive=False))

    def _infos(self, rel: str, recursive: bool):
        import pyarrow.fs as pafs

        with self._errors(rel):
            return self.fs.get_file_info(pafs.FileSelector(self.key(rel), allow_not_found=True,
                                                           recursive=recursive))

    def list(self, rel: str) -> list[FileStat]:
        import pyarrow.fs as pafs

        return sorted((FileStat(i.base_name, i.size, _ns(i)) for i in self._infos(rel, False)
                       if i.type == pafs.FileType.File), key=lambda s: s.name)

    def walk(self, rel: str) -> list[str]:
        import pyarrow.fs as pafs

        base = self.key("")
        return sorted(i.path[len(base) + 1:] for i in self._infos(rel, True)
                      if i.type == pafs.FileType.File)

    def open_input(self, rel: str) -> BinaryIO:
        with self._errors(rel):
            return self.fs.open_input_file(self.key(rel))

    # writing ------------------------------------------------------------------------
    def scratch(self, rel: str) -> Path:
        d = Path(tempfile.gettempdir()) / f"retrodb-{os.getpid()}"
        d.mkdir(exist_ok=True)
        return d / f"{uuid.uuid4().hex[:8]}-{rel.replace('/', '__')}"

    def publish(self, tmp: Path, rel: str) -> None:
        with self._errors(rel), open(tmp, "rb") as src, \
                self.fs.open_output_stream(self.key(rel)) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        tmp.unlink(missing_ok=True)

    def remove(self, rel: str) -> None:
        with self._errors(rel):
            try:
                self.fs.delete_file(self.key(rel))
            except FileNotFoundError:
                pass

    def remove_tree(self, rel: str) -> None:
        with self._errors(rel):
            try:
                self.fs.delete_dir(self.key(rel))
            except FileNotFoundError:
                pass

    def local(self, rel: str) -> Path:
        """A cached local copy, fetched again when the object's size or time changed."""
        st = self.stat(rel)
        if st is None:
            raise RetrodbError(f"{self.display(rel)}: missing")
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        url = hashlib.sha1(self.display("").encode()).hexdigest()[:16]
        path = root / "retrodb" / url / rel
        stamp = path.with_name(path.name + ".stamp")
        want = f"{st.size} {st.mtime_ns}"
        if path.exists() and stamp.exists() and stamp.read_text() == want:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
        with self._errors(rel), self.fs.open_input_stream(self.key(rel)) as src, \
                open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        os.replace(tmp, path)
        stamp.write_text(want)
        return path

    # locks --------------------------------------------------------------------------
    @contextmanager
    def lock(self, rel: str, what: str) -> Iterator[None]:
        lease = Lease(self, f"{rel}/.lock" if rel else ".lock", what)
        lease.acquire()
        try:
            yield
        finally:
            lease.release()


class Lease:
    """An exclusive, renewed lock object (see the module docstring). On S3 it is created
    with a conditional PUT; other stores have no such PUT, and there two writers that
    start within the same second may both get it (said in the README)."""

    def __init__(self, storage: ObjectStorage, rel: str, what: str):
        self.st, self.rel, self.what = storage, rel, what
        self.me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(),
                   "pid": os.getpid()}
        self.stop = threading.Event()
        self.client = None
        self.key = storage.key(rel).split("/", 1)[1]  # the object key, without the bucket

    def _body(self) -> bytes:
        return json.dumps({**self.me, "renewed": time.time()}).encode()

    def _s3(self):
        try:
            import boto3
        except ImportError:
            raise RetrodbError(f"{self.st.display(self.rel)}: writing a database on S3 needs "
                               "boto3 for its lock: pip install 'retrodb[s3]'") from None
        return boto3.client("s3")

    def _create(self) -> bool:
        """Create the lock object if absent; whether this process now holds it."""
        if self.client is None:
            if self.st.stat(self.rel) is not None:
                return False
            self._write()
            return True
        try:
            self.client.put_object(Bucket=self.st.bucket, Key=self.key, Body=self._body(),
                                   IfNoneMatch="*")
        except self.client.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise RetrodbError(f"{self.st.display(self.rel)}: cannot take the lock "
                               f"({_reason(e)})") from None
        return True

    def _write(self) -> None:
        tmp = self.st.scratch(self.rel)
        tmp.write_bytes(self._body())
        self.st.publish(tmp, self.rel)

    def acquire(self) -> None:
        self.st._check()
        if self.st.scheme == "s3":
            self.client = self._s3()
        if not self._create():
            try:
                held = json.loads(self.st.read_bytes(self.rel))
            except (RetrodbError, ValueError):
                held = {}
            age = time.time() - held.get("renewed", 0)
            if age < LEASE_S:
                where = self.st.display(self.rel.rsplit("/", 1)[0] if "/" in self.rel else "")
                raise RetrodbError(
                    f"{where}: another retrodb process (pid {held.get('pid')} on "
                    f"{held.get('host')}) is writing {self.what} of this database; wait "
                    f"for it to finish or stop it (a writer that died releases it "
                    f"{LEASE_S - age:.0f} s from now)")
            self.st.remove(self.rel)  # a dead writer's lease
            if not self._create():
                raise RetrodbError(f"{self.st.display(self.rel)}: another process took the "
                                   "lock just now; retry")
        threading.Thread(target=self._renew, daemon=True, name="retrodb-lease").start()

    def _renew(self) -> None:
        while not self.stop.wait(RENEW_S):
            try:
                self._write()
            except RetrodbError:
                return

    def release(self) -> None:
        self.stop.set()
        self.st.remove(self.rel)


def _ns(info) -> int:
    m = info.mtime_ns
    return int(m) if m is not None else 0


def _reason(e: OSError) -> str:
    text = first_line(e, 300)
    low = text.lower()
    if "access denied" in low or "access_denied" in low or "accessdenied" in low or \
            "forbidden" in low or \
            "invalidaccesskeyid" in low or "signature" in low:
        return ("credentials refused (access denied); check the AWS credentials "
                "(AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)")
    if "connect" in low or "curl" in low or "resolve" in low or "timed out" in low:
        return (f"cannot reach the object store ({text}); check the URL and "
                "AWS_ENDPOINT_URL")
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return "no such bucket; create it or check the URL"
    return text
