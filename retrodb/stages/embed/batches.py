"""Embedding one chunk shard into one key shard, in bounded memory.

One output per chunk shard, same number: a standard .npy of float16 (rows, dim), row i
the key of chunk `first_id + i`. Inside a shard, memory is bounded by `window` rows: a
producer thread reads the Parquet shard window by window, gets each chunk's model input
ids, sorts the window by length and pads batches, `prefetch` batches ahead of the model
(tokenisation overlaps compute); the model embeds them and each window is written back
in chunk-id order.

Input ids: when the chunk tokenizer is the model's (the default), a chunk's stored ids
are its model input, except where a chunk starts or ends inside a word: its text alone
tokenises differently ("##s" vs "s"), so those chunks (~8% of 64-token chunks of
English prose) are re-tokenised from their text, and every key is the model's key of
the chunk's text. With any other chunk tokenizer every text is re-tokenised.

CPU parallelism inside a worker is by batch, not inside a matmul: a worker with c cores
runs c lanes, threads that each embed whole batches with one torch thread. On this
2-core machine, shared with other jobs, torch's own 2-thread matmuls ran at a third of
one thread's speed whenever another process took a core (OpenMP threads wait for each
other); lanes do not wait for each other. Each batch's result then does not depend on
the number of cores, lanes or workers: every run of the same shard gives the same bits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...core.errors import RetrodbError
from ...core.storage import Loc
from .embedder import Embedder


def embed_shard(chunks: Loc, out: Path, embedder: Embedder, *, first_id: int, rows: int,
                batch_size: int, window: int = 8192, prefetch: int = 4, lanes: int = 1,
                continuation: np.ndarray | None = None,
                on_chunks: Callable[[int], None] | None = None) -> dict:
    """Embed every chunk of one Parquet shard into one float16 .npy shard at `out`.

    `continuation` (see `embedder.continuation_table`) allows reusing stored token ids;
    None re-tokenises every chunk's text. `lanes` threads embed batches side by side.
    Returns the shard's statistics.
    """
    t0 = time.perf_counter()
    halvings = embedder.oom_halvings
    dim = embedder.spec["dim"]
    stats = {"rows": rows, "dim": dim, "dtype": "float16", "tokens": 0, "padded_tokens": 0,
             "retokenized": 0, "truncated": 0, "batch_size": batch_size,
             "precision": embedder.precision}
    if rows == 0:
        np.save(out, np.zeros((0, dim), dtype=np.float16))
        return stats
    keys = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16, shape=(rows, dim))
    buf = np.zeros((window, dim), dtype=np.float32)

    def run(pos: np.ndarray, ids: np.ndarray, lengths: np.ndarray) -> None:
        buf[pos] = embedder.embed_batch(ids, lengths)  # distinct rows per batch
        if on_chunks is not None:
            on_chunks(len(pos))

    items = _window_batches(chunks, embedder, first_id, rows, batch_size, window,
                            continuation, stats)
    with _Lanes(lanes) as pool:
        for item in _prefetch(items, prefetch):
            if item[0] == "window":
                _, offset, n = item
                pool.wait_all()
                keys[offset:offset + n] = buf[:n]
                continue
            _, pos, ids, lengths = item
            stats["tokens"] += int(lengths.sum())
            stats["padded_tokens"] += int(ids.shape[0] * ids.shape[1])
            pool.submit(run, pos, ids, lengths)
    keys.flush()
    del keys
    stats["oom_halvings"] = embedder.oom_halvings - halvings
    stats["device"] = str(embedder.device)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def _window_batches(chunks: Loc, embedder: Embedder, first_id: int, rows: int,
                    batch_size: int, window: int, continuation: np.ndarray | None,
                    stats: dict) -> Iterator[tuple]:
    """Padded batches of each window, then ("window", offset, n) to write it."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(chunks.open())
        n_rows = pf.metadata.num_rows
    except (OSError, ValueError) as e:
        raise RetrodbError(f"{chunks}: cannot read this chunk shard ({str(e)[:160]}); "
                           "restore it or rebuild the chunk stage") from None
    if n_rows != rows:
        raise RetrodbError(f"{chunks}: {n_rows} rows, its manifest entry says {rows}; "
                           "restore it or rebuild the chunk stage")
    offset = 0
    for batch in pf.iter_batches(batch_size=window,
                                 columns=["chunk_id", "doc_id", "tokens", "length", "text"]):
        n = batch.num_rows
        ids = batch.column("chunk_id").to_numpy()
        if ids[0] != first_id + offset or ids[-1] != first_id + offset + n - 1 or (
                n > 1 and not (np.diff(ids) == 1).all()):
            raise RetrodbError(f"{chunks}: chunk ids are not {first_id}.."
                               f"{first_id + rows - 1} in order; the shard does not match "
                               "its manifest entry: rebuild the chunk stage")
        lengths = batch.column("length").to_numpy().astype(np.int64)
        tokens_col = batch.column("tokens")
        width = tokens_col.type.list_size
        tokens = tokens_col.flatten().to_numpy(zero_copy_only=False).reshape(n, width)
        reuse = reusable(tokens, lengths, batch.column("doc_id").to_numpy(), width,
                          continuation)
        content = tokens.astype(np.int64)  # (n, width): stored ids, zero-padded
        redo = np.flatnonzero(~reuse)
        if redo.size:  # chunks cut inside a word, or another tokenizer: from the text
            texts = batch.column("text").take(redo).to_pylist()
            ids_redo, len_redo = embedder.padded(embedder.tokenize(texts))
            if ids_redo.shape[1] > width:
                content = np.pad(content, ((0, 0), (0, ids_redo.shape[1] - width)))
            content[redo] = 0
            content[redo, :ids_redo.shape[1]] = ids_redo
            lengths[redo] = len_redo
        stats["retokenized"] += int(redo.size)
        for pos, padded, lens, truncated in embedder.batches(content, lengths, batch_size):
            stats["truncated"] += truncated
            yield "batch", pos, padded, lens
        yield "window", offset, n
        offset += n
    if offset != rows:  # pragma: no cover - num_rows was checked
        raise RetrodbError(f"{chunks}: read {offset} rows, expected {rows}")


