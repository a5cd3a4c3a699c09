"""`retrodb query`: the nearest chunks of a text, with their continuations."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import out, print_json, user_errors


@user_errors
def query_cli(
    db: Path = typer.Argument(..., help="Database directory (with a merged index)."),
    text: str = typer.Argument(..., help="The text to search for."),
    k: int = typer.Option(4, "-k", "--k", help="Hits to return."),
    nprobe: Optional[int] = typer.Option(None, help="Lists to visit (default: the nprobe "
                                         "chosen when the index was built)."),
    candidates: Optional[int] = typer.Option(None, help="Candidates re-ranked with the "
                                             "exact keys, 0 = none (default: as chosen "
                                             "when the index was built)."),
    json_out: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
):
    """Embed TEXT with the database's model and print its nearest chunks.

    Each hit shows the score (cosine), the chunk, its continuation (the next chunk of
    the same document: RETRO's [N, F]), the chunk and document ids and the source.

    Example: retrodb query mydb "how do I define a class?" -k 4
    """
    from retrodb.errors import RetrodbError

    if not text.strip():
        raise RetrodbError("the query is empty: give the text to search for, e.g. "
                           "retrodb query DB \"how do I define a class?\"")
    if k <= 0:
        raise RetrodbError(f"-k {k}: must be positive")
    import retrodb

    hits = retrodb.open(db, nprobe=nprobe, candidates=candidates).search([text], k)[0]
    if json_out:
        print_json([h.to_dict() for h in hits])
        return
    if not hits:
        out.print("no hits (the index is empty)")
    for rank, h in enumerate(hits, 1):
        out.rule(f"#{rank}  score {h.score:.3f}  ·  chunk {h.chunk_id}  ·  doc {h.doc_id}, "
                 f"chunk {h.pos} of it", align="left", style="dim")
        out.print(f"{h.source}:{h.position}", style="dim", markup=False, highlight=False,
                  soft_wrap=True)
        out.print(h.text.strip(), highlight=False, markup=False)
        if h.continuation is not None:
            out.print(f"[dim]↳ continuation (chunk {h.continuation_id}):[/]")
            out.print(h.continuation.strip(), style="dim", highlight=False, markup=False)
