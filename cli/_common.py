"""What every command shares: the error boundary, consoles, number formatting."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable

import typer
from rich.console import Console

err = Console(stderr=True)
out = Console()


def debug() -> bool:
    return os.environ.get("RETRODB_DEBUG") == "1"


def user_errors(fn: Callable) -> Callable:
    """Turn a user-caused error into one line on stderr and a non-zero exit.

    RETRODB_DEBUG=1 shows the traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from retrodb.errors import RetrodbError

        try:
            return fn(*args, **kwargs)
        except RetrodbError as e:
            if debug():
                raise
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            if debug():
                raise
            err.print("interrupted: finished shards are kept; rerun the same command to "
                      "resume", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def human_count(n: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def print_json(data) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
