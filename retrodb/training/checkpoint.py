"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

    models/<run>/config.json                model and training configs
    models/<run>/metrics.jsonl              one JSON line per step / evaluation
    models/<run>/latest.json                {"checkpoint": "checkpoints/step-000200"}
    models/<run>/checkpoints/step-000200/
        model.safetensors                   weights (tied embedding stored once)
        optimizer.safetensors               AdamW moments per parameter, by name
        rng.safetensors                     torch CPU (and CUDA) generator states
        state.json                          step, data position, optimiser hyper-
                                            parameters, python/numpy RNG states

A checkpoint directory is written under a temporary name and renamed; `latest.json`
is switched (atomically) only after that, then older checkpoints are removed, so a
crash at any moment leaves one complete checkpoint to resume from.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..core.errors import RetrodbError
from .runs import read_json, write_json

LATEST = "latest.json"


def save_checkpoint(run_dir: Path, model, optimizer, state: dict) -> Path:
    name = f"checkpoints/step-{state['step']:06d}"
    final = run_dir / name
    tmp = final.with_name(".tmp-" + final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    tensors, groups = _optimizer_tensors(model, optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(tmp / "rng.safetensors"))
    np_state = np.random.get_state()
    py_state = random.getstate()
    full = {**state, "optimizer_groups": groups,
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]]}
    (tmp / "state.json").write_text(json.dumps(full) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_json(run_dir / LATEST, {"checkpoint": name, "step": state["step"]})
    for old in (run_dir / "checkpoints").glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    p = run_dir / LATEST
    if not p.is_file():
        return None
    path = run_dir / read_json(p)["checkpoint"]
    if not (path / "state.json").is_file():
        raise RetrodbError(f"{p}: names {path}, which is missing; restore it or start "
                           "a new --run")
    return path


def load_weights(model, ckpt: Path, strict: bool = True) -> None:
    try:
        missing, unexpected = load_model(model, str(ckpt / "model.safetensors"),
                                         strict=False)
    except RuntimeError as e:  # shape mismatch: another preset or vocabulary
        lines = [x.strip() for x in str(e).splitlines() if "size mismatch" in x]
        first = (lines[0] if lines else " ".join(str(e).split()))[:160]
        raise RetrodbError(f"{ckpt}: weights do not fit this model ({first}); use the "
                           "run's --preset and database") from None
    if strict and (missing or unexpected):
        raise RetrodbError(f"{ckpt}: weights do not fit this model (missing "
                           f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def load_checkpoint(ckpt: Path, model, optimizer) -> dict:
    """Restore weights, optimiser and RNG states; return state.json."""
    load_weights(model, ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    names = {p: n for n, p in model.named_parameters()}
    sd = {"state": {}, "param_groups": state["optimizer_groups"]}
    for i, p in enumerate(_params(optimizer)):
        n = names[p]
        s = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == n}
        if s:
            sd["state"][i] = s
    optimizer.load_state_dict(sd)
    rng = load_file(str(ckpt / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    ns = state["numpy_rng"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    ps = state["python_rng"]
    random.setstate((ps[0], tuple(ps[1]), ps[2]))
    return state


def _params(optimizer) -> list:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _optimizer_tensors(model, optimizer) -> tuple[dict, list]:
    """AdamW state as {"<param name>/<key>": tensor} and its groups as JSON."""
    names = {p: n for n, p in model.named_parameters()}
    sd = optimizer.state_dict()
    tensors = {}
    for i, p in enumerate(_params(optimizer)):
        for k, v in sd["state"].get(i, {}).items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{names[p]}/{k}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]
