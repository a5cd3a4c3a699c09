"""`retrodb neighbours`: the k nearest database chunks of every query chunk."""

from __future__ import annotations

from typing import Optional

import typer

from .common import err, note, print_json, print_table, table, user_errors, write
from .options import EXECUTOR, JSON, RAY_ADDRESS, WORKERS
from .progress import Reporter

app = typer.Typer(
    help="Precompute the k nearest database chunks of every chunk (training and "
         "evaluation neighbours); `neighbours report` shows how leaky a set is.\n\n"
         "Example: retrodb neighbours --db mydb -k 2 --workers 2",
    no_args_is_help=False, invoke_without_command=True, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

SET_HELP = "Name of the neighbour set: its directory DB/neighbours/SET."
NPROBE = typer.Option(None, help="Inverted lists probed [default: calibrated from the "
                      "index's operating point].", show_default=False)
CANDIDATES = typer.Option(None, help="Candidates re-ranked with the exact keys [default: "
                          "the index's choice].", show_default=False)


@app.callback()
@user_errors
def neighbours_cli(
    ctx: typer.Context,
    db: Optional[str] = typer.Option(None, "--db", help="Database directory or URL "
                                     "(indexed).", show_default=False),
    set_name: str = typer.Option("train", "--set", help=SET_HELP),
    k: int = typer.Option(2, "-k", "--k", help="Neighbours per query chunk."),
    queries: Optional[str] = typer.Option(
        None, help="Another retrodb database (same tokenizer, chunk size and embedder) "
                   "whose chunks are the queries, e.g. a validation corpus [default: the "
                   "database's own chunks].", show_default=False),
    exclude_same_doc: Optional[bool] = typer.Option(
        None, "--exclude-same-doc/--no-exclude-same-doc",
        help="Never return a neighbour from the query's own document [default: on for "
             "the database's own chunks].", show_default=False),
    exclude_overlap: Optional[float] = typer.Option(
        None, "--exclude-overlap", metavar="ALPHA",
        help="Drop neighbours whose longest common token run with the query chunk, over "
             "the chunk size, exceeds ALPHA (the paper evaluates with 0.2) [default: "
             "keep all].", show_default=False),
    exclude_validation: bool = typer.Option(
        True, "--exclude-validation/--no-exclude-validation",
        help="Never return a neighbour from a validation document of the database's "
             "train/validation split (the split `retrodb train` uses)."),
    val_fraction: Optional[float] = typer.Option(
        None, help="Documents held out for validation when the database has no split "
                   "yet; must match the split it has [default: the database's, else "
                   "0.05].", show_default=False),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the split [default: the "
                                             "database's, else 0].", show_default=False),
    nprobe: Optional[int] = NPROBE,
    candidates: Optional[int] = CANDIDATES,
    max_search: int = typer.Option(4096, help="Widest search for a query left with "
                                   "fewer than k neighbours after filtering."),
    only_new: bool = typer.Option(False, "--only-new", help="After the index changed, "
                                  "search only shards without neighbours; keep the "
                                  "others (their neighbours miss appended chunks)."),
    target_recall: float = typer.Option(0.9, help="Filtered recall@k the calibrated "
                                        "nprobe must reach against exact search."),
    recall_queries: int = typer.Option(1000, help="Sampled query chunks for the "
                                       "calibration (0: use the index's nprobe as is)."),
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: Optional[str] = RAY_ADDRESS,
    json_out: bool = JSON,
):
    """Search the index for every query chunk's k nearest database chunks.

    Queries are the stored keys (nothing is re-embedded). Resumes: finished shards are
    kept, appended shards are searched alone, shards searched in an older index redone.

    Example: retrodb neighbours --db mydb --set val --queries valdb --exclude-overlap 0.2
    """
    if ctx.invoked_subcommand is not None:
        return
    from retrodb.core.errors import RetrodbError
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours

    if db is None:
        raise RetrodbError("--db: give the database directory, e.g. retrodb neighbours "
                           "--db mydb")
    cfg = NeighboursConfig(set=set_name, k=k, queries=None if queries is None
                           else str(queries), exclude_same_doc=exclude_same_doc,
                           exclude_overlap=exclude_overlap,
                           exclude_validation=exclude_validation,
                           val_fraction=val_fraction, split_seed=split_seed, nprobe=nprobe,
                           candidates=candidates, max_search=max_search, only_new=only_new,
                           target_recall=target_recall, recall_queries=recall_queries,
                           workers=workers,
                           executor=executor, ray_address=ray_address)
    with Reporter() as bar:
        result = build_neighbours(db, cfg, on_progress=bar.update, on_note=note)
    if json_out:
        from dataclasses import asdict

        print_json(asdict(result))
        return
    _print_result(result)


def _print_result(result) -> None:
    s = result.stats
    rows = s["rows"] or 1
    err.print(f"neighbours/{result.set}: {s['rows']:,} query chunks × k {result.k} in "
              f"{result.shards_total} shard(s); searched {result.queries:,} this run in "
              f"{result.seconds:.1f} s ({result.queries / max(result.seconds, 1e-9):,.0f}/s)"
              + (f", {result.redone} shard(s) redone" if result.redone else ""))
    rec = result.recall or {}
    if rec.get("measured"):
        err.print(f"  nprobe {rec['nprobe']} (calibrated on {rec['queries']:,} chunks: "
                  f"filtered recall@{result.k} {rec['recall']:.3f} vs exact; "
                  + ", ".join(f"{p['nprobe']}: {p[f'recall@{result.k}']:.3f}"
                              for p in rec["points"]) + ")")
    err.print(f"  filters: dropped {s['dropped_same_doc']:,} same-document, "
              f"{s['dropped_validation']:,} validation, {s['dropped_overlap']:,} "
              f"overlapping; {s['searched_per_query']:.1f} candidates searched per query "
              f"({s['widened']:,} widened); {s['short']:,} queries ({s['short'] / rows:.2%}) "
              f"short of k, padded with -1")


@app.command("report")
@user_errors
def report_cli(
    db: str = typer.Option(..., "--db", help="Database directory or URL.",
                           show_default=False),
    set_name: str = typer.Option("train", "--set", help=SET_HELP),
    json_out: bool = JSON,
):
    """How leaky a neighbour set is: the distribution of r over its neighbours.

    r = longest common token run between a query chunk and its neighbour / chunk size;
    r = 1 is a verbatim copy. Build an evaluation set without --exclude-overlap, read
    this, then choose ALPHA.

    Example: retrodb neighbours report --db mydb --set val
    """
    from retrodb.stages.neighbours import neighbours_report, r_histogram_rows

    rep = neighbours_report(db, set_name)
    if json_out:
        print_json(rep)
        return
    total = sum(rep["r_hist"]) or 1
    st = rep["settings"] or {}
    t = table("r", "neighbours", "share", "",
              title=f"neighbours/{set_name}: r = common token run / chunk size "
                    f"({total:,} neighbours of {rep['rows']:,} chunks, k {rep['k']})")
    for label, c in r_histogram_rows(rep["r_hist"]):
        t.add_row(label, f"{c:,}", f"{c / total:.2%}", "█" * round(40 * c / total))
    print_table(t)
    write("share with r ≥ α: " + ", ".join(f"{a[5:]}: {v:.2%}" for a, v in
                                            rep["share"].items()))
    write(f"filters: same document {'on' if st.get('exclude_same_doc') else 'off'}, "
              f"validation documents {'on' if st.get('exclude_validation') else 'off'}, "
              f"overlap α {st.get('exclude_overlap')}; dropped "
              f"{rep['dropped_same_doc']:,} / {rep['dropped_validation']:,} / "
              f"{rep['dropped_overlap']:,}; {rep['short']:,} chunks short of k; queries: "
              f"{st.get('queries') or 'the database itself'}")
