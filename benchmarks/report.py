"""Render BENCHMARKS.md from the result files in benchmarks/results/*.json, and check it.

    python benchmarks/report.py            write BENCHMARKS.md
    python benchmarks/report.py --check    exit 1 if BENCHMARKS.md differs from what the
                                           results render, if a result was measured on a
                                           dirty tree, or at a commit older than the last
                                           change to the code it measures

Every number in BENCHMARKS.md comes from a result file written by a benchmark script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "BENCHMARKS.md"
RATES_FROM_LISTS = 4096  # k-means rates count from here (smaller: overhead-bound)
ORDER = ["chunk", "embed", "index", "search", "neighbours", "train", "retro", "serve",
         "scale", "gpu"]

HEADER = """# Benchmarks

Every comparison runs retrodb's stage and its baseline or peer **in the same run**, on
the same data, with the same warm-up, interleaved round by round; the ratio of the
paired rounds is the result (median, with the range over rounds), since absolute rates
on a shared machine are noise. This file is rendered by `python benchmarks/report.py`
from the result files the scripts write (`benchmarks/results/*.json`: every round, the
machine, its load, the commit, the command, the library versions); no number here is
typed by hand. `make bench` reruns everything; each section names its own command.
"""

GPU_NOTE = """
## GPU

Unmeasured: no GPU has been lent to a session yet, so there is no GPU row and no GPU
benchmark script. `embed --gpus` and training on CUDA are tested on the CPU for
everything that is not a kernel (one worker per device, batch sizing, out-of-memory
halving, the float16 cast, resume after a lost device), and `pytest -m gpu` compares
their keys and losses with the CPU's where CUDA exists.
"""


def fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None or x != x:
        return "–"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"  # counts and sizes: whole (384, not 384.0)
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.3g}" if a < 10 else f"{x:.2f}"
    return f"{x:.4f}" if a >= 1e-3 else f"{x:.3g}"


def ratio(m: dict) -> str:
    r = m["ratio"]
    n = len(m["ours"]["rounds"])
    spread = "" if n == 1 or r["min"] == r["max"] else \
        f" ({fmt(r['min'])}–{fmt(r['max'])})"
    return f"{fmt(r['median'])}×{spread}"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def machine(r: dict) -> str:
    m = r["machine"]
    return f"{m['cpu']}, {m['cores']} cores"


def summary(results: list[dict]) -> str:
    rows = ["| benchmark | measure | ours | baseline | ratio (median, range) | rounds |",
            "|---|---|---|---|---|---|"]
    for r in results:
        for m in r["measures"]:
            rows.append(f"| {r['benchmark']} | {m['name']} | {fmt(median(m['ours']['rounds']))}"
                        f" {m['unit']} | {fmt(median(m['baseline']['rounds']))} {m['unit']} "
                        f"| {ratio(m)} | {len(m['ours']['rounds'])} |")
    return "\n## All comparisons\n\n" + "\n".join(rows) + "\n"


def section(r: dict) -> str:
    m = r["machine"]
    load = "/".join(fmt(x) for x in m["load_before"][:1] + m["load_after"][:1])
    vers = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
    lines = [f"\n## {r['title']}\n",
             f"Command: `{r['command']}` at commit {r['commit'][:10]}"
             f"{' (dirty tree)' if r['dirty'] else ''}, {r['started']} UTC, "
             f"{fmt(r['seconds'])} s. Machine: {machine(r)}, load average "
             f"{load} (before/after). Versions: {vers}.\n",
             "| measure | ours | rounds | baseline | rounds | ratio |",
             "|---|---|---|---|---|---|"]
    for x in r["measures"]:
        o, b = x["ours"], x["baseline"]
        lines.append(f"| {x['name']} | {o['label']}: {fmt(median(o['rounds']))} {x['unit']}"
                     f" | {', '.join(fmt(v) for v in o['rounds'])} | {b['label']}: "
                     f"{fmt(median(b['rounds']))} {x['unit']} | "
                     f"{', '.join(fmt(v) for v in b['rounds'])} | {ratio(x)} |")
    for t in r.get("tables", []):
        lines += ["", f"{t['title']}:", "", "| " + " | ".join(t["columns"]) + " |",
                  "|" + "---|" * len(t["columns"])]
        lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in t["rows"]]
    facts = {k: fmt(v) if isinstance(v, (int, float)) else v for k, v in r["facts"].items()}
    notes = [n.format(**facts) for n in r["notes"]]
    notes += [f"{x['name']}: {x['note'].format(**facts)}" for x in r["measures"] if x["note"]]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def load() -> list[dict]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    return [found[n] for n in names]


def render(results: list[dict]) -> str:
    text = HEADER + summary(results) + "".join(section(r) for r in results)
    if not any(r["benchmark"] == "gpu" for r in results):
        text += GPU_NOTE
    return text


RATES = ROOT / "retrodb" / "ops" / "rates.json"


def rates(results: list[dict]) -> dict:
    """The per-device rates `retrodb plan` divides by, taken from the results."""
    out: dict = {}
    by = {r["benchmark"]: r for r in results}

    def put(name: str, value, bench: str, what: str) -> None:
        r = by[bench]
        out[name] = {"value": value, "source": f"measured: {what}, benchmarks/results/"
                     f"{bench}.json ({r['machine']['cpu']}, commit {r['commit'][:10]})"}

    if "chunk" in by:
        f = by["chunk"]["facts"]
        put("chunk_tokens_per_cpu_s", f["worker_tokens_per_cpu_s"], "chunk",
            "tokens per worker CPU-second in its tasks")
        put("chunk_coordinator_s_per_shard", f["coord_per_split"], "chunk",
            "coordinator CPU-seconds per split")
    if "embed" in by:
        f = by["embed"]["facts"]
        put("embed_chunks_per_cpu_s", f["chunks_per_core_s"], "embed",
            "chunks/s of one worker, per core")
    for bench, key, fact, what in (
            ("search", "add_vectors_per_cpu_s", "add_vectors_per_core_s",
             "vectors added per core-second"),
            ("search", "kmeans_core_s_per_unit", "kmeans_core_s_per_unit",
             "flat k-means core-seconds per centroid distance × dimension"),
            ("search", "kmeans2_core_s_per_unit", "kmeans2_core_s_per_unit",
             "two-level k-means (and its refinement rounds) core-seconds per centroid "
             "distance × dimension"),
            ("neighbours", "search_queries_per_cpu_s", "queries_per_core_s",
             "filtered neighbour queries per core-second")):
        if bench in by and fact in by[bench]["facts"]:
            if "kmeans" in key and by[bench]["facts"].get("nlist", 0) < RATES_FROM_LISTS:
                continue  # small k-means is overhead-bound: no rate to extrapolate from
            put(key, by[bench]["facts"][fact], bench, what)
    return out


def rates_text(results: list[dict]) -> str:
    return json.dumps(rates(results), indent=1) + "\n"


def stale(r: dict) -> str | None:
    """Why a result no longer measures the current code (None if it does)."""
    script = f"benchmarks/{r['command'].split()[1].split('/')[-1]}"
    paths = [p for p in r["code"] + [script] if (ROOT / p).exists()]
    last = subprocess.run(["git", "log", "-1", "--format=%H", "--", *paths], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    if not last:
        return None
    ok = subprocess.run(["git", "merge-base", "--is-ancestor", last, r["commit"]],
                        cwd=ROOT, capture_output=True)
    if ok.returncode != 0:
        return (f"measured at {r['commit'][:10]}, but {', '.join(paths)} changed in "
                f"{last[:10]} since: rerun `{r['command']}`")
    return None


def check(results: list[dict]) -> list[str]:
    problems = []
    if not OUT.exists() or OUT.read_text() != render(results):
        problems.append("BENCHMARKS.md differs from what the results render: run "
                        "`python benchmarks/report.py`")
    want = rates_text(results)
    if (RATES.read_text() if RATES.exists() else "{}\n") != want and \
            (RATES.exists() or want != "{}\n"):
        problems.append("retrodb/ops/rates.json differs from the results' rates: run "
                        "`python benchmarks/report.py`")
    for r in results:
        if r["dirty"]:
            problems.append(f"results/{r['benchmark']}.json: measured on a dirty tree; "
                            f"commit, then rerun `{r['command']}`")
        why = stale(r)
        if why:
            problems.append(f"results/{r['benchmark']}.json: {why}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    results = load()
    if args.check:
        problems = check(results)
        for p in problems:
            print(f"benchmarks: {p}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    OUT.write_text(render(results))
    RATES.write_text(rates_text(results))
    print(f"wrote BENCHMARKS.md, retrodb/ops/rates.json ({', '.join(r['benchmark'] for r in results)})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
