"""What every command shares: the error boundary, output, number formatting.

Output rules: results go to stdout, progress and remarks to stderr. When stdout is not
a terminal (a pipe or a file), text is printed exactly as stored and paths whole: no
wrapping, no cropping, no colour.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Callable

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def debug() -> bool:
    return os.environ.get("RETRODB_DEBUG") == "1"


def user_errors(fn: Callable) -> Callable:
    """Turn a user-caused error into one line on stderr and exit status 2.

    RETRODB_DEBUG=1 shows the traceback instead. Ctrl-C exits 130.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from retrodb.core.errors import RetrodbError

        try:
            return fn(*args, **kwargs)
        except RetrodbError as e:
            if debug():
                raise
            line = " ".join(str(e).split("\n"))
            err.print(f"[bold red]error:[/] {escape(line)}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            if debug():
                raise
            err.print("interrupted: finished shards are kept; rerun the same command to "
                      "resume")
            raise typer.Exit(130) from None

    return wrapper


def escape(text: str) -> str:
    """Text shown through rich as itself (no markup in file names or chunk text)."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def write(text: str = "") -> None:
    """A line of result text on stdout, exactly as given."""
    sys.stdout.write(text + "\n")


def note(msg: str) -> None:
    err.print(f"[yellow]note:[/] {escape(msg)}")


def table(*columns: str, title: str | None = None):
    """A rich table whose cells are plain text (no markup in file names), folded rather
    than cropped on a terminal; `print_table` prints it whole elsewhere."""
    from rich.table import Table
    from rich.text import Text

    class PlainTable(Table):
        def add_row(self, *cells, **kw):
            super().add_row(*[Text(c) if isinstance(c, str) else c for c in cells], **kw)

    t = PlainTable(*columns, title=title)
    for col in t.columns:
        col.overflow = "fold"
    return t


def print_table(t, stderr: bool = False) -> None:
    """On a terminal, rich's table; otherwise tab-separated lines (whole cells), on
    stdout or (`stderr`) with the progress and notes."""
    stream, console = (sys.stderr, err) if stderr else (sys.stdout, out)
    if stream.isatty():
        console.print(t)
        return
    lines = ([str(t.title)] if t.title else []) + \
        ["\t".join(str(c.header) for c in t.columns)] + \
        ["\t".join(_plain(x) for x in row) for row in zip(*[c._cells for c in t.columns])]
    stream.write("".join(line + "\n" for line in lines))


def _plain(cell) -> str:
    from rich.text import Text

    return cell.plain if isinstance(cell, Text) else Text.from_markup(str(cell)).plain


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
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")


def check_text(value: str, what: str) -> str:
    """A command-line text argument that must be valid UTF-8 (argv bytes that are not
    arrive as surrogates)."""
    from retrodb.core.errors import RetrodbError

    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RetrodbError(f"{what}: not valid UTF-8 text; give UTF-8 (e.g. convert "
                           "with iconv)") from None
    return value


def read_token(path: str) -> str:
    """The secret: the first line of the token file."""
    from retrodb.core.errors import RetrodbError

    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise RetrodbError(f"--token-file {path}: cannot read it ({why})") from None
    if not token:
        raise RetrodbError(f"--token-file {path}: its first line is empty; put the secret "
                           "there")
    return token


def remote(server: str | None, token_file: str | None):
    """--server URL [--token-file F]: a `retrodb serve` client, or None without --server."""
    from retrodb.core.errors import RetrodbError

    if not server:
        if token_file:
            raise RetrodbError("--token-file: only with --server URL")
        return None
    from retrodb.query.client import RemoteRetriever

    return RemoteRetriever(server, read_token(token_file) if token_file else None)
