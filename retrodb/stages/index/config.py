"""`retrodb index` options, file names, and what a run reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...core.errors import RetrodbError
from ...core.util import parse_size
from ...exec.executors import ExecutorSpec

from ...stores.searcher import STAGE  # noqa: F401 - "index"
TRAINED = "trained.faiss"
PART_SUFFIX = ".invlists"
# faiss warns below 39 training points per centroid (k-means of the coarse quantizer,
# and of every PQ/OPQ codebook); retrodb refuses instead of training a poor index.
MIN_POINTS_PER_CENTROID = 39


@dataclass(frozen=True)
class IndexConfig:
    """Options of `retrodb index`; each field names its flag."""

    # --factory: any faiss index_factory string with an IVF layer (the lists are what is
    # sharded and merged on disk). None = autofaiss's choice for the vector count and
    # --memory-budget (quantized IVF only: the exact vectors are already on disk).
    factory: str | None = None
    # --memory-budget: the size the index may take, as autofaiss's max_index_memory_usage
    # (its lists are memory-mapped, so this is page cache, not a hard RAM cap); also
    # caps the training sample (float32, held in RAM by faiss's k-means).
    memory_budget: str = "8G"
    # --max-code-bytes: cap on the PQ code per vector when autofaiss chooses. Candidates
    # are re-ranked with the exact keys, so codes only need to rank them well enough;
    # 64 B is Megatron's PQ64 at 19B chunks. Without the cap an 8G budget on a small
    # database picks PQ256 codes whose OPQ training takes tens of minutes on 2 cores.
    max_code_bytes: int = 64
    # --train-size: vectors in the training sample. None = min(all, 100 per centroid
    # (autofaiss's points per cluster), at least 256 per PQ centroid).
    train_size: int | None = None
    workers: int = 1  # --workers: processes adding parts in parallel
    executor: str = "local"  # --executor: local processes, or Ray tasks ("ray")
    ray_address: str | None = None  # --ray-address: a Ray cluster; None = local Ray
    # --target-recall: recall@k the chosen operating point must reach (Megatron's RETRO
    # index reached 0.93 self-recall; 0.9 is where neighbours stop being mostly noise).
    target_recall: float = 0.9
    # --candidates: candidate-list lengths to try, re-ranked with the exact float16
    # vectors; 0 = the PQ ranking alone (reported for comparison).
    candidates: tuple[int, ...] = (0, 40, 100, 250)
    # --recall-queries: chunks sampled as queries when measuring recall. Exact search
    # costs queries × all vectors × dim, streamed once per merge.
    recall_queries: int = 1000
    k: int = 10  # recall@k is measured for this k (and for k = 1)
    # --max-nprobe: the sweep stops here (Megatron's RETRO index searched at 4096); it
    # also stops for a candidate count once doubling nprobe gains < 0.001 recall.
    max_nprobe: int = 4096
    seed: int = 0  # --seed: the training sample and the recall queries
    # --chooser: who picks the factory without --factory: "rule" (retrodb's measured
    # rule, factory.rule_factory) or "autofaiss" (for the vector count and budget)
    chooser: str = "rule"
    # --kmeans: the coarse quantizer's k-means: auto, flat or two-level (kmeans.py; on
    # the GPUs when faiss sees any)
    kmeans: str = "auto"
    # --rebuild: remove the index and train a new one with these settings
    rebuild: bool = False
    # vectors per faiss add()/search() call: bounds the float32 copy of float16 rows
    batch: int = 1 << 16

    @property
    def executor_spec(self) -> ExecutorSpec:
        return ExecutorSpec(self.executor, self.workers, self.ray_address,
                            threads=1 if self.workers > 1 or self.executor == "ray" else None)

    def validate(self) -> None:
        self.executor_spec.validate()
        parse_size(self.memory_budget, "--memory-budget")
        if self.max_code_bytes < 4:
            raise RetrodbError(f"--max-code-bytes {self.max_code_bytes}: at least 4 "
                               "(autofaiss's smallest code, PQ4)")
        if self.train_size is not None and self.train_size <= 0:
            raise RetrodbError(f"--train-size {self.train_size}: must be positive")
        if not 0 < self.target_recall <= 1:
            raise RetrodbError(f"--target-recall {self.target_recall}: a fraction in (0, 1]")
        if not self.candidates or any(c < 0 for c in self.candidates):
            raise RetrodbError(f"--candidates {','.join(map(str, self.candidates))}: give "
                               "non-negative candidate counts, e.g. 0,40,100")
        if any(0 < c < self.k for c in self.candidates):
            raise RetrodbError(f"--candidates: every count must be 0 or at least k={self.k}")
        if self.recall_queries <= 0:
            raise RetrodbError(f"--recall-queries {self.recall_queries}: must be positive")
        if self.max_nprobe <= 0:
            raise RetrodbError(f"--max-nprobe {self.max_nprobe}: must be positive")
        if self.chooser not in ("rule", "autofaiss"):
            raise RetrodbError(f"--chooser {self.chooser}: use rule or autofaiss")
        if self.kmeans not in ("auto", "flat", "two-level"):
            raise RetrodbError(f"--kmeans {self.kmeans}: use auto, flat or two-level")
        if self.batch <= 0:
            raise RetrodbError(f"batch {self.batch}: must be positive")


@dataclass
class IndexResult:
    """What a run of (some of) the steps did."""

    trained: bool = False  # trained in this run (False: reused)
    factory: str = ""
    chosen_by: str = ""
    train_size: int = 0
    parts_added: int = 0
    vectors_added: int = 0
    merged: bool = False
    ntotal: int = 0
    recall: dict | None = None
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
