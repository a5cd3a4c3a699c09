"""A training run's directory: `DB/models/<run>/`, its config, metrics and weights.

    config.json      model and training configs
    metrics.jsonl    one JSON line per step (loss, lr, grad norm, tokens/s, val)
    latest.json      the current checkpoint (see checkpoint.py)
    eval.json        the run's latest evaluation
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..core.db import Database
from ..core.errors import RetrodbError
from ..core.storage import local_loc


def run_dir(db, run: str) -> Path:
    if not run or "/" in run or run.startswith(".") or "\\" in run:
        raise RetrodbError(f"--run {run!r}: use a plain name like 'small-retro'")
    return Database(db).local_root("training") / "models" / run


def read_json(path: Path):
    return local_loc(path).read_json()


def write_json(path: Path, data) -> None:
    local_loc(path).write_json(data)


def check_same_config(out: Path, cfg, mutable: tuple[str, ...]) -> None:
    """A resume with other settings than the run's is refused, naming each."""
    saved = read_json(out / "config.json")["train"]
    diffs = [f"--{f.name.replace('_', '-')} {getattr(cfg, f.name)!r} (run has "
             f"{saved.get(f.name)!r})" for f in fields(cfg)
             if f.name not in mutable and saved.get(f.name) != getattr(cfg, f.name)]
    if diffs:
        raise RetrodbError(f"{out / 'config.json'}: --resume with different settings: "
                           + "; ".join(diffs) + "; use the run's settings or a new --run")


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines after the checkpoint being resumed (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def retrofit_source(db, source: str) -> Path:
    """The checkpoint directory a --retrofit names (a run of this database, or a path)."""
    from .checkpoint import latest_checkpoint

    p = Path(source)
    if (p / "model.safetensors").is_file():
        return p
    if "/" in source or "\\" in source:
        raise RetrodbError(f"--retrofit {source}: no checkpoint there (no model.safetensors); "
                           "give a checkpoint directory (RUN/checkpoints/step-N) or the "
                           "name of a run of this database")
    ckpt = latest_checkpoint(run_dir(db, source))
    if ckpt is None:
        raise RetrodbError(f"--retrofit {source}: neither a checkpoint directory nor a "
                           "run with a checkpoint in this database")
    return ckpt


def load_run(db, run: str, device: str = "cpu"):
    """The run's model on `device` with its latest weights, its config.json, device."""
    from .checkpoint import latest_checkpoint, load_weights
    from .device import resolve_device
    from .model import Retro, config_from_dict

    out = run_dir(db, run)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise RetrodbError(f"--run {run}: no checkpoint in {out}; train it with "
                           f"`retrodb train --db {Database(db).root} --run {run}`")
    saved = read_json(out / "config.json")
    dbc = Database(db).config()
    mcfg = config_from_dict(saved["model"])
    if mcfg.vocab_size != dbc["tokenizer"]["vocab_size"] or \
            mcfg.chunk_size != dbc["chunk_size"]:
        raise RetrodbError(f"--run {run}: trained with another tokenizer or chunk size "
                           "than this database's")
    dev = resolve_device(device)
    model = Retro(mcfg)
    load_weights(model, ckpt)
    return model.to(dev).eval(), saved, dev


def latest_step(db, run: str) -> int:
    return read_json(run_dir(db, run) / "latest.json")["step"]
