"""`retrodb chunk`: tokenise and chunk corpora into Parquet shards."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ._common import err, human_count, print_json, user_errors


@user_errors
def chunk_cli(
    inputs: List[str] = typer.Argument(..., help="Files, directories or globs: .txt, "
                                       ".jsonl, .parquet; .txt/.jsonl may be .gz or .zst."),
    db: Path = typer.Option(..., "--db", help="Database directory (created if missing)."),
    chunk_size: Optional[int] = typer.Option(None, help="Tokens per chunk [default: the "
                                             "database's, else 64 as in the paper]."),
    shard_size: int = typer.Option(1_000_000, help="Chunks per shard (~160 MB of Parquet)."),
    workers: int = typer.Option(1, help="Tokenizer processes."),
    executor: str = typer.Option("local", help="'local' processes, or 'ray' tasks on a "
                                 "Ray cluster (pip install 'retrodb[ray]')."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address [default: "
                                              "RAY_ADDRESS, else a local Ray]."),
    tokenizer: Optional[str] = typer.Option(None, help="A Hugging Face tokenizer.json or a "
                                            "directory holding one [default: the database's,"
                                            " else all-MiniLM-L6-v2's]."),
    doc_separator: Optional[str] = typer.Option(None, help="Split .txt files into documents"
                                                " on this string (e.g. '\\n\\n\\n'); "
                                                "default: one document per file."),
    text_field: str = typer.Option("text", help="JSON field holding the text (.jsonl)."),
    text_column: str = typer.Option("text", help="Column holding the text (.parquet)."),
    errors: str = typer.Option("replace", help="Undecodable UTF-8: 'replace' (counted) or "
                               "'strict' (stop with an error)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count malformed JSONL"
                                  " lines instead of stopping."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Tokenise and chunk corpora into the database's chunk shards.

    Re-running with the same inputs adds nothing; new inputs are appended with ids after
    the existing ones; an interrupted run resumes from its last shard.

    Example: retrodb chunk docs/ 'more/*.jsonl.zst' --db mydb --workers 2
    """
    from retrodb.chunk import ChunkConfig, chunk_corpus
    from retrodb.readers import ReaderOptions

    sep = doc_separator.encode().decode("unicode_escape") if doc_separator else None
    cfg = ChunkConfig(
        chunk_size=chunk_size, shard_size=shard_size, workers=workers, executor=executor,
        ray_address=ray_address, tokenizer=tokenizer,
        reader=ReaderOptions(doc_separator=sep, text_field=text_field,
                             text_column=text_column, errors=errors, skip_bad=skip_bad))
    with _ChunkProgress() as bar:
        result = chunk_corpus(db, inputs, cfg, on_progress=bar.update)
    if json_out:
        print_json(result.__dict__)
        return
    rate = result.tokens / result.seconds if result.seconds else 0
    err.print(f"chunked {result.inputs} inputs ({result.inputs_skipped} already in the "
              f"database): {human_count(result.docs)} docs, {human_count(result.chunks)} "
              f"chunks, {human_count(result.tokens)} tokens in {len(result.shards)} new "
              f"shards, {result.seconds:.1f} s ({human_count(rate)} tokens/s)",
              highlight=False)
    notes = []
    if result.empty_docs:
        notes.append(f"{result.empty_docs} empty documents skipped")
    if result.decode_errors:
        notes.append(f"{result.decode_errors} undecodable bytes replaced")
    if result.bad_lines:
        notes.append(f"{result.bad_lines} malformed JSONL lines skipped")
    if notes:
        err.print("note: " + "; ".join(notes), highlight=False)


class _ChunkProgress:
    """A rich progress bar on stderr: input bytes, documents, tokens/s, ETA."""

    def __enter__(self):
        self.progress = None  # started at the first update, so errors print alone
        self.t0 = time.monotonic()
        return self

    def _start(self):
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("chunk"), BarColumn(bar_width=24),
            TextColumn("{task.percentage:>3.0f}% {task.fields[docs]} docs · "
                       "{task.fields[chunks]} chunks · {task.fields[rate]} tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, transient=False)
        self.progress.__enter__()
        self.task = self.progress.add_task("chunk", total=None, docs="0", chunks="0",
                                           rate="-")

    def update(self, p) -> None:
        if self.progress is None:
            self._start()
        elapsed = time.monotonic() - self.t0
        self.progress.update(
            self.task, total=p.bytes_total or None, completed=p.bytes_done,
            docs=human_count(p.docs), chunks=human_count(p.chunks),
            rate=human_count(p.tokens / elapsed) if elapsed > 0 else "-")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
