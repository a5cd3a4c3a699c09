"""The one progress event every stage reports; the CLI renders it (a bar on a terminal,
a plain line every few seconds otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Progress:
    """Work done in one step of a command (cumulative for this run)."""

    step: str  # what is being done: "chunk", "embed", "add parts", "train", ...
    done: float = 0
    total: float | None = None  # None: unknown
    unit: str = ""  # "bytes", "chunks", "vectors", "queries", "steps", ...
    info: dict[str, Any] = field(default_factory=dict)  # extra figures: loss, docs, ...
    workers: dict[str, float] = field(default_factory=dict)  # units done by each worker


ProgressFn = Callable[[Progress], None]
NoteFn = Callable[[str], None]
