"""Validation loss and bits per byte of a trained run, with and without retrieval.

Three numbers for a RETRO run, on the same validation windows:
  - retrieval: the precomputed neighbours of each validation chunk (own document
    excluded, as in training);
  - no retrieval: every neighbour removed, so CCA adds nothing (the decoder alone);
  - leakage-filtered: neighbours whose longest common token run with the query chunk
    exceeds `overlap_alpha` × chunk size are removed too (the paper's test-set leakage
    filter, retrodb.overlap).
A --no-retrieval baseline run gives the one number it can.
"""

from __future__ import annotations

from .db import Database
from .errors import RetrodbError


def load_run(db_path, run: str, device: str = "cpu"):
    """The run's model on `device` with its latest weights, and its config.json."""
    from .checkpoint import latest_checkpoint, load_weights
    from .model import Retro, config_from_dict
    from .storage import read_json
    from .train import resolve_device, run_dir

    out = run_dir(db_path, run)
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        raise RetrodbError(f"--run {run}: no checkpoint in {out}; train it with "
                           f"`retrodb train --db {db_path} --run {run}`")
    saved = read_json(out / "config.json")
    db = Database(db_path).config()
    mcfg = config_from_dict(saved["model"])
    if mcfg.vocab_size != db["tokenizer"]["vocab_size"] or \
            mcfg.chunk_size != db["chunk_size"]:
        raise RetrodbError(f"--run {run}: trained with another tokenizer or chunk size "
                           "than this database's")
    dev = resolve_device(device)
    model = Retro(mcfg)
    load_weights(model, ckpt)
    return model.to(dev).eval(), saved, dev


def evaluate_run(db_path, run: str, max_sequences: int = 0, overlap_alpha: float = 0.2,
                 neighbours: str | None = None, device: str = "cpu",
                 batch_size: int = 8) -> dict:
    """{"retrieval": {...}, "no_retrieval": {...}, "leakage_filtered": {...}}, each
    with loss (nats/token), bpb, tokens, sequences; plus the run's step."""
    import torch

    from .sequences import Sequences
    from .split import load_split
    from .tokens import TokenStore
    from .train import _neighbour_table, evaluate_loss

    model, saved, dev = load_run(db_path, run, device)
    tcfg = saved["train"]
    split = load_split(db_path)
    if split is None:
        raise RetrodbError(f"{db_path}: no train/validation split; it is recorded by "
                           "`retrodb train`")
    store = TokenStore(db_path)
    retro = model.config.retrieval
    table = _neighbour_table(db_path, neighbours or tcfg["neighbours"]) if retro else None
    val = Sequences(db_path, split, "val", tcfg["seq_chunks"], store, table)
    if len(val) == 0:
        raise RetrodbError(f"{db_path}: no validation documents (--val-fraction "
                           f"{split.val_fraction}); retrain with a larger one")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" \
        else torch.autocast("cpu", enabled=False)
    run_eval = lambda **kw: evaluate_loss(model, val, max_sequences, dev, autocast,  # noqa
                                          batch_size=batch_size, **kw)
    out = {"run": run, "step": _step(db_path, run), "validation_docs": val.n_docs,
           "no_retrieval": run_eval(retrieval=False)}
    if retro:
        out["retrieval"] = run_eval()
        out["leakage_filtered"] = run_eval(exclude_overlap=overlap_alpha)
        out["overlap_alpha"] = overlap_alpha
    from .storage import write_json
    from .train import run_dir

    out["max_sequences"] = max_sequences
    write_json(run_dir(db_path, run) / "eval.json", out)  # the run's latest evaluation
    return out


def _step(db_path, run: str) -> int:
    from .storage import read_json
    from .train import run_dir

    return read_json(run_dir(db_path, run) / "latest.json")["step"]
