"""Options that several commands share, declared once."""

from __future__ import annotations

import typer

DB = typer.Option(..., "--db", help="Database directory, or an object-store URL such as "
                  "s3://bucket/db.", show_default=False)
DB_ARG = typer.Argument(..., help="Database directory or object-store URL.",
                        show_default=False)
WORKERS = typer.Option(1, help="Worker processes on this machine.")
EXECUTOR = typer.Option("local", help="Where shard work runs: 'local' (processes on this "
                        "machine) or 'ray' (tasks on a Ray cluster; pip install "
                        "'retrodb[ray]').")
RAY_ADDRESS = typer.Option(None, help="Ray cluster address, e.g. 10.0.0.1:6379 "
                           "[default: RAY_ADDRESS, else start or join a local Ray].",
                           show_default=False)
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
ROOT = typer.Option(".", help="Directory (or URL prefix) that input paths are recorded "
                    "relative to, so the database never records this machine's paths.")


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """--gpus 0,1 → (0, 1); one line on anything else."""
    from retrodb.core.errors import RetrodbError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip() != "")
    except ValueError:
        raise RetrodbError(f"--gpus {text}: give device numbers separated by commas, "
                           "e.g. --gpus 0,1") from None
SERVER = typer.Option(None, "--server", help="Retrieve from a `retrodb serve` service "
                      "at this URL instead of opening the index here.", show_default=False)
SERVER_TOKEN = typer.Option(None, "--token-file", help="The service's bearer token (first "
                            "line of this file), with --server.", show_default=False)
EXCLUDE = typer.Option([], "--exclude", help="Skip inputs whose path relative to --root "
                       "matches this pattern ('*' crosses '/'; repeat for more).",
                       show_default=False)
TEXT_SUFFIX = typer.Option([], "--text-suffix", help="Also read files ending so as plain "
                           "text, one document each (repeat: --text-suffix .py "
                           "--text-suffix .md).", show_default=False)
