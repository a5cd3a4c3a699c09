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


def plot_runs(db, runs: list[str], out: Path, smooth: int = 10) -> Path:
    """Loss per step (moving average over `smooth` steps) and validation loss."""
    try:
        import matplotlib
    except ImportError:
        raise RetrodbError("retrodb plot needs matplotlib: pip install "
                           "'retrodb[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
