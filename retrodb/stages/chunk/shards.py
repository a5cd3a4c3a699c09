"""Chunk rows → the shard files, directly or through a spill.

    chunks/NNNNN.parquet   chunk_id int64, doc_id int64, pos int32,
                           tokens fixed_size_list<uint16|uint32>[chunk_size],
                           length int32, text string (zstd; row groups of 65,536 rows)
    docs/NNNNN.parquet     doc_id, source (dictionary), position, first_chunk_id,
                           n_chunks, n_tokens, n_bytes

Rows arrive with split-local ids and are cut into batches of exactly `row_group` rows.
A batch goes either straight into the Parquet shard (the split's first ids known) or
into a spill (`chunks/.work/NNNNN.*.arrow`, Arrow IPC, lz4) that a later call turns
into the shard once they are. Both paths write the same batches, so the shard is the
same bytes either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LOCAL_DOCS = ("doc", "piece", "position", "first_chunk", "n_chunks", "n_tokens", "n_bytes")


def chunk_schema(dtype: np.dtype, chunk_size: int):
    import pyarrow as pa

    return pa.schema([
        ("chunk_id", pa.int64()), ("doc_id", pa.int64()), ("pos", pa.int32()),
        ("tokens", pa.list_(pa.from_numpy_dtype(dtype), chunk_size)),
        ("length", pa.int32()), ("text", pa.string()),
    ])


def docs_schema():
    import pyarrow as pa

    return pa.schema([
        ("doc_id", pa.int64()), ("source", pa.dictionary(pa.int32(), pa.string())),
        ("position", pa.int64()), ("first_chunk_id", pa.int64()),
        ("n_chunks", pa.int64()), ("n_tokens", pa.int64()), ("n_bytes", pa.int64()),
    ])


def local_schema(dtype: np.dtype, chunk_size: int):
    import pyarrow as pa

    return pa.schema([
        ("doc", pa.int64()), ("pos", pa.int32()),
        ("tokens", pa.list_(pa.from_numpy_dtype(dtype), chunk_size)),
        ("length", pa.int32()), ("text", pa.string()),
    ])


class RowBuffer:
    """Collects a split's chunk rows and documents; hands `target` batches of exactly
    `row_group` rows (the last one shorter), then the documents."""

    def __init__(self, target, dtype: np.dtype, chunk_size: int, row_group: int):
        import pyarrow as pa

        self.pa = pa
        self.target = target
        self.dtype = dtype
        self.cs = chunk_size
        self.row_group = row_group
        self.schema = local_schema(dtype, chunk_size)
        self.parts: list[tuple] = []  # (doc ids, pos, tokens, length, texts)
        self.pending = 0
        self.docs: list[tuple] = []
        self.rows = 0
        self.tokens = 0

    def add(self, doc, first_pos: int, tokens: np.ndarray, length: np.ndarray,
            texts: list[str]) -> None:
        n = len(length)
        self.parts.append((np.full(n, doc.doc, np.int64),
                           np.arange(first_pos, first_pos + n, dtype=np.int32),
                           tokens.astype(self.dtype), length, texts))
        self.pending += n
        self.rows += n
        self.tokens += int(length.sum())
        while self.pending >= self.row_group:
            self._flush(self.row_group)

    def add_doc(self, doc) -> None:
        self.docs.append((doc.doc, doc.piece, doc.position, doc.first_chunk, doc.n_chunks,
                          doc.n_tokens, doc.n_bytes))

    def _flush(self, n: int) -> None:
        pa = self.pa
        cols = [np.concatenate([p[i] for p in self.parts]) for i in range(4)]
        texts = [t for p in self.parts for t in p[4]]
        batch = pa.RecordBatch.from_arrays([
            pa.array(cols[0][:n], pa.int64()), pa.array(cols[1][:n], pa.int32()),
            pa.FixedSizeListArray.from_arrays(pa.array(cols[2][:n].reshape(-1)), self.cs),
            pa.array(cols[3][:n], pa.int32()), pa.array(texts[:n], pa.string()),
        ], schema=self.schema)
        self.target.write(batch)
        rest = len(texts) - n
        self.parts = [(cols[0][n:], cols[1][n:], cols[2][n:], cols[3][n:], texts[n:])] \
            if rest else []
        self.pending = rest

    def close(self, **meta) -> dict:
        if self.pending:
            self._flush(self.pending)
        cols = list(zip(*self.docs)) if self.docs else [[] for _ in LOCAL_DOCS]
        docs = {name: np.asarray(c, dtype=np.int64) for name, c in zip(LOCAL_DOCS, cols)}
        return self.target.close(docs, **{"rows": self.rows, "docs": len(self.docs), **meta})


class ShardWriter:
    """Writes the final shard files from local batches, given the split's offsets."""

    def __init__(self, chunks: Path, docs: Path, dtype: np.dtype, chunk_size: int,
                 first_id: int, first_doc: int, sources: list[str],
                 line_base: list[int | None]):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.schema = chunk_schema(dtype, chunk_size)
        self.writer = pq.ParquetWriter(chunks, self.schema, compression="zstd",
                                       compression_level=3, use_dictionary=["doc_id"],
                                       write_statistics=["chunk_id", "doc_id"])
        self.docs_path = docs
        self.first_id, self.first_doc = first_id, first_doc
        self.next_id = first_id
        self.sources, self.line_base = sources, line_base

    def write(self, batch) -> None:
        pa = self.pa
        n = batch.num_rows
        doc = batch.column(0).to_numpy() + self.first_doc
        table = pa.Table.from_arrays([
            pa.array(np.arange(self.next_id, self.next_id + n, dtype=np.int64)),
            pa.array(doc, pa.int64()), batch.column(1), batch.column(2),
            batch.column(3), batch.column(4)], schema=self.schema)
        self.writer.write_table(table, row_group_size=n)
        self.next_id += n

    def close(self, local_docs: dict, **meta) -> dict:
        import pyarrow.parquet as pq

        pa = self.pa
        self.writer.close()
        docs = local_docs
        piece = docs["piece"]
        base = np.array([b if b is not None else 1 for b in self.line_base], np.int64)
        line_based = np.array([b is not None for b in self.line_base], bool)
        pos = docs["position"]
        if len(piece):
            pos = np.where(line_based[piece], base[piece] + pos - 1, pos)
        source = pa.DictionaryArray.from_arrays(
            pa.array(piece.astype(np.int32), pa.int32()),
            pa.array(self.sources, pa.string()))
        table = pa.Table.from_arrays([
            pa.array(docs["doc"] + self.first_doc, pa.int64()), source,
            pa.array(pos, pa.int64()), pa.array(docs["first_chunk"] + self.first_id,
                                                pa.int64()),
            pa.array(docs["n_chunks"], pa.int64()), pa.array(docs["n_tokens"], pa.int64()),
            pa.array(docs["n_bytes"], pa.int64())], schema=docs_schema())
        pq.write_table(table, self.docs_path, compression="zstd")
        return {**meta, "rows": self.next_id - self.first_id, "docs": len(piece)}


