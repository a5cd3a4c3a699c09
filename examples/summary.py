"""The demo's closing table: what was built, how good it is, where it is.

Usage: python examples/summary.py DB
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from retrodb.cli.common import print_table, table
from retrodb.query.info import db_info


def main() -> None:
    db = Path(sys.argv[1])
    info = db_info(db)
    st = info["stages"]
    t = table("", "result", "where", title=f"retrodb demo: {db}")
    c = st["chunks"]
    t.add_row("corpus", f"{st['docs']['rows']:,} documents → {c['rows']:,} chunks of "
              f"{info['chunk_size']} tokens ({c['tokens']:,} tokens) in {c['shards']} "
              "shards", f"{db}/chunks, {db}/docs")
    if "embeddings" in st:
        e = st["embeddings"]
        t.add_row("keys", f"{e['rows']:,} × {e['dim']}-d float16 "
                  f"({info['embedder']['name']})", f"{db}/embeddings")
    if "index" in st:
        i = st["index"]
        t.add_row("index", f"{i['factory']}: recall@{i.get('k', 10)} "
                  f"{i.get('recall', float('nan')):.3f} vs exact at nprobe "
                  f"{i.get('nprobe')}, {i.get('ms_per_query', 0):.2f} ms/query; "
                  f"{i.get('bytes_per_vector', 0):.0f} B/vector on disk", f"{db}/index")
    for name, s in st.items():
        if name.startswith("neighbours/"):
            rec = s.get("filtered_recall")
            t.add_row("neighbours", f"k {s['k']} per chunk, own document excluded; "
                      f"filtered recall {rec:.3f} at nprobe {s['nprobe']}"
                      if rec is not None else f"k {s['k']}", f"{db}/{name}")
    runs = {}
    for p in sorted((db / "models").glob("*/eval.json")):
        runs[p.parent.name] = json.loads(p.read_text())
    for run, r in runs.items():
        parts = []
        if "retrieval" in r:
            parts.append(f"bpb {r['retrieval']['bpb']:.3f} with retrieval, "
                         f"{r['no_retrieval']['bpb']:.3f} with it disabled, "
                         f"{r['leakage_filtered']['bpb']:.3f} leakage-filtered "
                         f"(r ≤ {r['overlap_alpha']})")
        else:
            parts.append(f"bpb {r['no_retrieval']['bpb']:.3f} (no retrieval: baseline)")
        t.add_row(f"model {run}", f"step {r['step']}: " + "; ".join(parts) +
                  f" — {r['no_retrieval']['tokens']:,} validation tokens",
                  f"{db}/models/{run}")
    print_table(t)  # folded on a terminal; whole, tab-separated, in a log


if __name__ == "__main__":
    main()
