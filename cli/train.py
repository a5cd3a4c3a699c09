"""`retrodb train`: train a RETRO model (or the no-retrieval baseline) on a database."""

from __future__ import annotations

from typing import Optional

import typer

from .common import err, note, user_errors
from .options import DB
from .progress import Reporter


@user_errors
def train_cli(
    db: str = DB,
    run: str = typer.Option(..., "--run", "--run-name", help="Run name: DB/models/RUN/ "
                            "(under torchrun write --run-name: torchrun's parser "
                            "mistakes --run for its own --run-path)."),
    preset: str = typer.Option("small", help="Model size: tiny (tests), cpu (~6M: shows "
                               "retrieval's effect in about an hour on 2 CPU cores), small "
                               "(~25M), base (the paper's 172M shape)."),
    no_retrieval: bool = typer.Option(False, "--no-retrieval", help="Train the same "
                                      "decoder without CCA: the baseline."),
    neighbours: str = typer.Option("train", help="Neighbour set DB/neighbours/SET."),
    steps: int = typer.Option(2000, help="Optimiser steps in total."),
    seq_chunks: int = typer.Option(8, help="Chunks per training sequence."),
    batch_size: int = typer.Option(8, help="Sequences per step (over all ranks)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW)."),
    warmup: int = typer.Option(100, help="Linear warm-up steps, then cosine decay."),
    retrieval_lr: Optional[float] = typer.Option(None, help="Peak learning rate of the "
                                                 "encoder and CCA [default: --lr]; they "
                                                 "start from scratch (CCA from zero).",
                                                 show_default=False),
    retrieval_warmup: Optional[int] = typer.Option(None, help="Their warm-up steps "
                                                   "[default: --warmup].",
                                                   show_default=False),
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
                                           "train.", show_default=False),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last "
                                "checkpoint, exactly."),
):
    """Train on consecutive chunks of the training documents with their neighbours.

    Metrics go to DB/models/RUN/metrics.jsonl, checkpoints (safetensors + JSON) to
    DB/models/RUN/checkpoints/. Under torchrun the same command trains with DDP:
    torchrun --nproc-per-node 2 -m retrodb.cli.main train --db mydb --run-name r

    Example: retrodb train --db mydb --run retro-small --preset small --steps 2000
    """
    from retrodb.training.train import TrainConfig, train

    cfg = TrainConfig(run=run, preset=preset, retrieval=not no_retrieval,
                      neighbours=neighbours, steps=steps, seq_chunks=seq_chunks,
                      batch_size=batch_size, lr=lr, warmup=warmup,
                      retrieval_lr=retrieval_lr, retrieval_warmup=retrieval_warmup,
                      grad_clip=grad_clip,
                      seed=seed, val_fraction=val_fraction, split_seed=split_seed,
                      eval_every=eval_every, eval_sequences=eval_sequences,
                      checkpoint_every=checkpoint_every, device=device, compile=compile,
                      retrofit=retrofit)
    with Reporter() as bar:
        last = train(db, cfg, resume=resume, on_progress=bar.update, on_note=note)
    if last:
        val = f", val loss {last['val_loss']:.3f}, val bpb {last['val_bpb']:.3f}" \
            if "val_loss" in last else ""
        err.print(f"{run}: step {last['step']}, loss {last['loss']:.3f}{val}", markup=False)
