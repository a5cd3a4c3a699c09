"""Training a RETRO model (or its no-retrieval baseline) on a database.

The data order is a pure function of (seed, step): sample i of the run is window
permutation_{epoch}[i mod n] with epoch = i // n, each epoch's permutation drawn from
numpy's generator seeded with (seed, epoch). Resuming at step s therefore needs only
s; weights, AdamW moments and RNG states come from the checkpoint, and the loss curve
continues exactly as if never interrupted (bit for bit on CPU).

Under `torchrun` (WORLD_SIZE > 1) every rank takes rows rank::world of each global
batch and DDP averages gradients; only rank 0 writes checkpoints and metrics.
Everything the user can get wrong is checked before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.faults import point
from ..core.progress import Progress, ProgressFn
from .device import autocast_for, resolve_device, to_torch
from .evaluate import evaluate_loss
from .runs import (check_same_config, retrofit_source, run_dir, truncate_metrics,
                   write_json)


@dataclass(frozen=True)
class TrainConfig:
    """Options of `retrodb train`; each field names its flag."""

    run: str  # --run: models/<run>/ in the database
    preset: str = "small"  # --preset: tiny (tests), small (~25M, CPU), base (172M shape)
    retrieval: bool = True  # --no-retrieval: the same decoder without CCA (baseline)
    neighbours: str = "train"  # --neighbours: the precomputed set DB/neighbours/<set>
    steps: int = 2000  # --steps: optimiser steps in total (resume may extend them)
    seq_chunks: int = 8  # --seq-chunks: chunks per sequence (8 × 64 = 512 tokens)
    batch_size: int = 8  # --batch-size: sequences per step, over all ranks
    lr: float = 1e-3  # --lr: peak AdamW learning rate (small models tolerate 1e-3)
    min_lr_ratio: float = 0.1  # cosine decays to lr × this (Chinchilla practice)
    warmup: int = 100  # --warmup: linear warm-up steps
    # --retrieval-lr, --retrieval-warmup: the encoder and CCA start from scratch (and CCA
    # from zero) while the decoder may be trained already (--retrofit): they get their
    # own schedule. None = the decoder's.
    retrieval_lr: float | None = None
    retrieval_warmup: int | None = None
    weight_decay: float = 0.1  # AdamW decay on matrices only (not norms, embeddings)
    grad_clip: float = 1.0  # --grad-clip: global gradient-norm clip
    seed: int = 0  # --seed: initialisation and data order
    val_fraction: float = 0.05  # --val-fraction: documents held out (recorded in the DB)
    split_seed: int = 0  # --split-seed: which documents are held out
    eval_every: int = 200  # --eval-every: validation loss every N steps (0 = at end only)
    eval_sequences: int = 32  # --eval-sequences: validation windows per evaluation
    checkpoint_every: int = 200  # --checkpoint-every: steps between checkpoints
    device: str = "cpu"  # --device: cpu or cuda (bf16 autocast on cuda)
    compile: bool = False  # --compile: torch.compile the model
    retrofit: str | None = None  # --retrofit: baseline run/checkpoint to freeze and extend

    # fields a resume may change; any other difference is refused
    MUTABLE = ("steps", "device", "compile", "eval_every", "eval_sequences",
               "checkpoint_every")

    def validate(self) -> None:
        for name in ("steps", "seq_chunks", "batch_size", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise RetrodbError(f"--{name.replace('_', '-')} {getattr(self, name)}: "
                                   "must be positive")
        for name in ("warmup", "eval_every", "eval_sequences"):
            if getattr(self, name) < 0:
                raise RetrodbError(f"--{name.replace('_', '-')} {getattr(self, name)}: "
                                   "must be 0 or more")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise RetrodbError(f"--lr {self.lr}: must be a positive number")
        if not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise RetrodbError(f"--grad-clip {self.grad_clip}: must be a positive number")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RetrodbError(f"--device {self.device}: use cpu or cuda")
        if self.retrofit and not self.retrieval:
            raise RetrodbError("--retrofit adds retrieval to a baseline: drop "
                               "--no-retrieval")
        if self.retrieval_lr is not None and not (self.retrieval_lr > 0 and
                                                  math.isfinite(self.retrieval_lr)):
            raise RetrodbError(f"--retrieval-lr {self.retrieval_lr}: must be a positive "
                               "number")
        if self.retrieval_warmup is not None and self.retrieval_warmup < 0:
            raise RetrodbError(f"--retrieval-warmup {self.retrieval_warmup}: must be 0 or "
                               "more")


def lr_at(cfg: TrainConfig, step: int, retrieval: bool = False) -> float:
    """Linear warm-up to the peak, then cosine to peak × min_lr_ratio at cfg.steps; the
    retrieval weights' own peak and warm-up when `retrieval`."""
    peak, warmup = cfg.lr, cfg.warmup
    if retrieval:
        peak = cfg.retrieval_lr if cfg.retrieval_lr is not None else cfg.lr
        warmup = cfg.retrieval_warmup if cfg.retrieval_warmup is not None else cfg.warmup
    if step <= warmup:
        return peak * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    lo = peak * cfg.min_lr_ratio
    return lo + 0.5 * (peak - lo) * (1 + math.cos(math.pi * t))


