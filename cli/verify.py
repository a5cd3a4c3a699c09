"""`retrodb verify`: check a database against its manifests; recompute a sample."""

from __future__ import annotations

import typer

from .common import print_json, print_table, table, user_errors, write
from .options import DB_ARG, JSON, ROOT


@user_errors
def verify_cli(
    db: str = DB_ARG,
    sample: float = typer.Option(0.01, help="Fraction of chunk and neighbour shards to "
                                 "recompute (at least one when > 0)."),
    no_checksums: bool = typer.Option(False, "--no-checksums", help="Check sizes only, "
                                      "not sha256 (faster on large databases)."),
    root: str = ROOT,
    json_out: bool = JSON,
):
    """Check manifests against files, stages against each other, and recompute a sample.

    Chunk shards are recomputed from their inputs, found under --root as when they were
    chunked. The report and the verdict go to stdout, whole; exits 1 when something is
    wrong.

    Example: retrodb verify mydb --sample 0.05 > report.txt
    """
    from retrodb.ops.verify import verify

    rep = verify(db, sample=sample, checksums=not no_checksums, root=root)
    if json_out:
        print_json({"ok": rep.ok, "checked_files": rep.checked_files,
                    "recomputed": rep.recomputed,
                    "findings": [f.__dict__ for f in rep.findings]})
    else:
        if rep.findings:
            t = table("level", "stage", "finding")
            for f in rep.findings:
                t.add_row(f.level, f.stage, f.message)
            print_table(t)
        write(f"checked {rep.checked_files} files, recomputed {len(rep.recomputed)} "
              f"shards: {'ok' if rep.ok else 'PROBLEMS FOUND'}")
    if not rep.ok:
        raise typer.Exit(1)
