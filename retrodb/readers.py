"""Corpus inputs: discovery, decompression and streaming documents.

Supported: `.txt` (one document per file, or split on `--doc-separator`), `.jsonl`
(one JSON object per line, text in `--text-field`), `.parquet` (text in
`--text-column`), and `.txt`/`.jsonl` compressed as `.gz` or `.zst`.

A reader yields a flat stream of events, never a whole document:
    DocStart(position) · Text(piece) · Text(piece) · DocEnd() · DocStart(...) ...
`position` is the 1-based line where the document starts (.txt, .jsonl) or its
0-based row (.parquet). Text pieces are at most `PIECE_BYTES` (decoded) long and may
end anywhere, even inside a word, so a 10 GB file or a document of one enormous line
streams in bounded memory. (A JSONL line is one JSON value and is held whole.)
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import RetrodbError

PIECE_BYTES = 1 << 20
TEXT_SUFFIXES = (".txt", ".jsonl")
COMPRESSIONS = ("", ".gz", ".zst")
FORMATS = {f + c: f for f in TEXT_SUFFIXES for c in COMPRESSIONS} | {".parquet": ".parquet"}


@dataclass(frozen=True)
class ReaderOptions:
    """How to read inputs; the fields mirror `retrodb chunk` options."""

    doc_separator: str | None = None  # --doc-separator: split .txt files on this string
    text_field: str = "text"  # --text-field for .jsonl
    text_column: str = "text"  # --text-column for .parquet
    errors: str = "replace"  # --errors: undecodable bytes replaced (counted) or fatal
    skip_bad: bool = False  # --skip-bad: count and skip malformed JSONL lines


@dataclass(frozen=True)
class InputFile:
    path: Path  # resolved absolute path
    size: int
    format: str  # ".txt", ".jsonl" or ".parquet"

    @property
    def key(self) -> str:
        return str(self.path)


@dataclass
class ReadStats:
    decode_errors: int = 0
    bad_lines: int = 0
    bad_lines_at: list[int] = field(default_factory=list)


class DocStart:
    __slots__ = ("position",)

    def __init__(self, position: int):
        self.position = position


class DocEnd:
    __slots__ = ()


DOC_END = DocEnd()


def input_format(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return FORMATS[suffix]
    return None


def discover_inputs(paths: list[str]) -> list[InputFile]:
    """Expand files, directories (recursively) and globs into a stable list of inputs."""
    if not paths:
        raise RetrodbError("no INPUT given; pass files, directories or globs to chunk")
    found: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and input_format(q))
            if not files:
                raise RetrodbError(f"{arg}: directory holds no .txt, .jsonl or .parquet "
                                   "files (optionally .gz/.zst)")
            found += files
        elif p.is_file():
            if input_format(p) is None:
                raise RetrodbError(f"{arg}: unsupported input type; use .txt, .jsonl or "
                                   ".parquet (.txt/.jsonl may be .gz or .zst)")
            found.append(p)
        elif any(c in arg for c in "*?["):
            files = sorted(Path(q) for q in glob.glob(arg, recursive=True))
            files = [q for q in files if q.is_file() and input_format(q)]
            if not files:
                raise RetrodbError(f"{arg}: pattern matches no .txt, .jsonl or .parquet files")
            found += files
        else:
            raise RetrodbError(f"{arg}: no such file or directory")
    out, seen = [], set()
    for p in found:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(InputFile(r, r.stat().st_size, input_format(r)))
    return out


class _Counting(io.RawIOBase):
    """A raw file that counts bytes read from disk (for progress on compressed input)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.count += n or 0
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def open_binary(inp: InputFile) -> tuple[BinaryIO, _Counting]:
    """Open an input as a decompressed, buffered binary stream (+ its raw byte counter)."""
    raw = _Counting(open(inp.path, "rb", buffering=0))
    name = inp.path.name.lower()
    if name.endswith(".gz"):
        stream: BinaryIO = gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb")
    elif name.endswith(".zst"):
        stream = _ZstdRaw(raw)
    else:
        return io.BufferedReader(raw, 1 << 20), raw
    return io.BufferedReader(stream, 1 << 20), raw  # type: ignore[arg-type]