def batch_rows(n: int, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Window indices of 1-based `step`: the data position is step × batch_size."""
    idx = np.arange((step - 1) * batch_size, step * batch_size)
    out = np.empty_like(idx)
    for epoch in np.unique(idx // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        sel = idx // n == epoch
        out[sel] = perm[idx[sel] % n]
    return out


@dataclass
class Session:
    """Everything a run needs, built and checked before the first write."""

    cfg: TrainConfig
    db: Database
    out: Path
    model: Any
    fwd: Any  # the model as called: compiled and/or wrapped by DDP
    opt: Any
    data: Any  # Sequences of the training documents
    val: Any  # Sequences of the validation documents
    device: Any
    start: int = 0
    rank: int = 0
    world: int = 1
    notes: tuple[str, ...] = ()


def prepare(db, cfg: TrainConfig, resume: bool = False) -> Session:
    """Check everything, then (rank 0) record the split and the run's config."""
    import torch

    from .checkpoint import latest_checkpoint, load_checkpoint
    from .model import Retro, preset_config
    from .sequences import Sequences, neighbour_table
    from ..stores.split import check_split, ensure_split
    from ..stores.tokens import TokenStore

    cfg.validate()
    rank, world = _distributed()
    device = resolve_device(cfg.device if world == 1 or cfg.device != "cuda"
                            else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    db = Database(db)
    dbc = db.config()
    out = run_dir(db, cfg.run)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise RetrodbError(f"{out}: run {cfg.run!r} exists; add --resume to continue it "
                           "or choose another --run")
    if resume and ckpt is None:
        raise RetrodbError(f"{out}: no checkpoint to --resume; start it without --resume")
    if ckpt is not None:
        check_same_config(out, cfg, TrainConfig.MUTABLE)
    mcfg = preset_config(cfg.preset, dbc["tokenizer"]["vocab_size"], dbc["chunk_size"],
                         cfg.retrieval)
    split = check_split(db, cfg.val_fraction, cfg.split_seed)
    table = neighbour_table(db, cfg.neighbours) if cfg.retrieval else None
    if rank == 0:
        TokenStore(db)  # built once, by rank 0
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    store = TokenStore(db, build=False)
    data = Sequences(db, split, "train", cfg.seq_chunks, store, table)
    val = Sequences(db, split, "val", cfg.seq_chunks, store, table)
    if len(data) == 0:
        raise RetrodbError(f"{db.root}: no training documents (--val-fraction "
                           f"{cfg.val_fraction} holds out all of them)")
    torch.manual_seed(cfg.seed)  # dropout and anything else drawn during training
    model = Retro(mcfg, seed=cfg.seed).to(device)
    if cfg.retrofit:
        _retrofit(model, retrofit_source(db, cfg.retrofit), cfg.retrofit)
    opt = _optimizer(model, cfg)
    start = load_checkpoint(ckpt, model, opt)["step"] if ckpt is not None else 0
    notes = ()
    if cfg.warmup > cfg.steps:
        notes = (f"--warmup {cfg.warmup} is longer than --steps {cfg.steps}: the learning "
                 f"rate never reaches --lr {cfg.lr}; use --warmup ≤ {cfg.steps // 10 or 1}",)
    if rank == 0:  # everything checked: now write
        ensure_split(db, cfg.val_fraction, cfg.split_seed)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"model": mcfg.to_dict(), "train": asdict(cfg),
                                         "n_params": model.num_params(),
                                         "database": db.root.name})
        truncate_metrics(out / "metrics.jsonl", start)
    fwd = torch.compile(model) if cfg.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    return Session(cfg, db, out, model, fwd, opt, data, val, device, start, rank, world,
                   notes)


def _optimizer(model, cfg: TrainConfig):
    """AdamW (β 0.9/0.95); weight decay on matrices only (not norms, embeddings); the
    retrieval weights in groups of their own (their own learning-rate schedule)."""
    import torch

    from .model import is_retrieval

    groups = []
    for retrieval in (False, True):
        named = [(n, p) for n, p in model.named_parameters()
                 if p.requires_grad and is_retrieval(n) == retrieval]
        decay = [p for n, p in named if p.dim() >= 2 and not n.startswith("embed")]
        other = [p for n, p in named if not (p.dim() >= 2 and not n.startswith("embed"))]
        groups += [{"params": decay, "weight_decay": cfg.weight_decay,
                    "retrieval": retrieval},
                   {"params": other, "weight_decay": 0.0, "retrieval": retrieval}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr,
                             betas=(0.9, 0.95), eps=1e-8)


