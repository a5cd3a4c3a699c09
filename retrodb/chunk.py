"""The chunk stage: corpora → tokenised, fixed-size chunks in Parquet shards.

Why this stage is shaped differently from the others: chunk and document ids must be
dense, global and stable whatever the number of workers. So this process reads the
inputs in a fixed order and cuts documents into text segments; a pool of workers
tokenises segments (the expensive part, in parallel, at most a few batches in flight);
and this process, taking the results back in order, assigns ids and writes shards of
exactly `shard_size` chunks. The output is therefore byte-identical for any `--workers`.

Resume: every shard commit records a cursor (input, document, chunks of that document
already written). A rerun re-reads that input up to the cursor without tokenising it,
re-tokenises the one partly written document and drops the chunks already stored.

Text: a chunk's `text` is the source text from its first token's start offset (the
document's start for the first chunk) to the next chunk's first token's start (the
document's end for the last chunk). Concatenating a document's chunk texts gives back
the decoded document exactly, including whitespace and characters the tokenizer drops.

Segments: documents are tokenised in segments of about `segment_chars` characters, cut
at the start of a whitespace run. For tokenizers whose pre-tokenizer splits on
whitespace (BERT WordPiece, byte-level BPE) this gives the same tokens as the whole
document; a run of more than `segment_chars` characters without whitespace is cut hard.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .db import Database
from .errors import RetrodbError
from .executor import ExecutorSpec
from .readers import DOC_END, DocStart, InputFile, Reader, ReaderOptions, discover_inputs
from .runner import Manifest, file_record, shard_name, stage_lock
from .faults import point
from .storage import publish, tmp_path_for
from .tokenizer import TokenizerSpec, resolve_tokenizer

DEFAULT_CHUNK_SIZE = 64
# ~160 B per 64-token chunk on disk (zstd tokens + text), measured on the Python docs:
# 1M chunks ≈ 160 MB, and its float16 384-d embedding shard ≈ 768 MB.
DEFAULT_SHARD_SIZE = 1_000_000


@dataclass(frozen=True)
class ChunkConfig:
    """Options of `retrodb chunk`; each field names its flag."""

    chunk_size: int | None = None  # --chunk-size: tokens per chunk (paper: 64); None = DB's
    shard_size: int = DEFAULT_SHARD_SIZE  # --shard-size: chunks per shard (~160 MB)
    workers: int = 1  # --workers: tokenizer processes
    executor: str = "local"  # --executor: local processes, or Ray tasks ("ray")
    ray_address: str | None = None  # --ray-address: a Ray cluster; None = local Ray
    tokenizer: str | None = None  # --tokenizer: None = the DB's, or the default embedder's
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    # Tokeniser batch: ~256k characters per work item keeps the Rust batch busy while
    # bounding memory (2 × workers items in flight).
    item_chars: int = 1 << 18
    segment_chars: int = 1 << 14  # cut long documents into ~16k-character segments
    row_group_rows: int = 1 << 16  # Parquet row group: unit of streaming reads later

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address)

    def validate(self) -> None:
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise RetrodbError(f"--chunk-size {self.chunk_size}: must be a positive "
                               "number of tokens (the paper uses 64)")
        if self.shard_size <= 0:
            raise RetrodbError(f"--shard-size {self.shard_size}: must be positive")
        self.executor_spec.validate()
        if self.reader.errors not in ("strict", "replace"):
            raise RetrodbError(f"--errors {self.reader.errors}: use strict or replace")
        if self.reader.doc_separator == "":
            raise RetrodbError("--doc-separator: must not be empty")


@dataclass
class Progress:
    """What the progress callback sees (cumulative for this run)."""

    bytes_done: int = 0
    bytes_total: int = 0
    docs: int = 0
    chunks: int = 0
    tokens: int = 0
    shards: int = 0


@dataclass
class ChunkResult:
    inputs: int = 0  # inputs chunked in this run
    inputs_skipped: int = 0  # inputs already in the database
    shards: list[str] = field(default_factory=list)
    docs: int = 0
    chunks: int = 0
    tokens: int = 0
    empty_docs: int = 0
    decode_errors: int = 0
    bad_lines: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------
# Tokenisation (runs in worker processes)

_TOKENIZER = None
_CHUNK_SIZE = 0

# How a segment relates to the previous one, so a worker knows which token starts it
# must report: NEW starts a document; NEXT continues the previous segment's document in
# the same work item; CONT continues a document whose earlier tokens were in another item.
NEW, NEXT, CONT = 0, 1, 2


def _init_worker(tokenizer_json: str, chunk_size: int, parallel: bool) -> None:
    global _TOKENIZER, _CHUNK_SIZE
    if not parallel:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _TOKENIZER = TokenizerSpec("", tokenizer_json).load()
    _CHUNK_SIZE = chunk_size


def tokenize_segments(payload: tuple[list[str], list[int]]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, start offsets and token counts of a batch of segments.

    Start offsets are characters into each segment, given only where the assembler
    needs them: for tokens that begin a chunk (every chunk_size-th token of a document;
    -1 elsewhere), or for every token of a segment whose place in its document is
    unknown here (CONT). Materialising all offsets costs ~100 ns per token, an eighth of
    the tokeniser's own time.
    """
    segments, links = payload
    encs = _TOKENIZER.encode_batch(segments, add_special_tokens=False)
    counts = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    ids = np.concatenate([np.array(e.ids, dtype=np.uint32) for e in encs]) if encs else \
        np.zeros(0, np.uint32)
    starts = np.full(len(ids), -1, dtype=np.int64)
    cs, at, in_doc = _CHUNK_SIZE, 0, None
    for e, link, n in zip(encs, links, counts.tolist()):
        in_doc = 0 if link == NEW else None if link == CONT else in_doc
        if in_doc is None:
            starts[at:at + n] = np.fromiter((o[0] for o in e.offsets), np.int64, count=n)
        else:
            for j in range((-in_doc) % cs, n, cs):
                starts[at + j] = e.token_to_chars(j)[0]
            in_doc += n
        at += n
    return ids, starts, counts


