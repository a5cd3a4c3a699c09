"""`retrodb tokenizer`: train a lossless byte-level BPE for the language model."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import err, human_count, print_json, user_errors
from .options import EXCLUDE, JSON, ROOT, TEXT_SUFFIX
from .progress import Reporter


@user_errors
def tokenizer_cli(
    inputs: List[str] = typer.Argument(..., help="Files, directories, globs or URLs, as "
                                       "for chunk.", show_default=False),
    out: str = typer.Option(..., "--out", help="Where to write the tokenizer.json (a "
                            "file, or a directory for DIR/tokenizer.json).",
                            show_default=False),
    vocab_size: int = typer.Option(16384, help="Ids in all, the 256 byte symbols "
                                   "included."),
    sample: str = typer.Option("1G", help="Read at most this much input (evenly spaced "
                               "blocks of a larger corpus)."),
    min_frequency: int = typer.Option(2, help="A merge must occur at least this often."),
    root: str = ROOT,
    doc_separator: Optional[str] = typer.Option(None, help="Split .txt files into documents"
                                                " on this string, as for chunk.",
                                                show_default=False),
    text_field: str = typer.Option("text", help="JSON field holding the text (.jsonl)."),
    text_column: str = typer.Option("text", help="Column holding the text (.parquet)."),
    exclude: List[str] = EXCLUDE,
    text_suffix: List[str] = TEXT_SUFFIX,
    json_out: bool = JSON,
):
    """Train a byte-level BPE tokenizer on a corpus, for `retrodb chunk --tokenizer`.

    Lossless: decoding a document's tokens gives back its exact UTF-8 bytes (case,
    accents, emoji, tabs, runs of spaces, CR LF). The language model reads these
    tokens; the embedder re-tokenises chunk text with its own tokenizer for the keys.

    Example: retrodb tokenizer docs/ --out tokenizer.json --vocab-size 16384
    """
    from retrodb.core.util import parse_size
    from retrodb.stages.chunk import ReaderOptions
    from retrodb.stages.tokenizer import TokenizerConfig, train_tokenizer

    sep = doc_separator.encode().decode("unicode_escape") if doc_separator else None
    cfg = TokenizerConfig(vocab_size=vocab_size, sample_bytes=parse_size(sample, "--sample"),
                          min_frequency=min_frequency, root=root,
                          text_suffixes=tuple(text_suffix), exclude=tuple(exclude),
                          reader=ReaderOptions(doc_separator=sep, text_field=text_field,
                                               text_column=text_column))
    with Reporter() as bar:
        r = train_tokenizer(inputs, out, cfg, on_progress=bar.update)
    if json_out:
        print_json(r.__dict__)
        return
    err.print(f"{r.path}: byte-level BPE, {r.vocab_size:,} ids, trained on "
              f"{human_count(r.bytes_read)}B of {r.inputs} inputs ({human_count(r.docs)} "
              f"docs) in {r.seconds:.1f} s", markup=False)
