"""`retrodb generate`: sample from a trained run with live retrieval."""

from __future__ import annotations

import typer

from typing import Optional

from .common import check_text, err, escape, print_json, remote, user_errors, write
from .options import DB, JSON, SERVER, SERVER_TOKEN


@user_errors
def generate_cli(
    prompt: Optional[str] = typer.Argument(None, help="Text to continue (or give "
                                           "--prompt-file).", show_default=False),
    prompt_file: Optional[str] = typer.Option(None, "--prompt-file", help="Read the "
                                              "prompt from this UTF-8 file, exactly "
                                              "(newlines and spaces kept).",
                                              show_default=False),
    db: str = DB,
    run: str = typer.Option(..., "--run", help="Run name (DB/models/RUN).",
                            show_default=False),
    max_tokens: int = typer.Option(128, help="Tokens to generate."),
    k: int = typer.Option(2, "-k", help="Neighbours retrieved per chunk."),
    temperature: float = typer.Option(0.8, help="Sampling temperature (0: greedy)."),
    top_k: int = typer.Option(50, help="Sample among the top K tokens (0: all)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="Generate without "
                                      "neighbours."),
    show_retrieval: bool = typer.Option(False, "--show-retrieval", help="Print each "
                                        "chunk's retrieved neighbours and their sources."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    server: Optional[str] = SERVER,
    token_file: Optional[str] = SERVER_TOKEN,
    json_out: bool = JSON,
):
    """Continue PROMPT chunk by chunk; every completed chunk queries the index and its
    neighbours feed the next chunk, as the paper does at sampling time. The text is
    printed exactly as generated.

    Example: retrodb generate --db mydb --run retro-small --prompt-file prompt.txt
    """
    from dataclasses import asdict

    from retrodb.core.errors import RetrodbError
    from retrodb.training.generate import generate

    prompt = _prompt(prompt, prompt_file)
    if max_tokens <= 0:
        raise RetrodbError(f"--max-tokens {max_tokens}: must be at least 1")
    if k <= 0:
        raise RetrodbError(f"-k {k}: must be at least 1")
    if temperature < 0 or top_k < 0:
        raise RetrodbError(f"--temperature {temperature} / --top-k {top_k}: must be 0 or "
                           "more")
    retriever = remote(server, token_file)
    g = generate(db, run, prompt, max_tokens, k, temperature, top_k, seed,
                 retrieval=not no_retrieval, retriever=retriever, device=device)
    if json_out:
        print_json(asdict(g))
        return
    write(prompt + g.text)
    if show_retrieval:
        for r in g.retrieved:
            err.print(f"\nchunk {r.chunk}: {escape(repr(r.query))}")
            for h in r.hits:
                err.print(f"  #{h['chunk_id']} {escape(h['source'])}: "
                          f"{escape(repr(h['text']))}")


def _prompt(prompt: Optional[str], path: Optional[str]) -> str:
    from retrodb.core.errors import RetrodbError

    if (prompt is None) == (path is None):
        raise RetrodbError("PROMPT: give the text to continue or --prompt-file FILE (one "
                           "of them)")
    if path is None:
        return check_text(prompt, "PROMPT")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise RetrodbError(f"--prompt-file {path}: not UTF-8 text; convert it (e.g. with "
                           "iconv)") from None
    except OSError as e:
        raise RetrodbError(f"--prompt-file {path}: cannot read it ({e.strerror})") from None
    if not text:
        raise RetrodbError(f"--prompt-file {path}: empty; put the text to continue in it")
    return text
