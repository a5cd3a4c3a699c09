"""Fault points: where the reliability tests kill a stage (SIGKILL, not an exception).

`point(name)` does nothing unless the environment variable RETRODB_FAULT names it:
RETRODB_FAULT=shard.published@2 kills this process the 2nd time that point is reached
(the 1st without `@n`). Points:

    shard.written      a shard function wrote its temporary file, not yet renamed
    shard.published    the shard has its final name, the manifest does not know it
    shard.recorded     the manifest entry is written
    index.trained      trained.faiss written, not yet recorded
    index.merge        the merged lists are on disk, the merged index not yet named
    train.step         an optimiser step is done (before its checkpoint, if any)
    train.checkpoint   a checkpoint is written

The check costs one environment lookup; nothing else depends on it.
"""

from __future__ import annotations

import os
import signal

_SEEN: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("RETRODB_FAULT")
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
