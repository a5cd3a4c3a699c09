"""`retrodb query`: the nearest chunks of a text, with their continuations."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .common import check_text, out, print_json, user_errors, write
from .options import DB_ARG, JSON


@user_errors
def query_cli(
    db: str = DB_ARG,
    text: str = typer.Argument(..., help="The text to search for.", show_default=False),
    k: int = typer.Option(4, "-k", "--k", help="Hits to return."),
    nprobe: Optional[int] = typer.Option(None, help="Lists to visit [default: the nprobe "
                                         "chosen when the index was built].",
                                         show_default=False),
    candidates: Optional[int] = typer.Option(None, help="Candidates re-ranked with the "
                                             "exact keys, 0 = none [default: as chosen "
                                             "when the index was built].",
                                             show_default=False),
    json_out: bool = JSON,
):
    """Embed TEXT with the database's model and print its nearest chunks.

    Each hit shows the score (cosine), the chunk, its continuation (the next chunk of
    the same document: RETRO's [N, F]), the chunk and document ids and the source.
    Text is printed exactly as stored.

    Example: retrodb query mydb "how do I define a class?" -k 4
    """
    from retrodb.core.errors import RetrodbError

    check_text(text, "the query")
    if not text.strip():
        raise RetrodbError("the query is empty: give the text to search for, e.g. "
                           "retrodb query DB \"how do I define a class?\"")
    if k <= 0:
        raise RetrodbError(f"-k {k}: must be at least 1")
    if nprobe is not None and nprobe <= 0:
        raise RetrodbError(f"--nprobe {nprobe}: must be at least 1")
    if candidates is not None and candidates < 0:
        raise RetrodbError(f"--candidates {candidates}: must be 0 or more")
    import retrodb

    hits = retrodb.open(db, nprobe=nprobe, candidates=candidates).search([text], k)[0]
    if json_out:
        print_json([h.to_dict() for h in hits])
        return
    if not hits:
        write("no hits (the index is empty)")
    tty = sys.stdout.isatty()
    for rank, h in enumerate(hits, 1):
        head = (f"#{rank}  score {h.score:.3f}  ·  chunk {h.chunk_id}  ·  doc {h.doc_id}, "
                f"chunk {h.pos} of it  ·  {h.source}:{h.position}")
        if tty:
            out.rule(head, align="left", style="dim")
            out.print(h.text, markup=False, soft_wrap=True)
        else:
            write(f"--- {head}")
            write(h.text)
        if h.continuation is not None:
            write(f"↳ continuation (chunk {h.continuation_id}):")
            write(h.continuation)
