"""Documents of one piece, per format: `.txt` (whole file, or split on a separator),
`.jsonl` (one JSON object per line, text in a field) and `.parquet` (a text column).
See `readers.py` for the event stream and how pieces own their lines."""

from __future__ import annotations

import codecs
import json
from typing import BinaryIO, Iterator

from ...core.errors import RetrodbError
from ...core.util import first_line
from .inputs import InputFile, Piece
from .readers import (DOC_END, PIECE_BYTES, DocStart, ReaderOptions, ReadStats,
                      open_piece)


class PieceReader:
    """Streams the documents of one piece of one input as events."""

    def __init__(self, f: InputFile, piece: Piece, opts: ReaderOptions):
        self.f = f
        self.piece = piece
        self.opts = opts
        self.stats = ReadStats()
        self._raw = None

    @property
    def bytes_read(self) -> int:
        """Bytes of the input consumed so far (for progress)."""
        return self._raw.count if self._raw is not None else 0

    @property
    def newlines(self) -> int:
        """Newlines in the lines this piece owns: the next piece's first line is this
        piece's first line plus this."""
        return self._raw.newlines if self._raw is not None else 0

    def events(self) -> Iterator[object]:
        path = self.f.loc
        try:
            if self.f.format == ".parquet":
                yield from self._parquet()
                return
            stream, self._raw = open_piece(self.f, self.piece)
            with stream:
                if self.f.format == ".jsonl":
                    yield from self._jsonl(stream)
                elif self.opts.doc_separator:
                    yield from self._txt_split(stream, self.opts.doc_separator)
                else:
                    yield from self._txt_whole(stream)
        except (OSError, EOFError) as e:
            raise RetrodbError(f"{path}: cannot read ({first_line(e)}); the file is "
                               "truncated or corrupt") from None
        except Exception as e:  # zstd raises its own error type
            if type(e).__name__ == "ZstdError":
                raise RetrodbError(f"{path}: cannot read ({first_line(e)}); the file "
                                   "is truncated or corrupt") from None
            raise

    # where errors are ------------------------------------------------------------------
    def line_of(self, local: int) -> int:
        """The file's line number of the piece's line `local` (1-based). Counts the
        newlines before the piece: done only for an error message."""
        if self.piece.start == 0 or self._raw is None:
            return local
        before = 0
        with self.f.loc.open() as f:
            left = self._raw.start
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                before += block.count(b"\n")
                left -= len(block)
        return before + local

    # text ---------------------------------------------------------------------------
    def _decoder(self):
        handler = "strict" if self.opts.errors == "strict" else "retrodb-count"
        return codecs.getincrementaldecoder("utf-8")(handler)

    def _refuse_binary(self, head: bytes) -> None:
        """NUL bytes near the start: a binary file (or UTF-16), not UTF-8 text."""
        at = head.find(b"\x00", 0, 8192)
        if at >= 0:
            raise RetrodbError(f"{self.f.loc}: not UTF-8 text (NUL byte at offset "
                               f"{self.piece.start + at if not self.f.compressed else at}:"
                               " a binary file, or UTF-16); remove it or convert it to "
                               "UTF-8")

    def _decode(self, dec, b: bytes, lineno: int, final: bool) -> str:
        try:
            return dec.decode(b, final)
        except UnicodeDecodeError as e:
            line = self.line_of(lineno + b.count(b"\n", 0, max(e.start, 0)))
            raise RetrodbError(f"{self.f.loc}:{line}: undecodable UTF-8 byte "
                               f"{b[e.start:e.start + 1]!r}; use --errors replace to "
                               "replace such bytes") from None

    def _lines(self, stream: BinaryIO) -> Iterator[tuple[int, str, bool]]:
        """(piece line number, decoded piece of text, piece ends its line)."""
        dec = self._decoder()
        lineno = 1
        token = ERROR_COUNTER.push(self.stats)
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
            ERROR_COUNTER.pop(token)

    def _blocks(self, stream: BinaryIO) -> Iterator[str]:
        """Decoded text in blocks of about PIECE_BYTES, cut anywhere (lines ignored)."""
        dec = self._decoder()
        lineno = 1
        token = ERROR_COUNTER.push(self.stats)
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
            ERROR_COUNTER.pop(token)

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
        lineno = 1
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
                raise RetrodbError(f"{self.f.loc}:{self.line_of(lineno)}: {problem}; fix "
                                   "the line or pass --skip-bad to skip and count such "
                                   "lines")
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
            pf = pq.ParquetFile(self.f.loc.open())
        except (pa.ArrowInvalid, OSError) as e:
            raise RetrodbError(f"{self.f.loc}: not a readable Parquet file "
                               f"({first_line(e)})") from None
        schema = pf.schema_arrow
        if col not in schema.names:
            raise RetrodbError(f"{self.f.loc}: no column {col!r} (columns: "
                               f"{', '.join(schema.names[:10])}); set --text-column")
        typ = schema.field(col).type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise RetrodbError(f"{self.f.loc}: column {col!r} is {typ}, not a string "
                               "column; set --text-column to the text column")
        self._raw = _RowCounter()
        meta = pf.metadata
        row = 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            if self.piece.start <= _row_group_offset(rg) < self.piece.end:
                for batch in pf.iter_batches(batch_size=1024, columns=[col],
                                             row_groups=[g]):
                    for value in batch.column(0).to_pylist():
                        yield DocStart(row)
                        if value:
                            yield value
                        yield DOC_END
                        row += 1
                self._raw.count += rg.total_byte_size
            else:
                row += rg.num_rows


class _RowCounter:
    """Progress of a Parquet piece: bytes of the row groups read so far."""

    def __init__(self):
        self.count = 0
        self.newlines = 0
        self.start = 0


def _row_group_offset(rg) -> int:
    """Where a row group starts in its file: its first page."""
    offsets = []
    for c in range(rg.num_columns):
        col = rg.column(c)
        d = col.dictionary_page_offset if col.has_dictionary_page else None
        offsets.append(min(x for x in (d, col.data_page_offset) if x is not None))
    return min(offsets) if offsets else 0


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


ERROR_COUNTER = _ErrorCounter()
codecs.register_error("retrodb-count", ERROR_COUNTER)