# --------------------------------------------------------------------------------------
# Reading: documents → work items of text segments

SEG, END, INPUT_DONE = 0, 1, 2


class DocState:
    """A document being assembled into chunks."""

    __slots__ = ("input", "index", "position", "doc_id", "first_chunk_id", "skip",
                 "empty_before", "ids", "starts", "texts", "text_base", "chars",
                 "chars_sent", "n_chunks", "n_tokens", "n_bytes", "finished")

    def __init__(self, inp: "InputState", index: int, position: int):
        self.input = inp
        self.index = index  # document number within its input (empty ones included)
        self.position = position  # line (text/jsonl) or row (parquet)
        self.doc_id = -1  # assigned at the first chunk: empty documents get no id
        self.first_chunk_id = -1
        self.skip = 0  # chunks already stored by an interrupted run
        self.empty_before = inp.empty_docs
        self.ids: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.texts: list[str] = []
        self.text_base = 0  # document offset of texts[0][0]
        self.chars = 0  # characters assembled so far
        self.chars_sent = 0  # characters sent to the tokeniser so far
        self.n_chunks = self.n_tokens = self.n_bytes = 0
        self.finished = False


@dataclass
class InputState:
    file: InputFile
    reader: Reader
    docs: int = 0
    empty_docs: int = 0

    def record(self) -> dict:
        return {"path": self.file.key, "bytes": self.file.size, "format": self.file.format,
                "docs": self.docs, "empty_docs": self.empty_docs,
                "decode_errors": self.reader.stats.decode_errors,
                "bad_lines": self.reader.stats.bad_lines}


@dataclass
class WorkItem:
    entries: list[tuple]  # (SEG, doc, text) | (END, doc, None) | (INPUT_DONE, input, None)
    segments: list[str]
    links: list[int]  # NEW / NEXT / CONT per segment

    @property
    def payload(self) -> tuple[list[str], list[int]]:
        return self.segments, self.links


def _cut(text: str) -> int:
    """Where to cut a long text: the start of its last whitespace run (0 if none)."""
    i = text.rfind("\n")
    if i < len(text) // 4:
        i = max(i, text.rfind(" "))
    if i <= 0:
        return 0
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


