"""Reading one piece of an input as a stream of document events, never a whole document.

    DocStart(position) · text · text · DOC_END · DocStart(...) ...

`position` is the line where the document starts, counted from the piece's first line
(1) for `.txt`/`.jsonl` (the stage adds the piece's first line number, a prefix sum it
learns from the pieces before), or the 0-based row for `.parquet`. Text comes in pieces
of at most `PIECE_BYTES` (decoded) that may end anywhere, even inside a word, so a 10 GB
file or a document of one enormous line streams in bounded memory (a JSONL line is one
JSON value and is held whole).

A piece [start, end) of a text input owns the lines that start inside it: reading
begins at the first line start at or after `start` and stops at the first line start at
or after `end`, so consecutive pieces share no line and miss none.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from typing import BinaryIO

from .inputs import InputFile, Piece

PIECE_BYTES = 1 << 20


@dataclass(frozen=True)
class ReaderOptions:
    """How to read inputs; the fields mirror `retrodb chunk` options."""

    doc_separator: str | None = None  # --doc-separator: split .txt files on this string
    text_field: str = "text"  # --text-field for .jsonl
    text_column: str = "text"  # --text-column for .parquet
    errors: str = "replace"  # --errors: undecodable bytes replaced (counted) or fatal
    skip_bad: bool = False  # --skip-bad: count and skip malformed JSONL lines


@dataclass
class ReadStats:
    decode_errors: int = 0
    bad_lines: int = 0
    bad_lines_at: list[int] = field(default_factory=list)  # piece-local line numbers


class DocStart:
    __slots__ = ("position",)

    def __init__(self, position: int):
        self.position = position


class DocEnd:
    __slots__ = ()


DOC_END = DocEnd()


class _Range(io.RawIOBase):
    """The lines of a seekable file that start in [start, end); counts newlines."""

    def __init__(self, f: BinaryIO, start: int, end: int):
        self.f = f
        self.count = 0  # bytes delivered
        self.newlines = 0
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # mid-line: that line belongs to the piece before
                while True:
                    block = f.read(1 << 16)
                    if not block:
                        start = end  # no line starts here
                        break
                    i = block.find(b"\n")
                    if i >= 0:
                        start += i + 1
                        break
                    start += len(block)
            f.seek(start)
        self.start, self.pos, self.end = start, start, end
        self.done = start >= end
        self.last_nl = True

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.done:
            return 0
        if self.pos < self.end:
            data = self.f.read(min(len(b), self.end - self.pos))
        elif self.last_nl:
            data = b""
        else:  # finish the line that crosses `end`
            data = self.f.read(min(len(b), 1 << 16))
            i = data.find(b"\n")
            if i >= 0:
                data = data[:i + 1]
                self.done = True
        if not data:
            self.done = True
            return 0
        n = len(data)
        b[:n] = data
        self.pos += n
        self.count += n
        self.newlines += data.count(b"\n")
        self.last_nl = data.endswith(b"\n")
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


class _Counting(io.RawIOBase):
    """A raw stream that counts the bytes read from it (progress on compressed input)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.count = 0
        self.newlines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self.f.read(len(b))
        n = len(data)
        b[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


class _ZstdRaw(io.RawIOBase):
    """Decompresses concatenated zstd frames; a frame cut short raises EOFError.

    (zstandard's stream reader returns a silent EOF on a truncated file.)"""

    def __init__(self, raw):
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


def open_piece(f: InputFile, piece: Piece):
    """A decompressed, buffered binary stream of the piece, and its raw counter."""
    raw_file = f.loc.open()
    name = f.loc.name.lower()
    if name.endswith(".gz"):
        raw = _Counting(raw_file)
        return io.BufferedReader(gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb"),
                                 1 << 20), raw
    if name.endswith(".zst"):
        raw = _Counting(raw_file)
        return io.BufferedReader(_ZstdRaw(raw), 1 << 20), raw
    rng = _Range(raw_file, piece.start, piece.end)
    return io.BufferedReader(rng, 1 << 20), rng
