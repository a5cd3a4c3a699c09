"""`retrodb plot`: training curves, or bits per byte by leakage bucket, to PNG."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import err, escape, user_errors
from .options import DB


@user_errors
def plot_cli(
    runs: List[str] = typer.Argument(..., help="Run names (DB/models/RUN), one or more "
                                     "to compare."),
    db: str = DB,
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default=False,
                                       help="PNG file [default: DB/models/RUN/curves.png "
                                       "(or leakage.png) of the first run]."),
    smooth: int = typer.Option(10, help="Moving average of the training loss, in steps."),
    leakage: bool = typer.Option(False, "--leakage", help="Plot bits per byte by leakage "
                                 "bucket from each run's last `retrodb eval` instead "
                                 "(the paper's Fig. 6)."),
):
    """Plot training loss (smoothed) and validation loss per step, or (--leakage) bits
    per byte by leakage bucket.

    Example: retrodb plot retro-small baseline-small --db mydb -o curves.png
    """
    from retrodb.training.runs import run_dir

    if leakage:
        from retrodb.training.plot import leakage_series, plot_leakage, read_eval

        series = [(label, b, None) for run in runs
                  for label, b in leakage_series(read_eval(db, run))]
        path = plot_leakage(series, out or run_dir(db, runs[0]) / "leakage.png")
    else:
        from retrodb.training.plot import plot_runs

        path = plot_runs(db, runs, out or run_dir(db, runs[0]) / "curves.png", smooth)
    err.print(f"wrote {escape(str(path))}")
