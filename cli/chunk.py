"""`retrodb chunk`: tokenise and chunk corpora into Parquet shards."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import err, human_count, note, print_json, user_errors
from .options import (DB, EXCLUDE, EXECUTOR, JSON, RAY_ADDRESS, ROOT, TEXT_SUFFIX,
                      WORKERS)
from .progress import Reporter


@user_errors
def chunk_cli(
    inputs: List[str] = typer.Argument(..., help="Files, directories, globs or URLs: "
                                       ".txt, .jsonl, .parquet; .txt/.jsonl may be .gz "
                                       "or .zst.", show_default=False),
    db: str = DB,
    chunk_size: Optional[int] = typer.Option(None, help="Tokens per chunk [default: the "
                                             "database's, else 64 as in the paper].",
                                             show_default=False),
    split_size: str = typer.Option("256M", help="Input bytes per shard: large inputs are "
                                   "cut at line starts, small ones grouped."),
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: Optional[str] = RAY_ADDRESS,
    tokenizer: Optional[str] = typer.Option(None, help="A Hugging Face tokenizer.json or a "
                                            "directory holding one [default: the "
                                            "database's, else all-MiniLM-L6-v2's].",
                                            show_default=False),
    root: str = ROOT,
    doc_separator: Optional[str] = typer.Option(None, help="Split .txt files into documents"
                                                " on this string (e.g. '\\n\\n\\n') "
                                                "[default: one document per file].",
                                                show_default=False),
    text_field: str = typer.Option("text", help="JSON field holding the text (.jsonl)."),
    text_column: str = typer.Option("text", help="Column holding the text (.parquet)."),
    errors: str = typer.Option("replace", help="Undecodable UTF-8: 'replace' (counted) or "
                               "'strict' (stop with an error)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count malformed JSONL"
                                  " lines instead of stopping."),
    exclude: List[str] = EXCLUDE,
    text_suffix: List[str] = TEXT_SUFFIX,
    json_out: bool = JSON,
):
    """Tokenise and chunk corpora into the database's chunk shards.

    Each input split becomes one shard, written by the worker that tokenised it; ids
    are global and the same for any number of workers. Re-running with the same inputs
    adds nothing; new inputs are appended; an interrupted run resumes; a shard whose
    file is missing or corrupt is rebuilt.

    Example: retrodb chunk docs/ 'more/*.jsonl.zst' --db mydb --workers 2
    """
    from retrodb.core.util import parse_size
    from retrodb.stages.chunk import ChunkConfig, ReaderOptions, chunk_corpus

    sep = doc_separator.encode().decode("unicode_escape") if doc_separator else None
    cfg = ChunkConfig(
        chunk_size=chunk_size, split_size=parse_size(split_size, "--split-size"),
        workers=workers, executor=executor, ray_address=ray_address, tokenizer=tokenizer,
        root=root, text_suffixes=tuple(text_suffix), exclude=tuple(exclude),
        reader=ReaderOptions(doc_separator=sep, text_field=text_field,
                             text_column=text_column, errors=errors, skip_bad=skip_bad))
    with Reporter() as bar:
        result = chunk_corpus(db, inputs, cfg, on_progress=bar.update, on_note=note)
    if json_out:
        print_json(result.__dict__)
        return
    rate = result.tokens / result.seconds if result.seconds else 0
    rebuilt = f", {result.rebuilt} rebuilt" if result.rebuilt else ""
    err.print(f"chunked {result.inputs} inputs ({result.inputs_skipped} already in the "
              f"database): {human_count(result.docs)} docs, {human_count(result.chunks)} "
              f"chunks, {human_count(result.tokens)} tokens in {len(result.shards)} new "
              f"shards{rebuilt}, {result.seconds:.1f} s ({human_count(rate)} tokens/s)")
    notes = []
    if result.empty_docs:
        notes.append(f"{result.empty_docs} empty documents skipped")
    if result.decode_errors:
        notes.append(f"{result.decode_errors} undecodable bytes replaced")
    if result.bad_lines:
        notes.append(f"{result.bad_lines} malformed JSONL lines skipped")
    if notes:
        note("; ".join(notes))
