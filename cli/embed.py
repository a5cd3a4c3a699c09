"""`retrodb embed`: compute the retrieval key of every chunk (frozen BERT, mean-pooled)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ._common import err, human_count, print_json, user_errors


@user_errors
def embed_cli(
    db: Path = typer.Option(..., "--db", help="Database directory, already chunked."),
    model: Optional[str] = typer.Option(None, help="A local sentence-transformers model "
                                        "directory, mean pooling (default: the database's "
                                        "embedder, else all-MiniLM-L6-v2, shipped offline)."),
    gpus: Optional[str] = typer.Option(None, help="CUDA devices, e.g. 0,1: one worker "
                                       "process per GPU (default: CPU)."),
    batch_size: Optional[int] = typer.Option(None, help="Chunks per forward pass "
                                             "(default: 64 on CPU, 1024 on GPU); halved "
                                             "automatically on out-of-memory."),
    workers: int = typer.Option(1, help="CPU worker processes; the cores are shared out "
                                "as threads between them."),
    precision: str = typer.Option("auto", help="GPU autocast: auto (fp16), fp16, bf16 or "
                                  "fp32. The CPU always computes in fp32."),
    new_set: bool = typer.Option(False, "--new-set", help="If --model differs from the "
                                 "database's embedder, delete its keys and start a new "
                                 "embedding set (the index must then be rebuilt)."),
    executor: str = typer.Option("local", help="'local' worker processes, or 'ray': one "
                                 "task per chunk shard on a Ray cluster (with --gpus, one "
                                 "GPU per task, placed by Ray)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: "
                                              "start or join a local Ray)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Embed every chunk not yet embedded into DB/embeddings (float16 .npy per shard).

    A key is the model's last hidden state mean-pooled over the chunk's tokens and
    L2-normalised. A rerun embeds only new chunk shards and key shards found missing
    or corrupt.

    Example: retrodb embed --db mydb --workers 2 (or --gpus 0,1 on a GPU machine)
    """
    from retrodb.embed import EmbedConfig, embed_db

    cfg = EmbedConfig(model=model, gpus=_parse_gpus(gpus), batch_size=batch_size,
                      workers=workers, precision=precision, new_set=new_set,
                      executor=executor, ray_address=ray_address)
    with _EmbedProgress() as bar:
        result = embed_db(db, cfg, on_progress=bar.update,
                          on_note=lambda m: err.print(f"note: {m}", highlight=False,
                                                            soft_wrap=True))
    if json_out:
        print_json({**result.__dict__, "padding_waste": round(result.padding_waste, 4)})
        return
    if not result.shards:
        err.print(f"nothing to embed: all {result.skipped} chunk shards have keys "
                  f"({result.model})", highlight=False)
        return
    rate = result.chunks / result.seconds if result.seconds else 0
    extra = f", {result.redone} recomputed (missing or corrupt)" if result.redone else ""
    err.print(f"embedded {human_count(result.chunks)} chunks into {len(result.shards)} new "
              f"key shards ({result.skipped} already embedded{extra}) with {result.model} "
              f"on {', '.join(sorted(set(result.devices)))}: {result.seconds:.1f} s, "
              f"{rate:.0f} chunks/s", highlight=False)
    err.print(f"padding waste {100 * result.padding_waste:.1f}%; "
              f"{human_count(result.retokenized)} chunks re-tokenised from text, "
              f"{result.truncated} truncated to the model's max length"
              + (f"; {result.oom_halvings} out-of-memory halvings" if result.oom_halvings
                 else ""), highlight=False)


def _parse_gpus(text: str | None) -> tuple[int, ...] | None:
    from retrodb.errors import RetrodbError

    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip() != "")
    except ValueError:
        raise RetrodbError(f"--gpus {text}: give device numbers separated by commas, "
                           "e.g. --gpus 0,1") from None


class _EmbedProgress:
    """A rich progress display on stderr: all chunks with ETA, and one row per device."""

    def __enter__(self):
        self.progress = None  # started at the first update, so errors print alone
        self.t0 = time.monotonic()  # rates include model loading: what the user waits
        return self

    def _start(self, p) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("{task.description:>6}"), BarColumn(bar_width=24),
            MofNCompleteColumn(), TextColumn("chunks · {task.fields[rate]} chunks/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=err, transient=False)
        self.progress.__enter__()
        self.total = self.progress.add_task("embed", total=p.chunks_total, rate="-")
        self.rows = {}
        if len(p.devices) > 1:
            for label in p.devices:
                self.rows[label] = self.progress.add_task(label, total=None, rate="-")

    def update(self, p) -> None:
        if self.progress is None:
            self._start(p)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        self.progress.update(self.total, completed=p.chunks_done,
                             rate=f"{p.chunks_done / elapsed:.0f}")
        for label, done in p.devices.items():
            if label in self.rows:
                self.progress.update(self.rows[label], completed=done,
                                     rate=f"{done / elapsed:.0f}")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
