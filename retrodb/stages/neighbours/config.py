"""`retrodb neighbours` options, and what a run reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...core.errors import RetrodbError
from ...exec.executors import ExecutorSpec

STAGE = "neighbours"
# The search a set's shards were computed with: 2 = fast-scan lists, widening that grows
# the kept candidates and the probed lists, leakage on the predicted chunk. `verify`
# recomputes only shards of the current search (an earlier one ranks differently).
SEARCH = 2
R_BINS = 20  # histogram of r = longest common token run / chunk size, in 0.05 steps
SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class NeighboursConfig:
    """Options of `retrodb neighbours`; each field names its flag."""

    set: str = "train"  # --set: the directory DB/neighbours/<set>
    k: int = 2  # -k: neighbours per query chunk (the paper trains with 2)
    # --queries: another retrodb database whose chunks are the queries (same tokenizer,
    # chunk size and embedder); None = the database's own chunks.
    queries: str | None = None
    # --exclude-same-doc/--no-exclude-same-doc; None = on for the database's own chunks.
    exclude_same_doc: bool | None = None
    # --exclude-overlap α: drop neighbours with r > α (None = keep all).
    exclude_overlap: float | None = None
    # --exclude-validation/--no-exclude-validation: no neighbour from a validation
    # document of the database's split (recorded in DB/split.json with these settings
    # if the database has none; the trainer uses the same split).
    exclude_validation: bool = True
    # --val-fraction, --split-seed (as `retrodb train`): None = the database's split,
    # or 0.05 and 0 when it has none yet.
    val_fraction: float | None = None
    split_seed: int | None = None
    # --nprobe: None = calibrated: from the index's chosen operating point, doubled
    # until the filtered neighbours of --recall-queries sampled chunks reach
    # --target-recall against exact filtered search (filtered neighbours lie farther
    # away than a chunk's unfiltered ones, so they need more lists probed).
    nprobe: int | None = None
    target_recall: float = 0.9  # --target-recall
    recall_queries: int = 1000  # --recall-queries (0 = no calibration, no measurement)
    candidates: int | None = None  # --candidates: None = the index's chosen count
    max_search: int = 4096  # --max-search: widest search for a query short of k
    # --only-new: after the index changed (e.g. appended chunks were indexed), search
    # only query shards without neighbours and keep the others as they are (cheaper;
    # their neighbours then never include the appended chunks). Default: redo them.
    only_new: bool = False
    workers: int = 1  # --workers: local processes
    executor: str = "local"  # --executor local|ray
    ray_address: str | None = None
    batch: int = 4096  # queries searched at once

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address,
                            threads=1 if self.workers > 1 or self.executor == "ray" else None)

    def validate(self) -> None:
        if not SET_NAME.match(self.set):
            raise RetrodbError(f"--set {self.set!r}: use letters, digits, '_', '-' or '.' "
                               "(a directory name under DB/neighbours)")
        if self.k <= 0:
            raise RetrodbError(f"-k {self.k}: must be at least 1")
        if self.exclude_overlap is not None and not 0 <= self.exclude_overlap < 1:
            raise RetrodbError(f"--exclude-overlap {self.exclude_overlap}: α must be in "
                               "[0, 1) (r = common token run / chunk size; 0.2 is usual)")
        if self.max_search < self.k:
            raise RetrodbError(f"--max-search {self.max_search}: must be at least -k "
                               f"{self.k}")
        if self.batch <= 0:
            raise RetrodbError(f"batch {self.batch}: must be positive")
        if not 0 < self.target_recall <= 1:
            raise RetrodbError(f"--target-recall {self.target_recall}: must be in (0, 1]")
        if self.recall_queries < 0:
            raise RetrodbError(f"--recall-queries {self.recall_queries}: must be ≥ 0")
        if self.nprobe is not None and self.nprobe <= 0:
            raise RetrodbError(f"--nprobe {self.nprobe}: must be at least 1")
        self.executor_spec.validate()


@dataclass
class NeighboursResult:
    set: str = "train"
    k: int = 2
    shards_done: int = 0
    shards_total: int = 0
    redone: int = 0  # shards recomputed: corrupt, stale, or from an older index
    queries: int = 0  # query chunks searched in this run
    stats: dict = field(default_factory=dict)  # totals over the whole set
    notes: list[str] = field(default_factory=list)
    recall: dict | None = None  # the calibration: nprobe chosen, filtered recall
    seconds: float = 0.0
    directory: str = ""
