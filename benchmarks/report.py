"""Assemble BENCHMARKS.md from the per-stage results in benchmarks/results/*.md.

Each benchmark script writes its own section (numbers, machine, command); this joins
them in pipeline order under one header.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["chunk", "embed", "index", "index-autofaiss", "neighbours", "train"]

HEADER = """# Benchmarks

Every row compares a retrodb stage with its baseline **measured in the same run** on the
same data; absolute rates on a shared machine are noise, the ratios are the result.
Regenerate with `make bench` (each script also runs alone: see its command). How the
embed and index numbers came about, with the measurements behind each design choice:
[BENCHMARKS-embed.md](BENCHMARKS-embed.md), [BENCHMARKS-index.md](BENCHMARKS-index.md).
"""


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    parts = {p.stem: p.read_text().strip() for p in sorted(results.glob("*.md"))}
    names = [n for n in ORDER if n in parts] + sorted(set(parts) - set(ORDER))
    text = HEADER + "".join(f"\n{parts[n]}\n" for n in names)
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(f"wrote BENCHMARKS.md ({', '.join(names)})")


if __name__ == "__main__":
    main()
