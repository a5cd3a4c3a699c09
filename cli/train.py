"""`retrodb train`: train a RETRO model (or the no-retrieval baseline) on a database."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import err, human_count, user_errors


@user_errors
def train_cli(
    db: Path = typer.Option(..., "--db", help="Database directory."),
    run: str = typer.Option(..., "--run", "--run-name", help="Run name: DB/models/RUN/ "
                            "(under torchrun write --run-name: torchrun's parser "
                            "mistakes --run for its own --run-path)."),
    preset: str = typer.Option("small", help="Model size: tiny, small (~25M), base "
                               "(the paper's 172M shape)."),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="Train the same "
                                      "decoder without CCA: the baseline."),
    neighbours: str = typer.Option("train", help="Neighbour set DB/neighbours/SET."),
    steps: int = typer.Option(2000, help="Optimiser steps in total."),
    seq_chunks: int = typer.Option(8, help="Chunks per training sequence."),
    batch_size: int = typer.Option(8, help="Sequences per step (over all ranks)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW)."),
    warmup: int = typer.Option(100, help="Linear warm-up steps, then cosine decay."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clip."),
    seed: int = typer.Option(0, help="Seed of initialisation and data order."),
    val_fraction: float = typer.Option(0.05, help="Documents held out for validation "
                                       "(recorded in the database on first use)."),
    split_seed: int = typer.Option(0, help="Which documents are held out."),
    eval_every: int = typer.Option(200, help="Validation every N steps (0: at the end)."),
    eval_sequences: int = typer.Option(32, help="Validation sequences per evaluation."),
    checkpoint_every: int = typer.Option(200, help="Steps between checkpoints."),
    device: str = typer.Option("cpu", help="cpu or cuda (bf16 autocast on cuda)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    retrofit: Optional[str] = typer.Option(None, help="A baseline run (or checkpoint "
                                           "directory) to freeze; only CCA and encoder "
                                           "train."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last "
                                "checkpoint, exactly."),
):
    """Train on consecutive chunks of the training documents with their neighbours.

    Metrics go to DB/models/RUN/metrics.jsonl, checkpoints (safetensors + JSON) to
    DB/models/RUN/checkpoints/. Under torchrun the same command trains with DDP:
    torchrun --nproc-per-node 2 -m retrodb.cli.main train --db mydb --run-name r

    Example: retrodb train --db mydb --run retro-small --preset small --steps 2000
    """
    from retrodb.train import TrainConfig, train

    cfg = TrainConfig(run=run, preset=preset, retrieval=not no_retrieval,
                      neighbours=neighbours, steps=steps, seq_chunks=seq_chunks,
                      batch_size=batch_size, lr=lr, warmup=warmup, grad_clip=grad_clip,
                      seed=seed, val_fraction=val_fraction, split_seed=split_seed,
                      eval_every=eval_every, eval_sequences=eval_sequences,
                      checkpoint_every=checkpoint_every, device=device, compile=compile,
                      retrofit=retrofit)
    with _TrainProgress() as bar:
        last = train(db, cfg, resume=resume, on_progress=bar.update)
    if last:
        val = f", val loss {last['val_loss']:.3f}, val bpb {last['val_bpb']:.3f}" \
            if "val_loss" in last else ""
        err.print(f"{run}: step {last['step']}, loss {last['loss']:.3f}{val}",
                  highlight=False)


class _TrainProgress:
    """One rich progress line: step, loss, validation loss, lr, tokens/s, ETA."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("train"), BarColumn(bar_width=20),
            TextColumn("{task.completed}/{task.total} · loss {task.fields[loss]} · val "
                       "{task.fields[val]} · lr {task.fields[lr]} · {task.fields[tps]} "
                       "tok/s · ETA {task.fields[eta]}"),
            TimeElapsedColumn(), console=err, transient=False)
        self.progress.__enter__()
        self.task = None
        return self

    def update(self, p) -> None:
        fields = dict(loss=f"{p.loss:.3f}", lr=f"{p.lr:.1e}", tps=human_count(p.tokens_per_s),
                      eta=_hms(p.eta_s))
        if p.val_loss is not None:
            fields["val"] = f"{p.val_loss:.3f}"
        if self.task is None:
            self.task = self.progress.add_task("train", total=p.steps,
                                               **{"val": "-", **fields})
        self.progress.update(self.task, completed=p.step, total=p.steps, **fields)

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