def reusable(tokens: np.ndarray, lengths: np.ndarray, doc_ids: np.ndarray, width: int,
              continuation: np.ndarray | None) -> np.ndarray:
    """Rows whose stored ids equal their text's tokens: they start at a word and the
    next chunk of their document starts at a word (or there is none)."""
    n = len(lengths)
    if continuation is None:
        return np.zeros(n, dtype=bool)
    first = tokens[:, 0].astype(np.int64)
    known = first < len(continuation)
    starts_word = known & ~continuation[np.where(known, first, 0)]
    ends_word = np.empty(n, dtype=bool)
    ends_word[:-1] = (doc_ids[1:] != doc_ids[:-1]) | starts_word[1:]
    ends_word[-1] = lengths[-1] < width  # only a padded chunk surely ends its document
    return starts_word & ends_word & (lengths > 0)


class _Lanes:
    """Run calls on `n` threads, at most 2n in flight; inline when n == 1."""

    def __init__(self, n: int):
        self.n = n
        self.pool = ThreadPoolExecutor(n, thread_name_prefix="embed-lane") if n > 1 else None
        self.inflight: deque = deque()

    def submit(self, fn: Callable, *args) -> None:
        if self.pool is None:
            fn(*args)
            return
        while len(self.inflight) >= 2 * self.n:
            self.inflight.popleft().result()
        self.inflight.append(self.pool.submit(fn, *args))

    def wait_all(self) -> None:
        while self.inflight:
            self.inflight.popleft().result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _prefetch(items: Iterator, depth: int) -> Iterator:
    """Run the `items` generator in a thread, up to `depth` items ahead."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put(("item", x)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(("error", e))

    thread = threading.Thread(target=produce, name="embed-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, x = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise x
            yield x
    finally:
        stop.set()
        thread.join()
