"""Assemble BENCHMARKS.md from the per-stage results in benchmarks/results/*.md.

Each benchmark script writes its own section (numbers, machine, command); this joins
them in pipeline order under one header.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["chunk", "embed", "index", "index-autofaiss", "neighbours", "train", "scale"]

HEADER = """# Benchmarks

Every row compares a retrodb stage with its baseline **measured in the same run** on the
same data; absolute rates on a shared machine are noise, the ratios are the result.
Regenerate with `make bench` (each script also runs alone: see its command). How the
embed and index numbers came about, with the measurements behind each design choice:
[BENCHMARKS-embed.md](BENCHMARKS-embed.md), [BENCHMARKS-index.md](BENCHMARKS-index.md).
"""


def summary(names: list[str], parts: dict[str, str]) -> str:
    """One table of every section's comparison rows, with its machine and command."""
    import re

    rows = ["| stage | measure | ours | baseline (same run) | ratio | machine | command |",
            "|---|---|---|---|---|---|---|"]
    for n in names:
        text = parts[n]
        machine = re.search(r"Machine: (.*?)(?:; |\. Command)", text)
        command = re.search(r"Command: (`[^`]*`)", text)
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 4 or not line.startswith("|") or cells[0] in ("measure",) \
                    or set(cells[0]) <= set("-") or not cells[3]:
                continue
            rows.append(f"| {n} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
                        f"{machine.group(1) if machine else ''} | "
                        f"{command.group(1) if command else ''} |")
    return "\n## All comparisons\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    results = ROOT / "benchmarks" / "results"
    parts = {p.stem: p.read_text().strip() for p in sorted(results.glob("*.md"))}
    names = [n for n in ORDER if n in parts] + sorted(set(parts) - set(ORDER))
    text = HEADER + summary(names, parts) + "".join(f"\n{parts[n]}\n" for n in names)
    (ROOT / "BENCHMARKS.md").write_text(text)
    print(f"wrote BENCHMARKS.md ({', '.join(names)})")


if __name__ == "__main__":
    main()
