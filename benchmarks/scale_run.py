"""Scale run: `retrodb chunk` on at least 200 MB of real text and on twice as much, in
one scripted pass. Records time, throughput and the peak resident memory of every
process (the coordinator and each worker), which must stay flat as the corpus doubles:
memory is bounded by a split, not by the corpus.

The corpus is `benchmarks/real_corpus.py` output (Debian documentation packages and
the Python sources of the installed packages and standard library, as ~64 MB JSONL
files): 1x is the first half of its files, 2x all of them.

Usage: python benchmarks/scale_run.py --corpus DIR [--workers 2] [--split-size 64M]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import Measure, Result, Side, run_json

CHUNK = r"""
import json, resource, sys, time
from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.util import parse_size
inputs, db, workers, split, root = sys.argv[1].split(","), *sys.argv[2:6]
t0 = time.perf_counter()
r = chunk_corpus(db, inputs, ChunkConfig(workers=int(workers), root=root,
                                         split_size=parse_size(split, "--split-size")))
dt = time.perf_counter() - t0
m = json.load(open(db + "/chunks/manifest.json"))
ru = resource.getrusage
print(json.dumps({"tokens": r.tokens, "chunks": r.chunks, "shards": len(r.shards),
                  "bytes": sum(p["end"] - p["start"] for e in m["shards"]
                               for p in e["split"]["pieces"]),
                  "seconds": dt,
                  "coordinator_rss_mb": ru(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": ru(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--split-size", default="64M")
    args = ap.parse_args()
    files = sorted(args.corpus.glob("*.jsonl"))
    half = files[: (len(files) + 1) // 2]
    res = Result("scale", ["retrodb/stages/chunk", "retrodb/exec"],
                 "scale run: chunk at 1x and 2x")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, inputs in (("1x", half), ("2x", files)):
            runs[name] = run_json(CHUNK, ",".join(map(str, inputs)),
                                  str(Path(tmp) / name), str(args.workers), args.split_size,
                                  str(args.corpus), env={"TOKENIZERS_PARALLELISM": "false"})
            shutil.rmtree(Path(tmp) / name)
    one, two = runs["1x"], runs["2x"]
    res.add(Measure("peak RSS of the coordinator, 2× vs 1× corpus", "MB",
                    Side("2×", [two["coordinator_rss_mb"]]),
                    Side("1×", [one["coordinator_rss_mb"]]), higher_is_better=False))
    res.add(Measure("peak RSS of the largest worker, 2× vs 1× corpus", "MB",
                    Side("2×", [two["worker_rss_mb"]]), Side("1×", [one["worker_rss_mb"]]),
                    higher_is_better=False))
    res.add(Measure("wall time, 2× vs 1× corpus", "s", Side("2×", [two["seconds"]]),
                    Side("1×", [one["seconds"]]), higher_is_better=False,
                    note="linear: the ratio follows the ratio of tokens, {token_ratio}"))
    res.add(Measure("tokens/s, 2× vs 1× corpus", "tokens/s",
                    Side("2×", [two["tokens"] / two["seconds"]]),
                    Side("1×", [one["tokens"] / one["seconds"]])))
    res.facts.update(bytes_1x=one["bytes"] / 1e6, bytes_2x=two["bytes"] / 1e6,
                     tokens_1x=one["tokens"], tokens_2x=two["tokens"],
                     token_ratio=two["tokens"] / one["tokens"], shards_2x=two["shards"],
                     workers=args.workers, split=args.split_size)
    res.notes.append("{bytes_1x} MB ({tokens_1x} tokens) and {bytes_2x} MB ({tokens_2x} "
                     "tokens) of real text (Debian documentation, Python sources), "
                     "{workers} workers, splits of {split}: {shards_2x} shards at 2×.")
    res.save()


if __name__ == "__main__":
    main()
