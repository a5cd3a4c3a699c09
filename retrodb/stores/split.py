"""The train/validation split, by document, recorded in the database (DB/split.json).

A document is validation when a hash of its id and the split's seed falls below the
validation fraction. The rule, not a list, is stored: it costs nothing at any scale,
any process (trainer, neighbours stage, eval) computes it for any doc ids, and
documents appended later are split by the same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError


@dataclass(frozen=True)
class Split:
    val_fraction: float  # share of documents held out for validation
    seed: int  # changes which documents are held out

    def is_validation(self, doc_ids) -> np.ndarray:
        """Bool array of doc_ids' shape; doc id -1 (none) is never validation."""
        d = np.asarray(doc_ids, dtype=np.int64)
        with np.errstate(over="ignore"):  # splitmix64, wrapping uint64 arithmetic
            z = d.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(self.seed + 1)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
        u = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform [0, 1)
        return (u < self.val_fraction) & (d >= 0)


def load_split(db) -> Split | None:
    loc = Database(db).split_file
    if not loc.exists():
        return None
    d = loc.read_json()
    return Split(float(d["val_fraction"]), int(d["seed"]))


def check_split(db, val_fraction: float, seed: int) -> Split:
    """The split these settings ask for, checked against the database's (if any);
    writes nothing (see `ensure_split`)."""
    if not 0 <= val_fraction < 1:
        raise RetrodbError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    want = Split(val_fraction, seed)
    have = load_split(db)
    if have is not None and have != want:
        raise RetrodbError(f"{Database(db).split_file}: the database is split with "
                           f"--val-fraction {have.val_fraction} --split-seed {have.seed}; "
                           "use those (the neighbours were built for that split)")
    return want


def ensure_split(db, val_fraction: float, seed: int) -> Split:
    """The database's split; recorded with these settings if it has none yet."""
    want = check_split(db, val_fraction, seed)
    if load_split(db) is None:
        d = Database(db)
        d.config()  # a database at all
        d.split_file.write_json({**asdict(want), "rule": "splitmix64(doc_id + "
                                 "0x9E3779B97F4A7C15 * (seed + 1)) >> 11 < val_fraction "
                                 "* 2^53"})
    return want

