"""The one progress reporter of every command (stderr).

On a terminal: a rich bar per step (what is done of how much, rate, elapsed, ETA and
the step's figures, e.g. the loss). Otherwise (a pipe, a file, CI): a plain line per
active step at least every `every` seconds, also while nothing moves (a long k-means),
and one when a step finishes, so a log shows the run is alive and how far it is.
"""

from __future__ import annotations

import sys
import threading
import time

from .common import err, human_bytes, human_count


def _amount(x: float, unit: str) -> str:
    return human_bytes(x) if unit == "bytes" else f"{human_count(x)} {unit}".rstrip()


def _hms(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _info(info: dict, workers: dict | None = None) -> str:
    parts = []
    for k, v in info.items():
        if isinstance(v, float):
            v = f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e5 else f"{v:.4g}"
        parts.append(f"{k} {v}")
    if workers:
        parts.append("per worker " + ", ".join(f"{w} {int(n):,}" for w, n in workers.items()))
    return " · ".join(parts)


class _Step:
    def __init__(self, p):
        self.t0 = time.monotonic()
        self.base = p.done  # done before this process saw the step (a resumed run)
        self.p = p
        self.printed = 0.0
        self.finished = False

    def rate(self, elapsed: float) -> float:
        """Units per second since the step was first seen; 0 (unknown) until some work
        was measured over at least RATE_AFTER seconds."""
        moved = self.p.done - self.base
        return moved / elapsed if moved > 0 and elapsed >= RATE_AFTER else 0.0


RATE_AFTER = 0.5  # s: a rate over a shorter span is noise (3 steps in 10 µs: 300k/s)


class Reporter:
    """`update(progress)` from any thread; a context manager."""

    def __init__(self, every: float = 10.0, tty: bool | None = None):
        self.every = every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.steps: dict[str, _Step] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.rich = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if not self.tty:
            self.thread = threading.Thread(target=self._heartbeat, daemon=True,
                                           name="retrodb-progress")
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if not self.tty:
            self.thread.join(timeout=2)
            with self.lock:
                for name, st in self.steps.items():
                    if not st.finished and exc[0] is None:
                        self._line(name, st)
        elif self.rich is not None:
            self.rich.__exit__(*exc)

    # updates ------------------------------------------------------------------------
    def update(self, p) -> None:
        with self.lock:
            st = self.steps.get(p.step)
            first = st is None
            if first:
                st = self.steps[p.step] = _Step(p)
            st.p = p
            done = p.total is not None and p.done >= p.total
            if self.tty:
                self._rich_update(p.step, st)
            elif done and not st.finished:
                st.finished = True
                self._line(p.step, st)
            elif first and p.done:  # a step under way: say so at once
                self._line(p.step, st)

    def _heartbeat(self) -> None:
        while not self.stop.wait(min(1.0, self.every)):
            now = time.monotonic()
            with self.lock:
                for name, st in self.steps.items():
                    if not st.finished and now - max(st.printed, st.t0) >= self.every:
                        self._line(name, st)

    # plain lines ----------------------------------------------------------------------
    def _line(self, name: str, st: _Step) -> None:
        p = st.p
        el = time.monotonic() - st.t0
        rate = st.rate(el)
        if p.total:
            done = human_count(p.done) if p.unit != "bytes" else human_bytes(p.done)
            parts = [f"{name}: {done} of {_amount(p.total, p.unit)} "
                     f"({100 * p.done / p.total:.0f}%)"]
        else:
            parts = [f"{name}: {_amount(p.done, p.unit)}"]
        if rate:  # below 10/s with 2 significant digits: 0.38 steps/s, not 0
            parts.append(f"{rate:.2g} {p.unit}/s" if rate < 10 and p.unit != "bytes"
                         else f"{_amount(rate, p.unit)}/s")
        parts.append(f"{_hms(el)} elapsed")
        if p.total and rate and p.done < p.total:
            parts.append(f"ETA {_hms((p.total - p.done) / rate)}")
        if p.info or p.workers:
            parts.append(_info(p.info, p.workers))
        err.print(" · ".join(parts), markup=False)
        st.printed = time.monotonic()

    # a terminal -----------------------------------------------------------------------
    def _rich_update(self, name: str, st: _Step) -> None:
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        if self.rich is None:
            self.rich = Progress(TextColumn("{task.description:<12}"),
                                 BarColumn(bar_width=24), TextColumn("{task.fields[amount]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=err, transient=False)
            self.rich.__enter__()
        p = st.p
        el = max(time.monotonic() - st.t0, 1e-9)
        amount = _amount(p.done, p.unit)
        if p.total:
            amount += f" / {_amount(p.total, p.unit)}"
        amount += f" · {_amount(p.done / el, p.unit)}/s"
        if name not in self.tasks:
            self.tasks[name] = self.rich.add_task(name, total=p.total or None,
                                                  amount=amount, info="")
        self.rich.update(self.tasks[name], completed=p.done, total=p.total or None,
                         amount=amount, info=_info(p.info, p.workers))