def train(db, cfg: TrainConfig, resume: bool = False,
          on_progress: ProgressFn | None = None, on_note=None) -> dict:
    """Train (or resume) the run; return the last step's metrics."""
    s = prepare(db, cfg, resume)
    for n in s.notes:
        if on_note is not None and s.rank == 0:
            on_note(n)
    try:
        return _loop(s, on_progress)
    finally:
        if s.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _loop(s: Session, on_progress: ProgressFn | None) -> dict:
    from .checkpoint import save_checkpoint

    cfg = s.cfg
    autocast = autocast_for(s.device)
    metrics = open(s.out / "metrics.jsonl", "a") if s.rank == 0 else None
    t0, tokens_run, last = time.perf_counter(), 0, {}
    prog = Progress("train", s.start, cfg.steps, "steps")
    byte_len = s.db.tokenizer().byte_lengths()  # val bpb on the true bytes
    try:
        for step in range(s.start + 1, cfg.steps + 1):
            last = _step(s, step, autocast)
            tokens_run += last["tokens"]
            elapsed = time.perf_counter() - t0
            last["tokens_per_s"] = tokens_run / elapsed
            is_last = step == cfg.steps
            if (cfg.eval_every and step % cfg.eval_every == 0) or is_last:
                ev = evaluate_loss(s.model, s.val, cfg.eval_sequences, s.device, autocast,
                                   byte_len=byte_len)
                last.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
            if metrics:
                metrics.write(json.dumps(last) + "\n")
                metrics.flush()
            point("train.step")
            if s.rank == 0 and (step % cfg.checkpoint_every == 0 or is_last):
                save_checkpoint(s.out, s.model, s.opt, {
                    "step": step, "samples_seen": step * cfg.batch_size,
                    "epoch": step * cfg.batch_size // len(s.data)})
                point("train.checkpoint")
            if on_progress and s.rank == 0:
                prog.done = step
                prog.info = {"loss": round(last["loss"], 4), "lr": last["lr"],
                             "tokens/s": round(last["tokens_per_s"]),
                             **({"val loss": round(last["val_loss"], 4)}
                                if "val_loss" in last else {})}
                on_progress(prog)
    finally:
        if metrics:
            metrics.close()
    return last if s.rank == 0 else {}


def _step(s: Session, step: int, autocast) -> dict:
    """One optimiser step; its metrics."""
    import torch

    cfg = s.cfg
    lr = lr_at(cfg, step)
    for g in s.opt.param_groups:
        g["lr"] = lr_at(cfg, step, g.get("retrieval", False))
    rows = batch_rows(len(s.data), cfg.seed, step, cfg.batch_size)[s.rank::s.world]
    b = s.data.batch(rows)
    s.model.train()
    # the mean over the tokens of the global batch, whatever each rank holds: a DDP run
    # of W ranks takes the same step as one process with the whole batch
    n = _global_sum(float((b.targets != -100).sum()), s.world)
    with autocast:
        loss_sum = s.fwd(**to_torch(b, s.device), reduction="sum")
    s.opt.zero_grad(set_to_none=True)
    (loss_sum * (s.world / max(n, 1.0))).backward()  # DDP averages over the W ranks
    gnorm = torch.nn.utils.clip_grad_norm_(
        [p for p in s.model.parameters() if p.requires_grad], cfg.grad_clip)
    s.opt.step()
    loss = _global_sum(float(loss_sum.detach()), s.world) / max(n, 1.0)
    return {"step": step, "loss": loss, "lr": lr, "grad_norm": float(gnorm),
            "tokens": int(n)}


def _global_sum(x: float, world: int) -> float:
    """`x` summed over the ranks (itself in one process)."""
    if world == 1:
        return x
    import torch
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _retrofit(model, ckpt: Path, source: str) -> None:
    """RETROfit (the paper's §4): load a trained baseline's decoder, freeze it; only the
    encoder and CCA train. CCA starts at zero, so training starts from the baseline's
    exact predictions."""
    from safetensors.torch import load_file

    from .model import is_retrieval
    from .runs import read_json

    cfg_file = ckpt.parent.parent / "config.json"
    if cfg_file.is_file():
        theirs = read_json(cfg_file)["model"]
        mine = model.config.to_dict()
        diff = [f"{k} {theirs.get(k)} (here {v})" for k, v in mine.items()
                if k not in ("retrieval", "cca_start", "cca_every", "enc_layers")
                and theirs.get(k) != v]
        if diff:
            raise RetrodbError(f"--retrofit {source}: its decoder differs from this run's "
                               f"({'; '.join(diff)}); use the baseline's --preset and "
                               "database")
    sd = load_file(str(ckpt / "model.safetensors"))
    if any(is_retrieval(k) for k in sd):
        raise RetrodbError(f"--retrofit {source}: already a RETRO model; retrofit a "
                           "--no-retrieval baseline")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not is_retrieval(k)]
    if bad or unexpected:
        raise RetrodbError(f"--retrofit {source}: the baseline's shape differs from "
                           f"--preset (e.g. {(bad + list(unexpected))[:2]})")
    for n, p_ in model.named_parameters():
        p_.requires_grad = is_retrieval(n)
