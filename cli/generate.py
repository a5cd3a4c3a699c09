"""`retrodb generate`: sample from a trained run with live retrieval."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import err, out, print_json, user_errors


@user_errors
def generate_cli(
    prompt: str = typer.Argument(..., help="Text to continue."),
    db: Path = typer.Option(..., "--db", help="Database directory (its index serves "
                            "retrieval)."),
    run: str = typer.Option(..., "--run", help="Run name (DB/models/RUN)."),
    max_tokens: int = typer.Option(128, help="Tokens to generate."),
    k: int = typer.Option(2, "-k", help="Neighbours retrieved per chunk."),
    temperature: float = typer.Option(0.8, help="Sampling temperature."),
    top_k: int = typer.Option(50, help="Sample among the top K tokens (0: all)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="Generate without "
                                      "neighbours."),
    show_retrieval: bool = typer.Option(False, "--show-retrieval", help="Print each "
                                        "chunk's retrieved neighbours and their sources."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Continue PROMPT chunk by chunk; every completed chunk queries the index and its
    neighbours feed the next chunk, as the paper does at sampling time.

    Example: retrodb generate --db mydb --run retro-small "A list comprehension" --show-retrieval
    """
    from dataclasses import asdict

    from retrodb.generate import generate

    g = generate(db, run, prompt, max_tokens, k, temperature, top_k, seed,
                 retrieval=not no_retrieval, device=device)
    if json_out:
        print_json(asdict(g))
        return
    out.print(f"[bold]{prompt}[/]{g.text}", highlight=False)
    if show_retrieval:
        for r in g.retrieved:
            err.print(f"\n[bold]chunk {r.chunk}[/]: {r.query[:80]!r}", highlight=False)
            for h in r.hits:
                err.print(f"  #{h['chunk_id']} {h['source']}: {h['text'][:100]!r}",
                          highlight=False)
