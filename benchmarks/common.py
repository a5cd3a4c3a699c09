"""What every benchmark shares: machine-written results, interleaved rounds, timing.

A benchmark writes `benchmarks/results/<name>.json` and nothing else; BENCHMARKS.md is
rendered from those files by `report.py`, never typed. A result holds every raw figure
(each round of each contender, not only the median), the machine (CPU model, cores, load
average before and after), the git commit and whether the tree was dirty, the exact
command, the library versions, and the code paths it measures (so `report.py --check`
can tell a stale result from a current one).

Comparisons are fair by construction here: `interleave` runs the contenders in turn,
round after round (after a warm-up of each), so that machine load falls on both sides;
`Measure` keeps the rounds and reports the median ratio with its spread.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("retrodb", "numpy", "pyarrow", "tokenizers", "torch", "faiss-cpu",
                 "transformers", "sentence-transformers", "ray", "autofaiss"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class Side:
    """One contender: what it is and what each round measured."""

    label: str
    rounds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds)


@dataclass
class Measure:
    """A comparison: ours against a baseline measured in the same run."""

    name: str  # what is compared, e.g. "tokens/s, 1 worker vs raw encode_batch"
    unit: str  # "tokens/s", "MB", ...
    ours: Side
    baseline: Side
    higher_is_better: bool = True
    note: str = ""

    def ratio(self) -> dict:
        """Median of the per-round ratios (rounds are paired), and their range."""
        pairs = list(zip(self.ours.rounds, self.baseline.rounds))
        rs = [a / b for a, b in pairs if b] or [float("nan")]
        return {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio()}


class Result:
    """One benchmark run; `save()` writes results/<name>.json."""

    def __init__(self, name: str, code: list[str], title: str = ""):
        self.name = name
        self.title = title or name
        self.code = code  # paths (from the repository root) of what is measured
        self.measures: list[Measure] = []
        self.facts: dict = {}  # other figures the notes quote
        self.notes: list[str] = []  # prose; every number in it is a {fact} or a measure
        self.tables: list[dict] = []  # {"title", "columns", "rows"}: figures as measured
        self.started = time.time()
        self.load_before = os.getloadavg()
        self.commit = git("rev-parse", "HEAD")
        # results are outputs: a result written earlier in the same pass is not a change
        self.dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                              ":(exclude)benchmarks/results"))

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        self.tables.append({"title": title, "columns": columns, "rows": rows})

    def add(self, m: Measure) -> Measure:
        self.measures.append(m)
        return m

    def save(self) -> Path:
        data = {
            "benchmark": self.name, "title": self.title,
            "command": "python " + " ".join([Path(sys.argv[0]).relative_to(ROOT).as_posix()
                                             if Path(sys.argv[0]).is_absolute()
                                             else sys.argv[0], *sys.argv[1:]]),
            "commit": self.commit, "dirty": self.dirty, "code": self.code,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                        "arch": platform.machine(), "load_before": self.load_before,
                        "load_after": os.getloadavg()},
            "versions": versions(),
            "measures": [m.to_dict() for m in self.measures],
            "facts": self.facts, "notes": self.notes, "tables": self.tables,
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(data, indent=1, default=float) + "\n")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
        return path


def interleave(contenders: dict[str, Callable[[], float]], rounds: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Run each contender `warmup` times (discarded), then `rounds` rounds in turn:
    A B C, A B C, ... Each call returns its figure for that round."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, fn in contenders.items():
            out[k].append(fn())
    return out


def run_json(code: str, *args: str, env: dict | None = None) -> dict:
    """Run Python `code` in a fresh process (its own peak memory); its last stdout line
    is JSON."""
    e = dict(os.environ, **(env or {}))
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                       text=True, env=e)
    if p.returncode != 0:
        raise SystemExit(f"benchmark subprocess failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])
