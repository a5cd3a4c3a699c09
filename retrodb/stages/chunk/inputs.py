"""Corpus inputs and how they are cut into splits, the chunk stage's units of work.

Inputs are files, directories (recursive), globs or URLs (`s3://bucket/corpus/`) of
`.txt`, `.jsonl` and `.parquet`; `.txt`/`.jsonl` may be `.gz` or `.zst`; names ending in
a `--text-suffix` (e.g. `.py`) are plain text too; keys matching an `--exclude` pattern
(fnmatch, `*` crosses `/`) are left out. Each input is
recorded by its *key*: its path relative to `--root` (default: the current directory),
or its URL; never this machine's absolute path, so a database can move.

A split is a list of pieces (input, byte range) of about `split_bytes`, and becomes one
shard. Small inputs are grouped; a large input is cut into byte ranges where its format
allows it: a `.jsonl` or plain `.txt` at line starts (a piece owns the lines that start
inside its range), a `.parquet` by row groups (a piece owns the row groups that start
inside it). Compressed files and `--doc-separator` text are read whole by one worker.
A plain `.txt` (one document per file) larger than a split is read as consecutive
documents, one per piece, cut at line starts.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...core.errors import RetrodbError
from ...core.storage import LocalStorage, Loc, is_url, storage_for

TEXT_SUFFIXES = (".txt", ".jsonl")
COMPRESSIONS = ("", ".gz", ".zst")
FORMATS = {f + c: f for f in TEXT_SUFFIXES for c in COMPRESSIONS} | {".parquet": ".parquet"}
_FS_ROOT = LocalStorage(Path("/"))


@dataclass(frozen=True)
class InputFile:
    loc: Loc  # where to read it
    key: str  # how the database records it: relative to --root, or a URL
    size: int
    format: str  # ".txt", ".jsonl" or ".parquet"

    @property
    def compressed(self) -> bool:
        return self.loc.name.lower().endswith((".gz", ".zst"))

    def __str__(self) -> str:
        return str(self.loc)


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of one input; `size` is the input's size when planned."""

    key: str
    start: int
    end: int
    size: int
    format: str

    def to_dict(self) -> dict:
        return {"input": self.key, "start": self.start, "end": self.end,
                "size": self.size, "format": self.format}

    @staticmethod
    def from_dict(d: dict) -> "Piece":
        return Piece(d["input"], d["start"], d["end"], d["size"], d["format"])


def input_format(name: str, text: tuple[str, ...] = ()) -> str | None:
    """.txt, .jsonl or .parquet; a name ending in one of `text` (--text-suffix, e.g.
    .py) is read as plain text."""
    name = name.lower()
    if text and name.endswith(tuple(t.lower() for t in text)):
        return ".txt"
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def input_loc(root: str, key: str) -> Loc:
    """Where the input recorded as `key` is, for inputs relative to `root`."""
    if is_url(key):
        return _url_loc(key)
    if is_url(root):
        return _url_loc(root.rstrip("/") + "/" + key)
    path = os.path.normpath(os.path.join(os.path.abspath(root), key))
    return Loc(_FS_ROOT, path.lstrip("/"))


def _url_loc(url: str) -> Loc:
    head, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    return storage_for(f"{head}://{bucket}") / key


def _key(root: str, loc: Loc) -> str:
    if loc.remote:
        url = str(loc)
        if is_url(root) and url.startswith(root.rstrip("/") + "/"):
            return url[len(root.rstrip("/")) + 1:]
        return url
    rel = os.path.relpath("/" + loc.rel, os.path.abspath(root))
    return PurePosixPath(*Path(rel).parts).as_posix()


def check_text_suffixes(suffixes: tuple[str, ...]) -> None:
    bad = [t for t in suffixes if not t.startswith(".") or len(t) < 2]
    if bad:
        raise RetrodbError(f"--text-suffix {bad[0]!r}: give a file name ending that "
                           "starts with a dot, e.g. --text-suffix .py")


