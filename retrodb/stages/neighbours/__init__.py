"""The neighbours stage: the k nearest database chunks of every query chunk.

    config     options, the result
    checks     a current merged index; a compatible query database
    search     filtered search (own document, validation documents, leakage α)
    calibrate  filtered recall against exact filtered search; the nprobe it needs
    report     a set's counts and its distribution of r (leakage)
    stage      the Stage and `build_neighbours`
"""

from .config import NeighboursConfig, NeighboursResult
from .report import neighbours_report, r_histogram_rows, set_stats
from .stage import NeighboursStage, build_neighbours

__all__ = ["NeighboursConfig", "NeighboursResult", "NeighboursStage", "build_neighbours",
           "neighbours_report", "r_histogram_rows", "set_stats"]
