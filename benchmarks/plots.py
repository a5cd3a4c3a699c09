"""The PNGs under docs/ that README links: recall vs nprobe (from a database's index
manifest) and training curves (from runs' metrics), drawn from what the stages recorded.
bench_search.py draws docs/search.png itself.

Usage: python benchmarks/plots.py --db DB [--train-db DB --runs A,B,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recall_plot(db: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    m = json.loads((db / "index" / "manifest.json").read_text())
    rec, k = m["recall"], m["recall"]["k"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for i, c in enumerate(sorted({p["candidates"] for p in rec["sweep"]})):
        pts = [p for p in rec["sweep"] if p["candidates"] == c]
        label = "PQ ranking only" if c == 0 else f"{c} candidates re-ranked"
        a.plot([p["nprobe"] for p in pts], [p[f"recall@{k}"] for p in pts], "o-",
               color=f"C{i}", label=label)
        b.plot([p["nprobe"] for p in pts], [p["ms_per_query"] for p in pts], "o-",
               color=f"C{i}", label=label)
    ch = rec["chosen"]
    a.axhline(rec["target"], color="grey", ls=":", label=f"target {rec['target']}")
    a.plot([ch["nprobe"]], [ch[f"recall@{k}"]], "k*", ms=14, label="chosen")
    for ax, yl in ((a, f"recall@{k} vs exact search"), (b, "ms / query (batched)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nprobe (inverted lists scanned)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(f"{m['trained']['factory']} on {m['merged']['ntotal']:,} keys "
                 f"({rec['queries']} sampled chunks as queries)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--train-db", type=Path)
    ap.add_argument("--runs", default="bench-retro,bench-base")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    recall_plot(args.db, docs / "recall.png")
    print("wrote docs/recall.png")
    if args.train_db:
        from retrodb.training.plot import plot_runs

        plot_runs(args.train_db, args.runs.split(","), docs / "training.png")
        print("wrote docs/training.png")


if __name__ == "__main__":
    main()