def work_items(inputs: list[InputState], cursor: dict | None, cfg: ChunkConfig
               ) -> Iterator[WorkItem]:
    """Stream every input's documents as segments, grouped into work items."""
    entries: list[tuple] = []
    segments: list[str] = []
    links: list[int] = []
    size = 0
    last: DocState | None = None  # document of the last segment in this item

    def add(doc: DocState, text: str) -> None:
        nonlocal size, last
        link = NEXT if doc is last else NEW if doc.chars_sent == 0 else CONT
        entries.append((SEG, doc, text))
        segments.append(text)
        links.append(link)
        doc.chars_sent += len(text)
        size += len(text)
        last = doc

    def flush() -> Iterator[WorkItem]:
        nonlocal entries, segments, links, size, last
        if entries:
            yield WorkItem(entries, segments, links)
            entries, segments, links, size, last = [], [], [], 0, None

    seg = cfg.segment_chars
    for inp in inputs:
        resume = cursor if cursor and cursor["path"] == inp.file.key else None
        if resume:
            inp.empty_docs = resume["empty_before"]
        doc: DocState | None = None
        buf: list[str] = []
        buf_len = 0
        index = -1
        skipping = False
        for ev in inp.reader.events():
            if isinstance(ev, DocStart):
                index += 1
                skipping = False
                if resume and (index < resume["doc_index"] or
                               (index == resume["doc_index"] and resume["complete"])):
                    skipping = True  # stored by the interrupted run
                    continue
                doc = DocState(inp, index, ev.position)
                if resume and index == resume["doc_index"]:
                    doc.skip = resume["chunks_written"]
                    doc.doc_id = resume["doc_id"]
                    doc.first_chunk_id = resume["first_chunk_id"]
                    doc.empty_before = resume["empty_before"]
                buf, buf_len = [], 0
            elif skipping:
                continue
            elif ev is DOC_END:
                if buf:
                    add(doc, "".join(buf))
                entries.append((END, doc, None))
                doc = None
                if size >= cfg.item_chars:
                    yield from flush()
            else:  # a text piece: cut whole segments off the front of the buffer
                buf.append(ev)
                buf_len += len(ev)
                if buf_len < seg:
                    continue
                text = "".join(buf)
                at = 0
                while len(text) - at >= seg:
                    cut = _cut(text[at:at + 2 * seg]) or min(2 * seg, len(text) - at)
                    add(doc, text[at:at + cut])
                    at += cut
                    if size >= cfg.item_chars:
                        yield from flush()
                rest = text[at:]
                buf, buf_len = ([rest], len(rest)) if rest else ([], 0)
        entries.append((INPUT_DONE, inp, None))
    yield from flush()


# --------------------------------------------------------------------------------------
# Writing: chunks → shards


