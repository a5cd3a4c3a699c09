"""`retrodb eval`: validation loss and bits per byte, with and without retrieval."""

from __future__ import annotations

from typing import Optional

import typer

from .common import print_json, print_table, table, user_errors
from .options import DB, JSON


@user_errors
def eval_cli(
    db: str = DB,
    run: str = typer.Option(..., "--run", help="Run name (DB/models/RUN).",
                            show_default=False),
    max_sequences: int = typer.Option(0, help="Evaluate only the first N validation "
                                      "sequences (0: all)."),
    exclude_overlap: float = typer.Option(0.2, "--exclude-overlap", help="Leakage "
                                          "filter: drop neighbours whose longest common "
                                          "token run with the chunk exceeds this "
                                          "fraction of it (0 to 1)."),
    neighbours: Optional[str] = typer.Option(None, help="Neighbour set [default: the "
                                             "run's].", show_default=False),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    json_out: bool = JSON,
):
    """Validation loss and bits per byte (of the original UTF-8 text) of a run: with
    retrieval, with retrieval disabled, and with leakage-filtered neighbours.

    Example: retrodb eval --db mydb --run retro-small --exclude-overlap 0.2
    """
    from retrodb.core.errors import RetrodbError
    from retrodb.training.evaluate import evaluate_run

    if max_sequences < 0:
        raise RetrodbError(f"--max-sequences {max_sequences}: must be 0 (all) or more")
    r = evaluate_run(db, run, max_sequences, exclude_overlap, neighbours, device)
    if json_out:
        print_json(r)
        return
    t = table("neighbours", "loss (nats/token)", "bits per byte", "tokens",
              title=f"{run} at step {r['step']}: {r['validation_docs']} validation docs")
    rows = [("retrieval", "retrieval"), ("none (retrieval disabled)", "no_retrieval"),
            (f"leakage-filtered (r ≤ {exclude_overlap})", "leakage_filtered")]
    for label, key in rows:
        if key in r:
            t.add_row(label, f"{r[key]['loss']:.4f}", f"{r[key]['bpb']:.4f}",
                      f"{r[key]['tokens']:,}")
    print_table(t)