class SpillWriter:
    """Writes local batches and documents to two Arrow IPC files (lz4)."""

    def __init__(self, rows: Path, docs: Path, schema):
        import pyarrow as pa

        self.pa = pa
        self.docs_path = docs
        opts = pa.ipc.IpcWriteOptions(compression="lz4")
        self.sink = pa.OSFile(str(rows), "wb")
        self.writer = pa.ipc.new_file(self.sink, schema, options=opts)
        self.opts = opts

    def write(self, batch) -> None:
        self.writer.write_batch(batch)

    def close(self, local_docs: dict, **meta) -> dict:
        import json

        pa = self.pa
        self.writer.close()
        self.sink.close()
        table = pa.table({k: pa.array(v, pa.int64()) for k, v in local_docs.items()})
        table = table.replace_schema_metadata({"counts": json.dumps(meta)})
        with pa.OSFile(str(self.docs_path), "wb") as f:
            with pa.ipc.new_file(f, table.schema, options=self.opts) as w:
                w.write_table(table)
        return meta


def read_spill(rows: Path, docs: Path):
    """(record batches iterator, docs dict, counts) of a finished spill; None if the
    files are missing or unreadable (the split is then tokenised again)."""
    import json

    import pyarrow as pa

    try:
        with pa.memory_map(str(docs)) as f:
            table = pa.ipc.open_file(f).read_all()
        meta = json.loads(table.schema.metadata[b"counts"])
        reader = pa.ipc.open_file(pa.memory_map(str(rows)))
    except (OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError):
        return None
    docs_d = {name: table.column(name).to_numpy() for name in LOCAL_DOCS}
    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    return batches, docs_d, meta
