"""`retrodb chunk` options, and what a run reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...core.errors import RetrodbError
from ...exec.executors import ExecutorSpec
from .inputs import check_text_suffixes
from .readers import ReaderOptions

DEFAULT_CHUNK_SIZE = 64
# 256 MiB of text per split: ~1M chunks of 64 tokens (English, ~4 bytes per token),
# a ~160 MB chunk shard and a ~768 MB float16 384-d embedding shard.
DEFAULT_SPLIT_BYTES = 256 << 20


@dataclass(frozen=True)
class ChunkConfig:
    """Options of `retrodb chunk`; each field names its flag."""

    chunk_size: int | None = None  # --chunk-size: tokens per chunk (paper: 64); None = DB's
    split_size: int = DEFAULT_SPLIT_BYTES  # --split-size: input bytes per shard
    workers: int = 1  # --workers: tokenizer processes (each writes its own shards)
    executor: str = "local"  # --executor: local processes, or Ray tasks ("ray")
    ray_address: str | None = None  # --ray-address: a Ray cluster; None = local Ray
    tokenizer: str | None = None  # --tokenizer: None = the DB's, or the default embedder's
    # --root: input paths are recorded relative to this directory (or URL prefix), so
    # the database never records this machine's absolute paths
    root: str = "."
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    # --text-suffix: other file name endings read as plain text (e.g. ".py", ".md")
    text_suffixes: tuple[str, ...] = ()
    # --exclude: input keys (paths relative to --root) matching these patterns are skipped
    exclude: tuple[str, ...] = ()
    # Tokeniser batch: ~256k characters per encode_batch call keeps the Rust batch busy
    # while bounding memory.
    item_chars: int = 1 << 18
    segment_chars: int = 1 << 14  # cut long documents into ~16k-character segments
    row_group_rows: int = 1 << 16  # Parquet row group: unit of streaming reads later

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address,
                            threads=1 if self.workers > 1 or self.executor == "ray" else None)

    def validate(self) -> None:
        if self.chunk_size is not None and self.chunk_size <= 0:
            raise RetrodbError(f"--chunk-size {self.chunk_size}: must be a positive "
                               "number of tokens (the paper uses 64)")
        if self.split_size < 4096:
            raise RetrodbError(f"--split-size {self.split_size}: at least 4096 bytes of "
                               "input per shard (default 256M)")
        self.executor_spec.validate()
        if self.reader.errors not in ("strict", "replace"):
            raise RetrodbError(f"--errors {self.reader.errors}: use strict or replace")
        check_text_suffixes(self.text_suffixes)
        if self.reader.doc_separator == "":
            raise RetrodbError("--doc-separator: must not be empty")


@dataclass
class ChunkResult:
    inputs: int = 0  # inputs chunked in this run
    inputs_skipped: int = 0  # inputs already in the database
    shards: list[str] = field(default_factory=list)  # shard files written by this run
    rebuilt: int = 0  # shards found missing or corrupt and written again
    docs: int = 0
    chunks: int = 0
    tokens: int = 0
    empty_docs: int = 0
    decode_errors: int = 0
    bad_lines: int = 0
    seconds: float = 0.0