class _ZstdRaw(io.RawIOBase):
    """Decompresses concatenated zstd frames; a frame cut short raises EOFError.

    (zstandard's stream reader returns a silent EOF on a truncated file.)
    """

    def __init__(self, raw: _Counting):
        import zstandard

        self.zstd = zstandard
        self.raw = io.BufferedReader(raw, 1 << 20)
        self.dobj = zstandard.ZstdDecompressor().decompressobj()
        self.buf = b""
        self.in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf:
            data = self.raw.read(1 << 18)
            if not data:
                if self.in_frame:
                    raise EOFError("zstd frame ends early")
                return 0
            while data:
                if self.dobj.eof:
                    self.dobj = self.zstd.ZstdDecompressor().decompressobj()
                self.in_frame = True
                self.buf += self.dobj.decompress(data)
                data = self.dobj.unused_data if self.dobj.eof else b""
                if self.dobj.eof:
                    self.in_frame = False
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class Reader:
    """Streams the documents of one input file as events."""

    def __init__(self, inp: InputFile, opts: ReaderOptions):
        self.inp = inp
        self.opts = opts
        self.stats = ReadStats()
        self._raw: _Counting | None = None
        self.done = False  # all events yielded

    @property
    def bytes_read(self) -> int:
        """Bytes of the file on disk consumed so far."""
        return self._raw.count if self._raw is not None else 0

    def events(self) -> Iterator[object]:
        yield from self._events()
        self.done = True

    def _events(self) -> Iterator[object]:
        try:
            if self.inp.format == ".parquet":
                yield from self._parquet()
                return
            stream, self._raw = open_binary(self.inp)
            with stream:
                if self.inp.format == ".jsonl":
                    yield from self._jsonl(stream)
                elif self.opts.doc_separator:
                    yield from self._txt_split(stream, self.opts.doc_separator)
                else:
                    yield from self._txt_whole(stream)
        except (OSError, EOFError) as e:
            raise RetrodbError(f"{self.inp.path}: cannot read ({_short(e)}); the file is "
                               "truncated or corrupt") from None
        except Exception as e:  # zstd raises its own error type
            if type(e).__name__ == "ZstdError":
                raise RetrodbError(f"{self.inp.path}: cannot read ({_short(e)}); the file "
                                   "is truncated or corrupt") from None
            raise

    # text ---------------------------------------------------------------------------
    def _decoder(self):
        handler = "strict" if self.opts.errors == "strict" else "retrodb-count"
        dec = codecs.getincrementaldecoder("utf-8")(handler)
        return dec

    def _lines(self, stream: BinaryIO) -> Iterator[tuple[int, str, bool]]:
        """(line number, decoded piece, piece ends its line) for pieces ≤ PIECE_BYTES."""
        dec = self._decoder()
        lineno = 1
        token = _ERROR_COUNTER.push(self.stats)
        try:
            while True:
                b = stream.readline(PIECE_BYTES)
                if lineno == 1:
                    self._refuse_binary(b)
                if not b:
                    tail = self._decode(dec, b"", lineno, final=True)
                    if tail:
                        yield lineno, tail, True
                    return
                text = self._decode(dec, b, lineno, final=False)
                ends = b.endswith(b"\n")
                yield lineno, text, ends
                if ends:
                    lineno += 1
        finally:
            _ERROR_COUNTER.pop(token)

    def _refuse_binary(self, head: bytes) -> None:
        """NUL bytes near the start: a binary file (or UTF-16), not UTF-8 text."""
        at = head.find(b"\x00", 0, 8192)
        if at >= 0:
            raise RetrodbError(f"{self.inp.path}: not UTF-8 text (NUL byte at offset {at}: "
                               "a binary file, or UTF-16); remove it or convert it to UTF-8")

    def _decode(self, dec, b: bytes, lineno: int, final: bool) -> str:
        try:
            return dec.decode(b, final)
        except UnicodeDecodeError as e:
            line = lineno + b.count(b"\n", 0, max(e.start, 0))
            raise RetrodbError(f"{self.inp.path}:{line}: undecodable UTF-8 byte "
                               f"{b[e.start:e.start + 1]!r}; use --errors replace to "
                               "replace such bytes") from None

    def _blocks(self, stream: BinaryIO) -> Iterator[str]:
        """Decoded text in blocks of about PIECE_BYTES, cut anywhere (lines ignored)."""
        dec = self._decoder()
        lineno = 1
        token = _ERROR_COUNTER.push(self.stats)
        first = True
        try:
            while True:
                b = stream.read(PIECE_BYTES)
                if first:
                    self._refuse_binary(b)
                    first = False
                text = self._decode(dec, b, lineno, final=not b)
                if text:
                    yield text
                if not b:
                    return
                lineno += b.count(b"\n")
        finally:
            _ERROR_COUNTER.pop(token)

    def _txt_whole(self, stream: BinaryIO) -> Iterator[object]:
        yield DocStart(1)
        yield from self._blocks(stream)
        yield DOC_END

    def _txt_split(self, stream: BinaryIO, sep: str) -> Iterator[object]:
        """Split on `sep` anywhere in the text, holding back at most len(sep)-1 chars."""
        keep = len(sep) - 1
        buf = ""
        start_line = 1
        nl_in_doc = 0  # newlines consumed in the current document so far
        yield DocStart(1)
        for text in self._blocks(stream):
            buf += text
            while True:
                i = buf.find(sep)
                if i < 0:
                    break
                head = buf[:i]
                if head:
                    yield head
                nl_in_doc += head.count("\n") + sep.count("\n")
                yield DOC_END
                start_line += nl_in_doc
                nl_in_doc = 0
                yield DocStart(start_line)
                buf = buf[i + len(sep):]
            if len(buf) > keep:
                cut = len(buf) - keep
                out, buf = buf[:cut], buf[cut:]
                nl_in_doc += out.count("\n")
                yield out
        if buf:
            yield buf
        yield DOC_END

    # jsonl ---------------------------------------------------------------------------
    def _jsonl(self, stream: BinaryIO) -> Iterator[object]:
        field_ = self.opts.text_field
        parts: list[str] = []
        for lineno, text, ends in self._lines(stream):
            parts.append(text)
            if not ends:
                continue
            line, parts = "".join(parts), []
            yield from self._json_doc(line, lineno, field_)
        if parts:
            yield from self._json_doc("".join(parts), lineno, field_)

    def _json_doc(self, line: str, lineno: int, field_: str) -> Iterator[object]:
        if not line.strip():
            return
        problem = None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problem = f"not valid JSON ({e.msg})"
        else:
            if not isinstance(obj, dict) or field_ not in obj:
                problem = f"no field {field_!r} (set --text-field)"
            elif not isinstance(obj[field_], str):
                problem = f"field {field_!r} is {type(obj[field_]).__name__}, not a string"
        if problem is not None:
            if not self.opts.skip_bad:
                raise RetrodbError(f"{self.inp.path}:{lineno}: {problem}; fix the line or "
                                   "pass --skip-bad to skip and count such lines")
            self.stats.bad_lines += 1
            if len(self.stats.bad_lines_at) < 10:
                self.stats.bad_lines_at.append(lineno)
            return
        yield DocStart(lineno)
        if obj[field_]:
            yield obj[field_]
        yield DOC_END

    # parquet -------------------------------------------------------------------------
    def _parquet(self) -> Iterator[object]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = self.opts.text_column
        try:
            pf = pq.ParquetFile(self.inp.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise RetrodbError(f"{self.inp.path}: not a readable Parquet file "
                               f"({_short(e)})") from None
        schema = pf.schema_arrow
        if col not in schema.names:
            raise RetrodbError(f"{self.inp.path}: no column {col!r} (columns: "
                               f"{', '.join(schema.names[:10])}); set --text-column")
        typ = schema.field(col).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise RetrodbError(f"{self.inp.path}: column {col!r} is {typ}, not a string "
                               "column; set --text-column to the text column")
        self._raw = _Counting(io.BytesIO())  # progress for parquet: share of rows read
        total = max(pf.metadata.num_rows, 1)
        row = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[col]):
            for value in batch.column(0).to_pylist():
                yield DocStart(row)
                if value:
                    yield value
                yield DOC_END
                row += 1
            self._raw.count = self.inp.size * row // total


def _short(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


class _ErrorCounter:
    """Counts replaced bytes for the reader currently decoding in this thread."""

    def __init__(self):
        self.stack: list[ReadStats] = []

    def push(self, stats: ReadStats) -> int:
        self.stack.append(stats)
        return len(self.stack)

    def pop(self, token: int) -> None:
        del self.stack[token - 1:]

    def __call__(self, exc: UnicodeDecodeError):
        if self.stack:
            self.stack[-1].decode_errors += exc.end - exc.start
        return "\ufffd", exc.end


_ERROR_COUNTER = _ErrorCounter()
codecs.register_error("retrodb-count", _ERROR_COUNTER)
