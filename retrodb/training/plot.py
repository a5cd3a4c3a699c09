"""Training and validation curves of one or more runs, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import RetrodbError


def read_metrics(db, run: str) -> list[dict]:
    from .runs import run_dir

    path = run_dir(db, run) / "metrics.jsonl"
    if not path.is_file():
        raise RetrodbError(f"--run {run}: no {path}; train it first")
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RetrodbError("retrodb plot needs matplotlib: pip install "
                           "'retrodb[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, out: Path) -> Path:
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_runs(db, runs: list[str], out: Path, smooth: int = 10) -> Path:
    """Loss per step (moving average over `smooth` steps) and validation loss."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(runs):
        ms = read_metrics(db, run)
        steps = np.array([m["step"] for m in ms])
        loss = np.array([m["loss"] for m in ms])
        w = max(1, min(smooth, len(loss)))
        avg = np.convolve(loss, np.ones(w) / w, mode="valid")
        color = f"C{i}"
        ax.plot(steps[w - 1:], avg, color=color, label=f"{run} train")
        val = [(m["step"], m["val_loss"]) for m in ms if "val_loss" in m]
        if val:
            ax.plot(*zip(*val), "o--", color=color, label=f"{run} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    return _save(plt, fig, ax, out)


def read_eval(db, run: str) -> dict:
    from .runs import read_json, run_dir

    path = run_dir(db, run) / "eval.json"
    if not path.is_file():
        raise RetrodbError(f"--run {run}: no {path}; run `retrodb eval --run {run}` first")
    ev = read_json(path)
    if not any("by_leakage" in ev.get(k, {}) for k in ("retrieval", "no_retrieval")):
        raise RetrodbError(f"{path}: no results by leakage (evaluated without a neighbour "
                           f"set); rerun `retrodb eval --run {run} --neighbours SET`")
    return ev


def leakage_series(ev: dict) -> list[tuple[str, list[dict]]]:
    """(label, buckets) of one evaluation: RETRO with and without retrieval, or the
    baseline."""
    if ev.get("retrieval_model"):
        return [(f"{ev['run']} (retrieval)", ev["retrieval"]["by_leakage"]),
                (f"{ev['run']} (retrieval off)", ev["no_retrieval"]["by_leakage"])]
    return [(ev["run"], ev["no_retrieval"]["by_leakage"])]


def plot_leakage(series: list[tuple[str, list[dict], list[dict] | None]], out: Path,
                 title: str = "") -> Path:
    """Bits per byte by leakage bucket (the paper's Fig. 6): one line per (label,
    buckets, other seeds' buckets or None); with other seeds, the mean and the range."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = None
    for i, (label, buckets, more) in enumerate(series):
        rows = [b for b in buckets if b["r"] != "no neighbours"]
        labels = [b["r"] for b in rows]
        runs = [rows] + [[b for b in m if b["r"] != "no neighbours"] for m in (more or [])]
        y = np.array([[b["bpb"] if b["tokens"] else np.nan for b in r] for r in runs])
        x = np.arange(len(labels))
        seen = ~np.isnan(y)
        mean = np.where(seen.any(0), np.where(seen, y, 0).sum(0) / np.maximum(seen.sum(0),
                                                                               1), np.nan)
        ax.plot(x, mean, "o-", color=f"C{i}", label=label)
        if len(runs) > 1:
            ax.fill_between(x, np.where(seen, y, np.inf).min(0),
                            np.where(seen, y, -np.inf).max(0), color=f"C{i}", alpha=0.2)
    ax.set_xticks(np.arange(len(labels or [])))
    ax.set_xticklabels([lab.split("-")[0] + "–" for lab in labels or []], rotation=0)
    ax.set_xlabel("leakage r of the predicted chunk (bucket start)")
    ax.set_ylabel("bits per byte")
    if title:
        ax.set_title(title)
    return _save(plt, fig, ax, out)
