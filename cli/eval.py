"""`retrodb eval`: validation loss and bits per byte, with and without retrieval, and by
leakage bucket."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import print_json, print_table, remote, table, user_errors
from .options import DB, JSON, SERVER, SERVER_TOKEN

MODES = (("retrieval", "retrieval"), ("none (retrieval off)", "no_retrieval"),
         ("leakage-filtered", "leakage_filtered"))


@user_errors
def eval_cli(
    db: str = DB,
    runs: List[str] = typer.Option(..., "--run", help="Run name (DB/models/RUN); repeat "
                                   "to compare runs on the same tokens.",
                                   show_default=False),
    max_sequences: int = typer.Option(0, help="Evaluate only the first N validation "
                                      "sequences (0: all)."),
    exclude_overlap: float = typer.Option(0.2, "--exclude-overlap", help="Leakage "
                                          "filter α: drop neighbours whose longest common "
                                          "token run with the chunk they help predict "
                                          "exceeds this fraction of a chunk (0 to 1)."),
    neighbours: Optional[str] = typer.Option(None, help="Neighbour set [default: the "
                                             "run's]; a baseline is bucketed by it.",
                                             show_default=False),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    server: Optional[str] = SERVER,
    token_file: Optional[str] = SERVER_TOKEN,
    json_out: bool = JSON,
):
    """Validation loss and bits per byte (of the true UTF-8 bytes of the tokens
    evaluated) of each run: with retrieval, with retrieval off, with leakage-filtered
    neighbours (r ≤ α), and by leakage bucket (the paper's Fig. 6). The latest result is
    kept in DB/models/RUN/eval.json (for `retrodb plot --leakage`).

    Example: retrodb eval --db mydb --run retro --run baseline --exclude-overlap 0.2
    """
    from retrodb.core.errors import RetrodbError
    from retrodb.training.evaluate import evaluate_run

    if max_sequences < 0:
        raise RetrodbError(f"--max-sequences {max_sequences}: must be 0 (all) or more")
    if not 0 <= exclude_overlap <= 1:
        raise RetrodbError(f"--exclude-overlap {exclude_overlap}: α must be in [0, 1] "
                           "(r = common token run / chunk size; 0.2 is usual)")
    client = remote(server, token_file)
    results = [evaluate_run(db, run, max_sequences, exclude_overlap, neighbours, device,
                            server=client) for run in runs]
    if json_out:
        print_json(results if len(runs) > 1 else results[0])
        return
    for r in results:
        _print(r, exclude_overlap)


def _print(r: dict, alpha: float) -> None:
    t = table("neighbours", "loss (nats/token)", "bits per byte", "tokens", "bytes",
              title=f"{r['run']} at step {r['step']}: {r['validation_docs']} validation "
                    f"docs, {r['bytes']} bytes")
    for label, key in MODES:
        if key in r:
            label = f"leakage-filtered (r ≤ {alpha})" if key == "leakage_filtered" else label
            t.add_row(label, f"{r[key]['loss']:.4f}", f"{r[key]['bpb']:.4f}",
                      f"{r[key]['tokens']:,}", f"{r[key]['bytes']:,}")
    print_table(t)
    key = "retrieval" if "retrieval" in r else "no_retrieval"
    if "by_leakage" not in r[key]:
        return
    t = table("leakage r", "tokens", "bpb", *(["bpb retrieval off"] if key == "retrieval"
                                               else []),
              title=f"{r['run']}: by leakage of the predicted chunk (neighbours "
                    f"{r['neighbours']})")
    for i, b in enumerate(r[key]["by_leakage"]):
        row = [b["r"], f"{b['tokens']:,}", f"{b['bpb']:.4f}" if b["tokens"] else "-"]
        if key == "retrieval":
            off = r["no_retrieval"]["by_leakage"][i]
            row.append(f"{off['bpb']:.4f}" if off["tokens"] else "-")
        t.add_row(*row)
    print_table(t)
