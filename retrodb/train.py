"""Training a RETRO model (or its no-retrieval baseline) on a database.

The data order is a pure function of (seed, step): sample i of the run is window
permutation_{epoch}[i mod n] with epoch = i // n, each epoch's permutation drawn from
numpy's generator seeded with (seed, epoch). Resuming at step s therefore needs only
s; weights, AdamW moments and RNG states come from the checkpoint, and the loss curve
continues exactly as if never interrupted (bit for bit on CPU).

Under `torchrun` (WORLD_SIZE > 1) every rank takes rows rank::world of each global
batch and DDP averages gradients; only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from .db import Database
from .errors import RetrodbError
from .faults import point
from .storage import write_json


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
        if self.lr <= 0:
            raise RetrodbError(f"--lr {self.lr}: must be positive")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RetrodbError(f"--device {self.device}: use cpu or cuda")
        if self.retrofit and not self.retrieval:
            raise RetrodbError("--retrofit adds retrieval to a baseline: drop "
                               "--no-retrieval")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to cfg.lr, then cosine to cfg.lr × min_lr_ratio at cfg.steps."""
    if step <= cfg.warmup:
        return cfg.lr * step / max(1, cfg.warmup)
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def batch_rows(n: int, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Window indices of 1-based `step`: the data position is step × batch_size."""
    idx = np.arange((step - 1) * batch_size, step * batch_size)
    out = np.empty_like(idx)
    for epoch in np.unique(idx // n):
        perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
        sel = idx // n == epoch
        out[sel] = perm[idx[sel] % n]
    return out


def run_dir(db_path, run: str) -> Path:
    if not run or "/" in run or run.startswith("."):
        raise RetrodbError(f"--run {run!r}: use a plain name like 'small-retro'")
    return Database(db_path).root / "models" / run


def resolve_device(device: str):
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RetrodbError(f"--device {device}: CUDA is not available on this machine; "
                           "use --device cpu")
    return torch.device(device)


def to_torch(batch, device):
    import torch

    t = {"idx": torch.from_numpy(batch.tokens), "targets": torch.from_numpy(batch.targets)}
    if batch.neighbours is not None:
        t["neighbours"] = torch.from_numpy(batch.neighbours)
        t["neighbour_mask"] = torch.from_numpy(batch.neighbour_mask)
    return {k: v.to(device, non_blocking=True) for k, v in t.items()}


@dataclass
class Progress:
    step: int
    steps: int
    loss: float
    lr: float
    tokens_per_s: float
    eta_s: float
    val_loss: float | None = None


def train(db_path, cfg: TrainConfig, resume: bool = False,
          on_progress: Callable[[Progress], None] | None = None) -> dict:
    """Train (or resume) the run; return the final metrics."""
    import torch

    from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from .model import Retro, preset_config
    from .sequences import Sequences
    from .split import ensure_split
    from .tokens import TokenStore

    cfg.validate()
    rank, world = _distributed()
    device = resolve_device(cfg.device if world == 1 or not cfg.device == "cuda"
                            else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    db = Database(db_path)
    dbc = db.config()
    out = run_dir(db_path, cfg.run)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise RetrodbError(f"{out}: run {cfg.run!r} exists; add --resume to continue it "
                           "or choose another --run")
    if resume and ckpt is None:
        raise RetrodbError(f"{out}: no checkpoint to --resume; start it without --resume")
    if ckpt is not None:
        _check_same_config(out, cfg)
    mcfg = preset_config(cfg.preset, dbc["tokenizer"]["vocab_size"], dbc["chunk_size"],
                         cfg.retrieval)
    if rank == 0:  # rank 0 records the split and builds the token store first
        ensure_split(db_path, cfg.val_fraction, cfg.split_seed)
        TokenStore(db_path)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    split = ensure_split(db_path, cfg.val_fraction, cfg.split_seed)
    store = TokenStore(db_path, build=False)
    table = _neighbour_table(db_path, cfg.neighbours) if cfg.retrieval else None
    data = Sequences(db_path, split, "train", cfg.seq_chunks, store, table)
    val = Sequences(db_path, split, "val", cfg.seq_chunks, store, table)
    if len(data) == 0:
        raise RetrodbError(f"{db.root}: no training documents (--val-fraction "
                           f"{cfg.val_fraction} holds out all of them)")

    torch.manual_seed(cfg.seed)
    model = Retro(mcfg).to(device)
    if cfg.retrofit:
        _retrofit(model, db_path, cfg.retrofit)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2
             and not n.startswith("embed")]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not
             (p.dim() >= 2 and not n.startswith("embed"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr,
                            betas=(0.9, 0.95), eps=1e-8)
    start = 0
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt)["step"]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"model": mcfg.to_dict(), "train": asdict(cfg),
                                         "n_params": model.num_params(),
                                         "database": str(db.root.name)})
        _truncate_metrics(out / "metrics.jsonl", start)
    fwd = model
    if cfg.compile:
        fwd = torch.compile(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast("cpu", enabled=False)

    metrics = open(out / "metrics.jsonl", "a") if rank == 0 else None
    t0, tokens_run, last = time.perf_counter(), 0, {}
    try:
        for step in range(start + 1, cfg.steps + 1):
            lr = lr_at(cfg, step)
            for g in opt.param_groups:
                g["lr"] = lr
            rows = batch_rows(len(data), cfg.seed, step, cfg.batch_size)[rank::world]
            b = data.batch(rows)
            t = to_torch(b, device)
            model.train()
            with autocast:
                loss = fwd(**t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            opt.step()
            n_tok = int((b.targets != -100).sum()) * world
            tokens_run += n_tok
            el = time.perf_counter() - t0
            tps = tokens_run / el
            last = {"step": step, "loss": float(loss.detach()), "lr": lr,
                    "grad_norm": float(gnorm), "tokens": n_tok, "tokens_per_s": tps}
            val_loss = None
            is_last = step == cfg.steps
            if (cfg.eval_every and step % cfg.eval_every == 0) or is_last:
                ev = evaluate_loss(model, val, cfg.eval_sequences, device, autocast)
                val_loss = ev["loss"]
                last.update(val_loss=ev["loss"], val_bpb=ev["bpb"])
            if metrics:
                metrics.write(json.dumps(last) + "\n")
                metrics.flush()
            point("train.step")
            if rank == 0 and (step % cfg.checkpoint_every == 0 or is_last):
                save_checkpoint(out, model, opt, {"step": step, "samples_seen":
                                                  step * cfg.batch_size,
                                                  "epoch": step * cfg.batch_size //
                                                  len(data)})
                point("train.checkpoint")
            if on_progress and rank == 0:
                eta = (cfg.steps - step) * el / (step - start)
                on_progress(Progress(step, cfg.steps, last["loss"], lr, tps, eta, val_loss))
    finally:
        if metrics:
            metrics.close()
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return last if rank == 0 else {}


def evaluate_loss(model, seqs, max_sequences: int, device, autocast,
                  retrieval: bool = True, exclude_overlap: float | None = None,
                  batch_size: int = 8) -> dict:
    """Mean loss (nats/token) and bits per byte over the first windows of `seqs`.

    Bits per byte = bits per predicted token × tokens per UTF-8 byte of the evaluated
    documents (from the docs table), so it compares across tokenizers.
    """
    import torch

    n = len(seqs) if not max_sequences else min(len(seqs), max_sequences)
    if n == 0:
        return {"loss": float("nan"), "bpb": float("nan"), "tokens": 0, "sequences": 0}
    was = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = seqs.batch(np.arange(i, min(n, i + batch_size)), exclude_overlap)
            t = to_torch(b, device)
            if not retrieval:
                t.pop("neighbours", None)
                t.pop("neighbour_mask", None)
            with autocast:
                total += float(model(**t, reduction="sum"))
            count += int((b.targets != -100).sum())
    model.train(was)
    loss = total / max(count, 1)
    bpb = loss / math.log(2) * seqs.n_tokens / max(seqs.n_bytes, 1)
    return {"loss": loss, "bpb": bpb, "tokens": count, "sequences": n}


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _check_same_config(out: Path, cfg: TrainConfig) -> None:
    from .storage import read_json

    saved = read_json(out / "config.json")["train"]
    diffs = [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)!r} (run has "
             f"{saved.get(f.name)!r})" for f in fields(cfg)
             if f.name not in TrainConfig.MUTABLE and saved.get(f.name) != getattr(cfg, f.name)]
    if diffs:
        raise RetrodbError(f"{out / 'config.json'}: --resume with different settings: "
                           + "; ".join(diffs) + "; use the run's settings or a new --run")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the checkpoint being resumed (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _retrofit(model, db_path, source: str) -> None:
    """Load a baseline decoder's weights, freeze them; only CCA and encoder train."""
    from .checkpoint import latest_checkpoint

    p = Path(source)
    ckpt = p if (p / "model.safetensors").is_file() else latest_checkpoint(
        run_dir(db_path, source))
    if ckpt is None:
        raise RetrodbError(f"--retrofit {source}: neither a checkpoint directory nor a "
                           "run with a checkpoint in this database")
    from safetensors.torch import load_file

    sd = load_file(str(ckpt / "model.safetensors"))
    if any(k.startswith("encoder.") or ".cca." in k for k in sd):
        raise RetrodbError(f"--retrofit {source}: already a RETRO model; retrofit a "
                           "--no-retrieval baseline")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not (k.startswith("encoder.") or ".cca." in k or
                                      ".n2." in k)]
    if bad or unexpected:
        raise RetrodbError(f"--retrofit {source}: the baseline's shape differs from "
                           f"--preset (e.g. {(bad + list(unexpected))[:2]})")
    for n, p_ in model.named_parameters():
        p_.requires_grad = n.startswith("encoder.") or ".cca." in n or ".n2." in n


def _neighbour_table(db_path, name: str):
    from .neighbours import NeighbourTable

    try:
        return NeighbourTable(db_path, name)
    except RetrodbError as e:
        raise RetrodbError(f"--neighbours {name}: {e}; or train the baseline with "
                           "--no-retrieval") from None
