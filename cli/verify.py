"""`retrodb verify`: check a database against its manifests; recompute a sample."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import err, out, print_json, user_errors


@user_errors
def verify_cli(
    db: Path = typer.Argument(..., help="Database directory."),
    sample: float = typer.Option(0.01, help="Fraction of chunk shards to recompute from "
                                 "their inputs (at least one when > 0)."),
    no_checksums: bool = typer.Option(False, "--no-checksums", help="Check sizes only, "
                                      "not sha256 (faster on large databases)."),
    json_out: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
):
    """Check manifests against files, stages against each other, and recompute a sample.

    Exits 1 when something is wrong. Example: retrodb verify mydb --sample 0.05
    """
    from rich.table import Table

    from retrodb.verify import verify

    rep = verify(db, sample=sample, checksums=not no_checksums)
    if json_out:
        print_json({"ok": rep.ok, "checked_files": rep.checked_files,
                    "recomputed": rep.recomputed,
                    "findings": [f.__dict__ for f in rep.findings]})
    else:
        if rep.findings:
            t = Table("level", "stage", "finding")
            for f in rep.findings:
                t.add_row(f"[red]{f.level}[/]" if f.level == "error" else f.level, f.stage,
                          f.message)
            out.print(t)
        err.print(f"checked {rep.checked_files} files, recomputed {len(rep.recomputed)} "
                  f"shards: {'ok' if rep.ok else 'PROBLEMS FOUND'}", highlight=False)
    if not rep.ok:
        raise typer.Exit(1)
