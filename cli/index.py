"""`retrodb index`: train → add → merge a faiss index over the database's embeddings."""

from __future__ import annotations

from typing import Optional

import typer

from .common import err, escape, human_count, print_json, user_errors
from .options import EXECUTOR, JSON, RAY_ADDRESS, WORKERS
from .progress import Reporter

app = typer.Typer(
    help="Build the database's faiss index: train, add one part per embedding shard, "
         "merge into on-disk lists, measure recall.\n\n"
         "Without a sub-command, runs the three steps (each skips what is done).\n\n"
         "Example: retrodb index --db mydb --workers 2",
    no_args_is_help=False, invoke_without_command=True, rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

DB_HELP = "Database directory or URL (with embeddings)."
FACTORY_HELP = ("A faiss index_factory string with an IVF layer, e.g. "
                "'IVF65536_HNSW32,PQ96x4' (default: chosen by --chooser for the number of "
                "vectors).")
CHOOSER_HELP = ("Who picks the factory without --factory: 'rule' (retrodb's: ~4√n lists, "
                "4-bit codes searched fast-scan) or 'autofaiss' (for the vector count and "
                "--memory-budget).")
KMEANS_HELP = ("The coarse quantizer's k-means: auto (two-level from 8192 lists, else "
               "flat), flat or two-level; on the GPUs when faiss sees any.")
REBUILD_HELP = "Remove the index and build a new one with these settings."
BUDGET_HELP = ("Size the index may take (autofaiss's max_index_memory_usage); also caps "
               "the float32 training sample.")
CODE_HELP = ("Largest PQ code per vector when the chooser picks (candidates are re-ranked "
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
            recall_queries=1000, seed=0, max_code_bytes=64, max_nprobe=4096,
            chooser="rule", kmeans="auto", rebuild=False):
    from retrodb.core.errors import RetrodbError
    from retrodb.stages.index import IndexConfig

    try:
        cands = tuple(int(c) for c in str(candidates).split(",") if c.strip())
    except ValueError:
        raise RetrodbError(f"--candidates {candidates}: give comma-separated counts, "
                           "e.g. 0,40,100") from None
    return IndexConfig(factory=factory, memory_budget=memory_budget, train_size=train_size,
                       workers=workers, executor=executor, ray_address=ray_address,
                       target_recall=target_recall, candidates=cands,
                       recall_queries=recall_queries, seed=seed,
                       max_code_bytes=max_code_bytes, max_nprobe=max_nprobe,
                       chooser=chooser, kmeans=kmeans, rebuild=rebuild)


@app.callback()
@user_errors
def index_cli(
    ctx: typer.Context,
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP, show_default=False),
    factory: Optional[str] = typer.Option(None, help=FACTORY_HELP, show_default=False),
    chooser: str = typer.Option("rule", help=CHOOSER_HELP),
    kmeans: str = typer.Option("auto", help=KMEANS_HELP),
    rebuild: bool = typer.Option(False, "--rebuild", help=REBUILD_HELP),
    memory_budget: str = typer.Option("8G", help=BUDGET_HELP),
    max_code_bytes: int = typer.Option(64, help=CODE_HELP),
    train_size: Optional[int] = typer.Option(None, help=TRAIN_HELP, show_default=False),
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: Optional[str] = RAY_ADDRESS,
    target_recall: float = typer.Option(0.9, help=TARGET_HELP),
    candidates: str = typer.Option("0,40,100,250", help=CAND_HELP),
    recall_queries: int = typer.Option(1000, help=QUERIES_HELP),
    max_nprobe: int = typer.Option(4096, help=NPROBE_HELP),
    seed: int = typer.Option(0, help="Seed of the training sample and recall queries."),
    json_out: bool = JSON,
):
    """Train, add and merge the index; measure recall and choose nprobe.

    Each step resumes: a trained index is reused, only shards without a part are added
    (appended shards alone), and the merge is redone only when parts changed.

    Example: retrodb index --db mydb --factory 'IVF4096_HNSW32,PQ96x4' --workers 2
    """
    if ctx.invoked_subcommand is not None:
        return
    from retrodb.core.errors import RetrodbError
    from retrodb.stages.index import build_index

    if db is None:
        raise RetrodbError("--db: give the database directory, e.g. retrodb index --db mydb")
    cfg = _config(factory, memory_budget, train_size, workers, executor, ray_address,
                  target_recall, candidates, recall_queries, seed, max_code_bytes,
                  max_nprobe, chooser, kmeans, rebuild)
    with Reporter() as bar:
        result = build_index(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("train")
@user_errors
def train_cli(
    db: str = typer.Option(..., "--db", help=DB_HELP, show_default=False),
    factory: Optional[str] = typer.Option(None, help=FACTORY_HELP, show_default=False),
    chooser: str = typer.Option("rule", help=CHOOSER_HELP),
    kmeans: str = typer.Option("auto", help=KMEANS_HELP),
    rebuild: bool = typer.Option(False, "--rebuild", help=REBUILD_HELP),
    memory_budget: str = typer.Option("8G", help=BUDGET_HELP),
    max_code_bytes: int = typer.Option(64, help=CODE_HELP),
    train_size: Optional[int] = typer.Option(None, help=TRAIN_HELP, show_default=False),
    seed: int = typer.Option(0, help="Seed of the training sample."),
    json_out: bool = JSON,
):
    """Step 1: train the empty index on a uniform sample of the embeddings.

    Example: retrodb index train --db mydb --factory 'IVF4096_HNSW32,PQ96x4'
    """
    from retrodb.stages.index import train_index

    cfg = _config(factory, memory_budget, train_size, seed=seed,
                  max_code_bytes=max_code_bytes, chooser=chooser, kmeans=kmeans,
                  rebuild=rebuild)
    with Reporter() as bar:
        result = train_index(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("add")
@user_errors
def add_cli(
    db: str = typer.Option(..., "--db", help=DB_HELP, show_default=False),
    workers: int = WORKERS,
    executor: str = EXECUTOR,
    ray_address: Optional[str] = RAY_ADDRESS,
    json_out: bool = JSON,
):
    """Step 2: add every embedding shard without a part (in parallel with --workers).

    Example: retrodb index add --db mydb --workers 2
    """
    from retrodb.stages.index import add_parts

    cfg = _config(workers=workers, executor=executor, ray_address=ray_address)
    with Reporter() as bar:
        result = add_parts(db, cfg, on_progress=bar.update)
    report(result, json_out)


@app.command("merge")
@user_errors
def merge_cli(
    db: str = typer.Option(..., "--db", help=DB_HELP, show_default=False),
    target_recall: float = typer.Option(0.9, help=TARGET_HELP),
    candidates: str = typer.Option("0,40,100,250", help=CAND_HELP),
    recall_queries: int = typer.Option(1000, help=QUERIES_HELP),
    max_nprobe: int = typer.Option(4096, help=NPROBE_HELP),
    seed: int = typer.Option(0, help="Seed of the recall queries."),
    json_out: bool = JSON,
):
    """Step 3: merge the parts into on-disk lists; measure recall and choose nprobe.

    Example: retrodb index merge --db mydb --target-recall 0.95
    """
    from retrodb.stages.index import merge_index

    cfg = _config(target_recall=target_recall, candidates=candidates,
                  recall_queries=recall_queries, seed=seed, max_nprobe=max_nprobe)
    with Reporter() as bar:
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
        err.print(f"{verb} index {escape(result.factory)}{escape(how)}{extra}")
    if "add" in s:
        rate = result.vectors_added / s["add"] if s["add"] else 0
        err.print(f"added {result.parts_added} parts ({human_count(result.vectors_added)} "
                  f"vectors) in {s['add']:.1f} s ({human_count(rate)} vectors/s)")
    if result.merged:
        err.print(f"merged {human_count(result.ntotal)} vectors into on-disk lists in "
                  f"{s['merge']:.1f} s")
    if result.recall is not None:
        recall_table(result.recall, result.factory)
    for n in result.notes:
        err.print(f"note: {escape(n)}")


def recall_table(rec: dict, factory: str = "") -> None:
    """The recall sweep (stderr): what each nprobe × candidates setting reached."""
    from .common import print_table, table

    k = rec["k"]
    chosen = rec["chosen"]
    queries = rec.get("queries_used", rec["queries"])
    codes = "codes only" if "Flat" not in factory.split(",")[-1] else "index only"
    t = table("nprobe", "candidates", "recall@1", f"recall@{k}", "ms/query",
              title=f"recall vs exact search ({queries} queries; exact: "
                    f"{rec['exact_ms_per_query']:.2f} ms/query streamed from disk)")
    for p in rec["sweep"]:
        mark = " ◀ chosen" if p == chosen else ""
        t.add_row(str(p["nprobe"]), str(p["candidates"] or codes),
                  f"{p['recall@1']:.3f}", f"{p[f'recall@{k}']:.3f}",
                  f"{p['ms_per_query']:.3f}{mark}")
    print_table(t, stderr=True)
    line = (f"chosen: nprobe {chosen['nprobe']}, {chosen['candidates']} candidates "
            f"re-ranked → recall@{k} {chosen[f'recall@{k}']:.3f}, "
            f"{chosen['ms_per_query']:.3f} ms/query")
    if not rec["reached"]:
        err.print(f"[yellow]warning:[/] no setting reached --target-recall {rec['target']}; "
                  f"best: {line[8:]}. Try more --candidates or a finer --factory")
    else:
        err.print(line)
    held = rec.get("held_out")
    if held:
        err.print(f"on {held['queries']} held-out queries (not used to choose): "
                  f"recall@{k} {held[f'recall@{k}']:.3f}")