def discover_inputs(paths: list[str], root: str = ".", text: tuple[str, ...] = (),
                    exclude: tuple[str, ...] = ()) -> list[InputFile]:
    """Expand files, directories (recursively), globs and URLs into a stable list."""
    if not paths:
        raise RetrodbError("no INPUT given; pass files, directories or globs to chunk")
    found: list[Loc] = []
    for arg in paths:
        found += _expand(arg, text)
    out, seen = [], set()
    for loc in found:
        if loc.rel not in seen or loc.remote:
            seen.add(loc.rel)
            key = _key(root, loc)
            if exclude and any(fnmatch.fnmatchcase(key, pat) for pat in exclude):
                continue
            out.append(InputFile(loc, key, loc.stat().size, input_format(loc.name, text)))
    if not out:
        raise RetrodbError(f"{paths[0]}: every input matches an --exclude pattern "
                           f"({', '.join(exclude)}); nothing to read")
    return out


def _expand(arg: str, text: tuple[str, ...] = ()) -> list[Loc]:
    if is_url(arg) and not arg.startswith("file://"):
        return _expand_url(arg, text)
    if arg.startswith("file://"):
        arg = arg[len("file://"):]
    _check_name(arg)
    p = Path(arg)
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and input_format(q.name, text))
        if not files:
            raise RetrodbError(f"{arg}: directory holds no .txt, .jsonl or .parquet "
                               "files (optionally .gz/.zst); --text-suffix .py (say) "
                               "reads other text files")
        return [_local(q) for q in files]
    if p.is_file():
        if input_format(p.name, text) is None:
            raise RetrodbError(f"{arg}: unsupported input type; use .txt, .jsonl or "
                               ".parquet (.txt/.jsonl may be .gz or .zst), or name its "
                               "suffix with --text-suffix")
        return [_local(p)]
    if any(c in arg for c in "*?["):
        files = sorted(Path(q) for q in glob.glob(arg, recursive=True))
        files = [q for q in files if q.is_file() and input_format(q.name, text)]
        if not files:
            raise RetrodbError(f"{arg}: pattern matches no .txt, .jsonl or .parquet files")
        return [_local(q) for q in files]
    raise RetrodbError(f"{arg}: no such file or directory")


def _check_name(arg: str) -> None:
    """A name with bytes that are not UTF-8 cannot be recorded; say which."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise RetrodbError(f"{shown}: the file name is not valid UTF-8; rename it (the "
                           "database records input names as UTF-8 text)") from None


def _local(p: Path) -> Loc:
    for part in p.parts:
        _check_name(part)
    return Loc(_FS_ROOT, str(p.resolve()).lstrip("/"))


def _expand_url(url: str, text: tuple[str, ...] = ()) -> list[Loc]:
    base = _url_loc(url.split("*")[0].rsplit("/", 1)[0] if "*" in url else url)
    st = base.stat()
    if st is not None:
        if input_format(base.name, text) is None:
            raise RetrodbError(f"{url}: unsupported input type; use .txt, .jsonl or "
                               ".parquet (.txt/.jsonl may be .gz or .zst)")
        return [base]
    pattern = url if "*" in url else None
    files = [loc for loc in base.walk() if input_format(loc.name, text) and
             (pattern is None or PurePosixPath(str(loc)).match(pattern))]
    if not files:
        raise RetrodbError(f"{url}: no .txt, .jsonl or .parquet objects there")
    return sorted(files, key=lambda loc: loc.rel)


def splittable(f: InputFile, doc_separator: str | None) -> bool:
    if f.compressed:
        return False
    return f.format in (".jsonl", ".parquet") or (f.format == ".txt" and not doc_separator)


def plan_splits(files: list[InputFile], split_bytes: int,
                doc_separator: str | None) -> list[list[Piece]]:
    """Group small inputs and cut large ones into splits of about `split_bytes`."""
    splits: list[list[Piece]] = []
    cur: list[Piece] = []
    cur_bytes = 0
    for f in files:
        if f.size > split_bytes and splittable(f, doc_separator):
            if cur:
                splits.append(cur)
                cur, cur_bytes = [], 0
            n = math.ceil(f.size / split_bytes)
            step = math.ceil(f.size / n)
            for i in range(n):
                splits.append([Piece(f.key, i * step, min((i + 1) * step, f.size), f.size,
                                     f.format)])
            continue
        if cur and cur_bytes + f.size > split_bytes:
            splits.append(cur)
            cur, cur_bytes = [], 0
        cur.append(Piece(f.key, 0, f.size, f.size, f.format))
        cur_bytes += f.size
    if cur:
        splits.append(cur)
    return splits
