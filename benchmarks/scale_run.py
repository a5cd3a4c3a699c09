"""The pipeline at two corpus sizes: time and peak memory per stage, 1× vs 2×.

Takes every supported file under the input directories (real text from packages, see
BENCHMARKS.md for which), builds a database from half of them (every other file, in
sorted order: 1×) and one from all of them (2×), running chunk → embed → index →
neighbours as the CLI does, each stage in its own process under GNU time. Reports per
stage the wall time and the peak resident memory of its process, and the ratios: time
should double with the corpus, memory should not grow.

Usage: python benchmarks/scale_run.py --work DIR INPUT_DIR...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUFFIXES = (".txt", ".txt.gz", ".txt.zst", ".jsonl", ".jsonl.gz", ".parquet")


def files_under(dirs: list[Path]) -> list[tuple[Path, Path]]:
    out = []
    for i, d in enumerate(dirs):
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.name.endswith(SUFFIXES):
                out.append((p, Path(f"src{i}") / p.relative_to(d)))
    return out


def link_corpus(files: list[tuple[Path, Path]], dst: Path) -> int:
    size = 0
    for src, rel in files:
        t = dst / rel
        t.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, t)
        except OSError:
            shutil.copy2(src, t)
        size += text_bytes(src)
    return size


def text_bytes(p: Path) -> int:
    """Bytes of text in a file (uncompressed)."""
    if p.name.endswith(".gz"):
        import gzip

        with gzip.open(p) as f:
            return sum(len(b) for b in iter(lambda: f.read(1 << 20), b""))
    return p.stat().st_size


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one retrodb command, via GNU time."""
    fmt = "%e %M"
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", fmt, sys.executable, "-m",
                        "retrodb.cli.main", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"retrodb {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    last = p.stderr.strip().splitlines()[-1].split()
    return wall, int(last[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", default="scale.md")
    # Memory is bounded by the shard, not the corpus: shards smaller than the corpus
    # (the default, 1M rows, would hold all of 60 MB in one) show it.
    ap.add_argument("--shard-size", type=int, default=50_000)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from WORK/scale.json")
    args = ap.parse_args()
    files = files_under(args.inputs)
    sizes = {"1x": files[::2], "2x": files}
    stats: dict[str, dict] = {}
    if args.report_only:
        stats = json.loads((args.work / "scale.json").read_text())
        sizes = {}
    for label, chosen in sizes.items():
        corpus = args.work / f"corpus-{label}"
        db = args.work / f"db-{label}"
        shutil.rmtree(corpus, ignore_errors=True)
        shutil.rmtree(db, ignore_errors=True)
        nbytes = link_corpus(chosen, corpus)
        st = {"files": len(chosen), "bytes": nbytes}
        for stage, cmd in [("chunk", ["chunk", str(corpus), "--db", str(db),
                                      "--shard-size", str(args.shard_size)]),
                           ("embed", ["embed", "--db", str(db)]),
                           ("index", ["index", "--db", str(db)]),
                           ("neighbours", ["neighbours", "--db", str(db), "-k", "2"])]:
            wall, rss = timed(cmd)
            st[stage] = {"seconds": round(wall, 1), "peak_rss_mb": round(rss)}
            print(label, stage, st[stage], flush=True)
        info = json.loads(subprocess.run([sys.executable, "-m", "retrodb.cli.main", "info",
                                          str(db), "--json"], capture_output=True,
                                         text=True).stdout)
        st["chunks"] = info["stages"]["chunks"]["rows"]
        st["tokens"] = info["stages"]["chunks"]["tokens"]
        st["index"]["factory"] = info["stages"]["index"]["factory"]
        st["index"]["recall"] = info["stages"]["index"].get("recall")
        stats[label] = st
    if not args.report_only:
        (args.work / "scale.json").write_text(json.dumps(stats, indent=1))
    a, b = stats["1x"], stats["2x"]
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}")
    lines = [
        "## scale: 1× vs 2× corpus",
        "",
        f"Corpus 2×: {b['files']:,} files, {b['bytes'] / 1e6:.1f} MB of real text "
        f"({b['chunks']:,} chunks, {b['tokens'] / 1e6:.1f}M tokens); 1×: every other file, "
        f"{a['files']:,} files, {a['bytes'] / 1e6:.1f} MB ({a['chunks']:,} chunks). Every "
        f"chunk embedded (no sampling); shards of {args.shard_size:,} chunks. Each stage "
        "is one `retrodb` process with default options (1 worker), measured by GNU time: wall seconds and peak resident memory "
        f"of the process. Index: autofaiss's choice for each size (1×: "
        f"`{a['index']['factory']}`, 2×: `{b['index']['factory']}`). Machine: {machine}. "
        "Command: `python benchmarks/scale_run.py --work DIR INPUT_DIR...`. Inputs: "
        "Debian packages linux-doc-6.1 (Documentation/*.rst, *.txt, devicetree *.yaml), "
        "perl-doc (*.pod), sphinx-doc (_sources) and python3.11-doc (_sources).",
        "",
        "| stage | time 1× (s) | time 2× (s) | ratio | peak RSS 1× (MB) | peak RSS 2× (MB) "
        "| ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in ("chunk", "embed", "index", "neighbours"):
        x, y = a[stage], b[stage]
        lines.append(f"| {stage} | {x['seconds']:,.1f} | {y['seconds']:,.1f} | "
                     f"{y['seconds'] / x['seconds']:.2f}× | {x['peak_rss_mb']:,} | "
                     f"{y['peak_rss_mb']:,} | {y['peak_rss_mb'] / x['peak_rss_mb']:.2f}× |")
    lines.append("")
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
