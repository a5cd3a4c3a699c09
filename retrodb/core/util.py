"""Small helpers every layer uses: number ranges in messages, process memory, quiet C."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


def ranges(xs) -> str:
    """[0, 1, 2, 5] → '0-2, 5' (shard numbers in messages); long lists are cut."""
    out, start, prev = [], None, None
    for x in sorted(xs):
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    shown = out[:8]
    return ", ".join(shown) + (f", … ({len(xs)} in all)" if len(out) > 8 else "")


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]


def peak_rss_mb() -> float | None:
    """This process's peak resident memory in MB (VmHWM: unlike ru_maxrss, a spawned
    worker's does not include its parent's memory at fork time)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def quiet_c_stdout() -> Iterator[None]:
    """Silence C++ notices on stdout (faiss prints "resizing ..." there): the library
    never prints, and stdout carries the CLI's --json output."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def parse_size(text: str, flag: str) -> int:
    """'512M', '8G', '2T', '1.5G', '4096' → bytes; one line naming `flag` otherwise."""
    import re

    from .errors import RetrodbError

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)i?B?\s*", str(text), re.I)
    if not m:
        raise RetrodbError(f"{flag} {text!r}: give a size such as 512M, 8G or 2T")
    return int(float(m.group(1)) * 1024 ** " KMGTP".index(m.group(2).upper() or " "))
