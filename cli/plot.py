"""`retrodb plot`: training and validation curves to PNG."""

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
    out: Optional[Path] = typer.Option(None, "--out", "-o", show_default=False, help="PNG file [default: "
                                       "DB/models/RUN/curves.png of the first run]."),
    smooth: int = typer.Option(10, help="Moving average of the training loss, in steps."),
):
    """Plot training loss (smoothed) and validation loss per step.

    Example: retrodb plot retro-small baseline-small --db mydb -o curves.png
    """
    from retrodb.training.plot import plot_runs
    from retrodb.training.runs import run_dir

    path = out or run_dir(db, runs[0]) / "curves.png"
    err.print(f"wrote {escape(str(plot_runs(db, runs, path, smooth)))}")
