"""`retrodb index`: train → add → merge a faiss index over the database's embeddings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import err, human_count, print_json, user_errors

app = typer.Typer(
    help="Build the database's faiss index: train, add one part per embedding shard, "
         "merge into on-disk lists, measure recall.\n\n"
         "Without a sub-command, runs the three steps (each skips what is done).\n\n"
         "Example: retrodb index --db mydb --workers 2",
    no_args_is_help=False, invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DB_HELP = "Database directory (with embeddings)."
FACTORY_HELP = ("A faiss index_factory string with an IVF layer, e.g. "
                "'OPQ32_128,IVF65536_HNSW32,PQ32' (default: chosen by autofaiss for the "
                "number of vectors and --memory-budget).")
BUDGET_HELP = ("Size the index may take (autofaiss's max_index_memory_usage); also caps "
               "the float32 training sample.")
CODE_HELP = ("Largest PQ code per vector when autofaiss chooses (candidates are re-ranked "
             "with the exact keys, so larger codes buy little).")
TRAIN_HELP = "Training sample size (default: 100 per list, at least 256 per PQ centroid)."
WORKERS_HELP = "Processes adding parts in parallel."
TARGET_HELP = "recall@10 the chosen operating point must reach."
CAND_HELP = ("Candidate-list lengths to try, re-ranked with the exact keys (0 = PQ "
             "ranking alone), comma-separated.")
NPROBE_HELP = "Largest nprobe the recall sweep tries."
QUERIES_HELP = "Chunks sampled as queries to measure recall against exact search."


def _config(factory=None, memory_budget="8G", train_size=None, workers=1, executor="local",
            ray_address=None, target_recall=0.9, candidates="0,40,100,250",
            recall_queries=1000, seed=0, max_code_bytes=64, max_nprobe=4096):
    from retrodb.errors import RetrodbError
    from retrodb.index import IndexConfig

    try:
        cands = tuple(int(c) for c in str(candidates).split(",") if c.strip())
    except ValueError:
        raise RetrodbError(f"--candidates {candidates}: give comma-separated counts, "
                           "e.g. 0,40,100") from None
    return IndexConfig(factory=factory, memory_budget=memory_budget, train_size=train_size,
                       workers=workers, executor=executor, ray_address=ray_address,
                       target_recall=target_recall, candidates=cands,
                       recall_queries=recall_queries, seed=seed,
                       max_code_bytes=max_code_bytes, max_nprobe=max_nprobe)


@app.callback()
@user_errors
def index_cli(
    ctx: typer.Context,
    db: Optional[Path] = typer.Option(None, "--db", help=DB_HELP),
    factory: Optional[str] = typer.Option(None, help=FACTORY_HELP),
    memory_budget: str = typer.Option("8G", help=BUDGET_HELP),
    max_code_bytes: int = typer.Option(64, help=CODE_HELP),
    train_size: Optional[int] = typer.Option(None, help=TRAIN_HELP),
    workers: int = typer.Option(1, help=WORKERS_HELP),
    executor: str = typer.Option("local", help="'local' processes, or 'ray' tasks."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    target_recall: float = typer.Option(0.9, help=TARGET_HELP),
    candidates: str = typer.Option("0,40,100,250", help=CAND_HELP),
    recall_queries: int = typer.Option(1000, help=QUERIES_HELP),
    max_nprobe: int = typer.Option(4096, help=NPROBE_HELP),
    seed: int = typer.Option(0, help="Seed of the training sample and recall queries."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Train, add and merge the index; measure recall and choose nprobe.

    Each step resumes: a trained index is reused, only shards without a part are added
    (appended shards alone), and the merge is redone only when parts changed.

    Example: retrodb index --db mydb --factory 'OPQ32_128,IVF4096,PQ32' --workers 2
    """
    if ctx.invoked_subcommand is not None:
        return
    from retrodb.errors import RetrodbError
    from retrodb.index import build_index

    if db is None:
        raise RetrodbError("--db: give the database directory, e.g. retrodb index --db mydb")
    cfg = _config(factory, memory_budget, train_size, workers, executor, ray_address,
                  target_recall, candidates, recall_queries, seed, max_code_bytes,
                  max_nprobe)
    with IndexProgress() as bar:
        result = build_index(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("train")
@user_errors
def train_cli(
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    factory: Optional[str] = typer.Option(None, help=FACTORY_HELP),
    memory_budget: str = typer.Option("8G", help=BUDGET_HELP),
    max_code_bytes: int = typer.Option(64, help=CODE_HELP),
    train_size: Optional[int] = typer.Option(None, help=TRAIN_HELP),
    seed: int = typer.Option(0, help="Seed of the training sample."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Step 1: train the empty index on a uniform sample of the embeddings.

    Example: retrodb index train --db mydb --factory 'IVF4096_HNSW32,PQ64'
    """
    from retrodb.index import train_index

    cfg = _config(factory, memory_budget, train_size, seed=seed,
                  max_code_bytes=max_code_bytes)
    with IndexProgress() as bar:
        result = train_index(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("add")
@user_errors
def add_cli(
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    workers: int = typer.Option(1, help=WORKERS_HELP),
    executor: str = typer.Option("local", help="'local' processes, or 'ray' tasks."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Step 2: add every embedding shard without a part (in parallel with --workers).

    Example: retrodb index add --db mydb --workers 2
    """
    from retrodb.index import add_parts

    cfg = _config(workers=workers, executor=executor, ray_address=ray_address)
    with IndexProgress() as bar:
        result = add_parts(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("merge")
@user_errors
def merge_cli(
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    target_recall: float = typer.Option(0.9, help=TARGET_HELP),
    candidates: str = typer.Option("0,40,100,250", help=CAND_HELP),
    recall_queries: int = typer.Option(1000, help=QUERIES_HELP),
    max_nprobe: int = typer.Option(4096, help=NPROBE_HELP),
    seed: int = typer.Option(0, help="Seed of the recall queries."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Step 3: merge the parts into on-disk lists; measure recall and choose nprobe.

    Example: retrodb index merge --db mydb --target-recall 0.95
    """
    from retrodb.index import merge_index

    cfg = _config(target_recall=target_recall, candidates=candidates,
                  recall_queries=recall_queries, seed=seed, max_nprobe=max_nprobe)
    with IndexProgress() as bar:
        result = merge_index(db, cfg, on_progress=bar.update)
    report(result, json_out)


# --------------------------------------------------------------------------------------


def report(result, json_out: bool) -> None:
    """The result on stderr (a sentence per step, the recall sweep) or as JSON."""
    if json_out:
        print_json(result.__dict__)
        return
    s = result.seconds
    if result.factory:
        verb = "trained" if result.trained else "reusing trained"
        how = "" if result.chosen_by == "--factory" else f" (chosen by {result.chosen_by})"
        extra = f" on {human_count(result.train_size)} vectors, {s['train']:.1f} s" \
            if result.trained else ""
        err.print(f"{verb} index {result.factory}{how}{extra}", highlight=False)
    if "add" in s:
        rate = result.vectors_added / s["add"] if s["add"] else 0
        err.print(f"added {result.parts_added} parts ({human_count(result.vectors_added)} "
                  f"vectors) in {s['add']:.1f} s ({human_count(rate)} vectors/s)",
                  highlight=False)
    if result.merged:
        err.print(f"merged {human_count(result.ntotal)} vectors into on-disk lists in "
                  f"{s['merge']:.1f} s", highlight=False)
    if result.recall is not None:
        recall_table(result.recall)
    for n in result.notes:
        err.print(f"note: {n}", highlight=False)


def recall_table(rec: dict) -> None:
    from rich.table import Table

    k = rec["k"]
    chosen = rec["chosen"]
    table = Table("nprobe", "candidates", "recall@1", f"recall@{k}", "ms/query",
                  title=f"recall vs exact search ({rec['queries']} queries; exact: "
                        f"{rec['exact_ms_per_query']:.2f} ms/query streamed from disk)")
    for p in rec["sweep"]:
        mark = " ◀ chosen" if p == chosen else ""
        table.add_row(str(p["nprobe"]), str(p["candidates"] or "PQ only"),
                      f"{p['recall@1']:.3f}", f"{p[f'recall@{k}']:.3f}",
                      f"{p['ms_per_query']:.3f}{mark}")
    err.print(table)
    line = (f"chosen: nprobe {chosen['nprobe']}, {chosen['candidates']} candidates "
            f"re-ranked → recall@{k} {chosen[f'recall@{k}']:.3f}, "
            f"{chosen['ms_per_query']:.3f} ms/query")
    if not rec["reached"]:
        err.print(f"[yellow]warning:[/] no setting reached --target-recall {rec['target']}; "
                  f"best: {line[8:]}. Try more --candidates or a finer --factory",
                  highlight=False)
    else:
        err.print(line, highlight=False)


class IndexProgress:
    """A rich progress bar per step on stderr (sample, train, add, merge, exact, recall)."""

    LABELS = {"sample": "read sample", "train": "train", "add": "add parts",
              "merge": "merge", "exact": "exact search", "recall": "nprobe sweep"}

    def __enter__(self):
        self.progress = None
        self.tasks: dict[str, int] = {}
        self.t0 = time.monotonic()
        return self

    def update(self, p) -> None:
        if self.progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                                       TextColumn, TimeElapsedColumn)

            self.progress = Progress(TextColumn("{task.description:<12}"),
                                     BarColumn(bar_width=24), MofNCompleteColumn(),
                                     TextColumn("{task.fields[unit]}"), TimeElapsedColumn(),
                                     console=err, transient=False)
            self.progress.__enter__()
        if p.step not in self.tasks:
            self.tasks[p.step] = self.progress.add_task(
                self.LABELS.get(p.step, p.step), total=p.total or None, unit=p.unit)
        self.progress.update(self.tasks[p.step], completed=p.done, total=p.total or None)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