class ShardWriter:
    """Buffers chunk rows into row groups and commits shards of `shard_size` rows."""

    def __init__(self, db: Database, manifest: Manifest, cfg: ChunkConfig, chunk_size: int,
                 token_dtype: str, progress: Progress):
        import pyarrow as pa

        self.pa = pa
        self.db = db
        self.manifest = manifest
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.dtype = np.dtype(token_dtype)
        self.schema = pa.schema([
            ("chunk_id", pa.int64()), ("doc_id", pa.int64()), ("pos", pa.int32()),
            ("tokens", pa.list_(pa.from_numpy_dtype(self.dtype), chunk_size)),
            ("length", pa.int32()), ("text", pa.string()),
        ])
        self.docs_schema = pa.schema([
            ("doc_id", pa.int64()), ("source", pa.dictionary(pa.int32(), pa.string())),
            ("position", pa.int64()), ("first_chunk_id", pa.int64()),
            ("n_chunks", pa.int64()), ("n_tokens", pa.int64()), ("n_bytes", pa.int64()),
        ])
        self.row_group = min(cfg.row_group_rows, cfg.shard_size)
        self.progress = progress
        self.shard = manifest.next_shard
        self.first_id = manifest.next_id
        self.rows = 0  # rows in the open shard
        self.tokens = 0  # real tokens in the open shard
        self.pending: list = []  # tables not yet written as a row group
        self.pending_rows = 0
        self.writer = None
        self.docs: list[tuple] = []
        self.sources: dict[str, None] = {}  # inputs of the open shard, in reading order
        self.inputs_done: list[dict] = []
        self.last: tuple[DocState, int] | None = None  # (doc, pos) of the last row
        self.committed: list[str] = []

    # rows -----------------------------------------------------------------------------
    def add(self, doc: DocState, pos: np.ndarray, tokens: np.ndarray, length: np.ndarray,
            text: list[str]) -> None:
        """Append rows of one document (positions `pos`) to the open shard(s)."""
        n = len(pos)
        i = 0
        while i < n:
            if self.rows == self.cfg.shard_size:
                self.commit()
            take = min(n - i, self.cfg.shard_size - self.rows)
            p = pos[i:i + take]
            table = self.pa.Table.from_arrays([
                self.pa.array(doc.first_chunk_id + p, self.pa.int64()),
                self.pa.array(np.full(take, doc.doc_id), self.pa.int64()),
                self.pa.array(p, self.pa.int32()),
                self.pa.FixedSizeListArray.from_arrays(
                    self.pa.array(tokens[i:i + take].astype(self.dtype).ravel()),
                    self.chunk_size),
                self.pa.array(length[i:i + take], self.pa.int32()),
                self.pa.array(text[i:i + take], self.pa.string()),
            ], schema=self.schema)
            self.pending.append(table)
            self.pending_rows += take
            self.rows += take
            self.tokens += int(length[i:i + take].sum())
            self.sources[doc.input.file.key] = None
            self.last = (doc, int(p[-1]))
            i += take
            while self.pending_rows >= self.row_group:
                self._write_row_group(self.row_group)

    def add_doc(self, doc: DocState) -> None:
        self.docs.append((doc.doc_id, doc.input.file.key, doc.position, doc.first_chunk_id,
                          doc.n_chunks, doc.n_tokens, doc.n_bytes))

    def input_done(self, record: dict) -> None:
        self.inputs_done.append(record)

    def _write_row_group(self, n: int) -> None:
        import pyarrow.parquet as pq

        table = self.pa.concat_tables(self.pending)
        if self.writer is None:
            self.writer = pq.ParquetWriter(
                tmp_path_for(self._path()), self.schema, compression="zstd",
                compression_level=3, use_dictionary=["doc_id"], write_statistics=["chunk_id", "doc_id"])
        self.writer.write_table(table.slice(0, n), row_group_size=n)
        rest = table.slice(n)
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def _path(self) -> Path:
        return self.db.chunks_dir / shard_name(self.shard, ".parquet")

    # commits --------------------------------------------------------------------------
    def commit(self) -> None:
        """Publish the open shard and its documents, then record it with the cursor."""
        import pyarrow.parquet as pq

        if self.pending_rows:
            self._write_row_group(self.pending_rows)
        self.writer.close()
        self.writer = None
        path = self._path()
        point("shard.written")
        publish(tmp_path_for(path), path)
        docs_path = self.db.docs_dir / shard_name(self.shard, ".parquet")
        docs_path.parent.mkdir(parents=True, exist_ok=True)
        cols = list(zip(*self.docs)) if self.docs else [[] for _ in range(7)]
        table = self.pa.Table.from_arrays(
            [self.pa.array(cols[0], self.pa.int64()),
             self.pa.array(cols[1], self.pa.string()).dictionary_encode().cast(
                 self.docs_schema.field("source").type)]
            + [self.pa.array(c, self.pa.int64()) for c in cols[2:]], schema=self.docs_schema)
        tmp = tmp_path_for(docs_path)
        pq.write_table(table, tmp, compression="zstd")
        publish(tmp, docs_path)
        point("shard.published")

        doc, pos = self.last
        entry = {"shard": self.shard, **file_record(path, path.name),
                 "rows": self.rows, "first_id": self.first_id, "tokens": self.tokens,
                 "docs": len(self.docs),
                 "first_doc_id": self.docs[0][0] if self.docs else None,
                 "inputs": list(self.sources),
                 "extra": [file_record(docs_path, f"../docs/{docs_path.name}")]}
        cursor = {"path": doc.input.file.key, "bytes": doc.input.file.size,
                  "doc_index": doc.index, "doc_id": doc.doc_id,
                  "first_chunk_id": doc.first_chunk_id, "chunks_written": pos + 1,
                  "complete": doc.finished, "empty_before": doc.empty_before}
        # what `retrodb verify` needs to recompute this shard from its inputs: where
        # it ends (the next shard starts there) and the options that shape its bytes
        entry["end"] = cursor
        entry["made_with"] = {"reader": dataclasses.asdict(self.cfg.reader),
                              "segment_chars": self.cfg.segment_chars,
                              "row_group_rows": self.cfg.row_group_rows,
                              "shard_size": self.cfg.shard_size}
        self.manifest.record(entry, inputs=self.manifest.data.get("inputs", []) +
                             self.inputs_done, cursor=cursor)
        point("shard.recorded")
        self.committed.append(path.name)
        self.progress.shards += 1
        self.shard += 1
        self.first_id += self.rows
        self.rows = self.tokens = 0
        self.docs = []
        self.sources = {}
        self.inputs_done = []

    def abort(self) -> None:
        """Remove the open shard's temporary file (no-op after finish)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        tmp_path_for(self._path()).unlink(missing_ok=True)

    def finish(self) -> None:
        """Commit the last, partial shard; record inputs finished after it."""
        if self.rows:
            self.commit()
        self.manifest.record(None, inputs=self.manifest.data.get("inputs", []) +
                             self.inputs_done, cursor=None)
        self.inputs_done = []


# --------------------------------------------------------------------------------------
# Assembling: token ids + offsets → chunks


class Assembler:
    """Turns tokenised segments back into chunks of whole documents, in order."""

    def __init__(self, writer: ShardWriter, next_chunk_id: int, next_doc_id: int,
                 chunk_size: int, result: ChunkResult, progress: Progress):
        self.writer = writer
        self.next_chunk_id = next_chunk_id
        self.next_doc_id = next_doc_id
        self.cs = chunk_size
        self.result = result
        self.progress = progress

    def feed(self, item: WorkItem, tokenized) -> None:
        ids, starts, counts = tokenized
        bounds = np.concatenate([[0], np.cumsum(counts)])
        k = 0
        for kind, obj, text in item.entries:
            if kind == SEG:
                a, b = bounds[k], bounds[k + 1]
                self._segment(obj, text, ids[a:b], starts[a:b])
                k += 1
            elif kind == END:
                self._end(obj)
            else:
                self.writer.input_done(obj.record())
                self.result.decode_errors += obj.reader.stats.decode_errors
                self.result.bad_lines += obj.reader.stats.bad_lines

    def _segment(self, doc: DocState, text: str, ids: np.ndarray, starts: np.ndarray):
        doc.ids.append(ids)
        doc.starts.append(starts + doc.chars)
        doc.texts.append(text)
        doc.chars += len(text)
        doc.n_bytes += len(text.encode("utf-8"))
        pending = sum(len(x) for x in doc.ids)
        if pending > self.cs:  # emit every chunk whose successor's start is known
            self._emit(doc, (pending - 1) // self.cs, final=False)

    def _end(self, doc: DocState) -> None:
        pending = sum(len(x) for x in doc.ids)
        if pending:
            self._emit(doc, -(-pending // self.cs), final=True)
        if doc.n_chunks == 0:
            doc.input.empty_docs += 1
            self.result.empty_docs += 1
        else:
            doc.finished = True
            doc.input.docs += 1
            self.result.docs += 1
            self.progress.docs += 1
            self.writer.add_doc(doc)
        doc.ids = doc.starts = doc.texts = []

    def _emit(self, doc: DocState, n: int, final: bool) -> None:
        cs = self.cs
        ids = np.concatenate(doc.ids) if len(doc.ids) > 1 else doc.ids[0]
        starts = np.concatenate(doc.starts) if len(doc.starts) > 1 else doc.starts[0]
        text = "".join(doc.texts) if len(doc.texts) > 1 else doc.texts[0]
        used = min(n * cs, len(ids))
        tokens = np.zeros((n, cs), dtype=np.uint32)
        tokens.reshape(-1)[:used] = ids[:used]
        length = np.full(n, cs, dtype=np.int32)
        length[-1] = used - (n - 1) * cs
        # character boundaries of the n chunks, relative to text
        cuts = np.empty(n + 1, dtype=np.int64)
        cuts[0] = 0
        cuts[1:n] = starts[cs:n * cs:cs] - doc.text_base
        cuts[n] = len(text) if final else starts[n * cs] - doc.text_base
        if n > 1 and starts[cs:n * cs:cs].min() < 0 or not final and starts[n * cs] < 0:
            raise AssertionError("chunk boundary without a token offset")  # a bug, not input
        np.maximum.accumulate(cuts, out=cuts)
        if doc.doc_id < 0:
            doc.doc_id = self.next_doc_id
            self.next_doc_id += 1
            doc.first_chunk_id = self.next_chunk_id
        pos = np.arange(doc.n_chunks, doc.n_chunks + n)
        keep = pos >= doc.skip
        texts = [text[cuts[j]:cuts[j + 1]] for j in range(n)]
        if not keep.all():
            pos, tokens, length = pos[keep], tokens[keep], length[keep]
            texts = [t for t, k in zip(texts, keep) if k]
        doc.n_chunks += n
        doc.n_tokens += used
        if len(pos):
            self.writer.add(doc, pos, tokens, length, texts)
            self.next_chunk_id += len(pos)
            self.result.chunks += len(pos)
            self.result.tokens += int(length.sum())
            self.progress.chunks += len(pos)
            self.progress.tokens += int(length.sum())
        # keep what follows the emitted chunks
        rest = used if final else n * cs
        doc.ids = [ids[rest:]] if rest < len(ids) else []
        doc.starts = [starts[rest:]] if rest < len(starts) else []
        doc.texts = [text[cuts[n]:]] if cuts[n] < len(text) else []
        doc.text_base += int(cuts[n])


# --------------------------------------------------------------------------------------
# The stage


def chunk_corpus(db_path: str | Path, paths: list[str], cfg: ChunkConfig = ChunkConfig(),
                 on_progress: Callable[[Progress], None] | None = None) -> ChunkResult:
    """Chunk `paths` (files, directories, globs) into the database at `db_path`.

    Inputs already in the database are skipped; an interrupted run is resumed from its
    last committed shard.
    """
    cfg.validate()
    t0 = time.time()
    db = Database(db_path)
    if cfg.tokenizer is None and db.exists():
        spec = db.tokenizer()
    else:
        spec = resolve_tokenizer(cfg.tokenizer)
    chunk_size = cfg.chunk_size
    if chunk_size is None:
        chunk_size = db.config()["chunk_size"] if db.exists() else DEFAULT_CHUNK_SIZE
    files = discover_inputs(paths)
    db.create_or_check(spec, chunk_size)
    token_dtype = db.config()["token_dtype"]

    result = ChunkResult()
    with stage_lock(db.chunks_dir, "chunk"):
        manifest = Manifest(db.chunks_dir, "chunks")
        todo, cursor = _plan(files, manifest)
        result.inputs = len(todo)
        result.inputs_skipped = len(files) - len(todo)
        progress = Progress(bytes_total=sum(f.size for f in todo))
        next_doc_id = _next_doc_id(manifest)
        if cursor is not None:
            next_doc_id = max(next_doc_id, cursor["doc_id"] + 1)
        writer = ShardWriter(db, manifest, cfg, chunk_size, token_dtype, progress)
        assembler = Assembler(writer, manifest.next_id, next_doc_id, chunk_size, result,
                              progress)
        states = [InputState(f, Reader(f, cfg.reader)) for f in todo]
        done_bytes, current = 0, 0
        try:
            parallel = cfg.executor == "local" and cfg.workers == 1
            with cfg.executor_spec.make(_init_worker, (spec.json, chunk_size, parallel)) as ex:
                items = work_items(states, cursor, cfg)
                for item, tokenized in ex.imap(tokenize_segments, items, ordered=True,
                                               key=lambda it: it.payload):
                    assembler.feed(item, tokenized)
                    if on_progress is not None:
                        while current < len(states) - 1 and states[current].reader.done:
                            done_bytes += states[current].file.size
                            current += 1
                        progress.bytes_done = done_bytes + states[current].reader.bytes_read
                        on_progress(progress)
                if todo and result.docs == 0 and cursor is None:
                    more = f" (and {len(todo) - 1} more inputs)" if len(todo) > 1 else ""
                    raise RetrodbError(f"{todo[0].path}{more}: no text to chunk (empty, or "
                                       "only empty documents); nothing was added")
                writer.finish()
        finally:
            writer.abort()  # drop a half-written shard; committed shards stay
        result.shards = writer.committed
    if on_progress is not None and progress.bytes_total:
        progress.bytes_done = progress.bytes_total
        on_progress(progress)
    result.seconds = time.time() - t0
    return result


def _plan(files: list[InputFile], manifest: Manifest) -> tuple[list[InputFile], dict | None]:
    """Inputs still to chunk (an interrupted one first) and the resume cursor."""
    done = {r["path"]: r for r in manifest.data.get("inputs", [])}
    todo = []
    for f in files:
        r = done.get(f.key)
        if r is None:
            todo.append(f)
        elif r["bytes"] != f.size:
            raise RetrodbError(f"{f.path}: already chunked into this database with "
                               f"{r['bytes']} bytes, now {f.size}; chunked inputs are "
                               "immutable: give the new version another name")
    cursor = manifest.data.get("cursor")
    if cursor is not None and cursor["path"] in done:
        cursor = None  # the interrupted run had finished that input
    if cursor is not None:
        first = [f for f in todo if f.key == cursor["path"]]
        if not first:
            raise RetrodbError(f"an interrupted run was chunking {cursor['path']}; rerun "
                               "with that input included to finish it")
        if cursor.get("bytes", first[0].size) != first[0].size:
            raise RetrodbError(f"{first[0].path}: changed since an interrupted run began "
                               "chunking it; restore it to finish that run, or chunk "
                               "into a new database")
        todo = first + [f for f in todo if f.key != cursor["path"]]
    return todo, cursor


def _next_doc_id(manifest: Manifest) -> int:
    """Docs are recorded when they end: the next id follows every recorded doc."""
    n = 0
    for e in manifest.shards:
        if e["docs"]:
            n = max(n, e["first_doc_id"] + e["docs"])
    return n


# --------------------------------------------------------------------------------------
# Recomputing one shard (for `retrodb verify`)


class _Scratch(Manifest):
    """A manifest that records nothing: shards are written to a scratch directory."""

    def __init__(self, directory: Path, shard: int, first_id: int):
        self.directory, self.path, self.stage = directory, directory / "manifest.json", "chunks"
        self.data = {"shards": [], "inputs": []}
        self._shard, self._first = shard, first_id

    @property
    def next_shard(self) -> int:
        return self._shard

    @property
    def next_id(self) -> int:
        return self._first

    def record(self, entry=None, **top) -> None:
        pass


def recompute_shard(db_path: str | Path, shard: int, scratch: Path) -> tuple[Path, Path]:
    """Re-chunk shard `shard` from its recorded inputs into `scratch`.

    Returns the (chunks, docs) files, which must equal the stored ones byte for byte.
    Raises RetrodbError when an input is gone or changed.
    """
    db = Database(db_path)
    m = Manifest(db.chunks_dir, "chunks")
    e = m.entry(shard)
    if e is None or "made_with" not in e:
        raise RetrodbError(f"{db.chunks_dir}: shard {shard} has no recipe to recompute")
    prev = m.entry(shard - 1) if shard > 0 else None
    made = e["made_with"]
    cfg = ChunkConfig(shard_size=made["shard_size"], reader=ReaderOptions(**made["reader"]),
                      segment_chars=made["segment_chars"],
                      row_group_rows=made["row_group_rows"])
    files = []
    for path in e["inputs"]:
        p = Path(path)
        if not p.is_file():
            raise RetrodbError(f"{path}: input of chunk shard {shard} is gone; cannot "
                               "recompute it")
        f = discover_inputs([path])[0]
        done = {r["path"]: r["bytes"] for r in m.data.get("inputs", [])}
        if done.get(f.key, f.size) != f.size:
            raise RetrodbError(f"{path}: changed since it was chunked; cannot recompute "
                               f"chunk shard {shard}")
        files.append(f)
    cursor = prev["end"] if prev and prev["end"]["path"] == files[0].key else None
    next_doc = prev["end"]["doc_id"] + 1 if prev else 0
    spec, cfg_db = db.tokenizer(), db.config()
    out = Database(scratch)
    out.chunks_dir.mkdir(parents=True, exist_ok=True)
    progress, result = Progress(), ChunkResult()
    writer = ShardWriter(out, _Scratch(out.chunks_dir, shard, e["first_id"]), cfg,
                         cfg_db["chunk_size"], cfg_db["token_dtype"], progress)
    assembler = Assembler(writer, e["first_id"], next_doc, cfg_db["chunk_size"], result,
                          progress)
    states = [InputState(f, Reader(f, cfg.reader)) for f in files]
    _init_worker(spec.json, cfg_db["chunk_size"], True)
    try:
        for item in work_items(states, cursor, cfg):
            assembler.feed(item, tokenize_segments(item.payload))
            if writer.committed:
                break
        else:
            writer.finish()
    finally:
        writer.abort()
    name = shard_name(shard, ".parquet")
    return out.chunks_dir / name, out.docs_dir / name
