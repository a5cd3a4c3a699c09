"""`retrodb serve` as a subprocess, and which worker serves whom (Linux /proc): shared
by the serve tests and benchmarks/bench_serve.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


class Server:
    """`retrodb serve DB --port 0 ...` in a subprocess; its URL from its log, healthy."""

    def __init__(self, db: Path, log: Path, *args: str, timeout: float = 180):
        env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.log = log
        with open(log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "retrodb.cli.main", "serve",
                                          str(db), "--port", "0", *args],
                                         stdout=subprocess.DEVNULL, stderr=f, env=env)
        self.url = self._wait(timeout)

    def _wait(self, timeout: float) -> str:
        import httpx

        end, url = time.time() + timeout, None
        while time.time() < end:
            text = self.log.read_text()
            if url is None and (m := re.search(r" at (http://\S+) \(", text)):
                url = m.group(1)
            if url is not None:
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        return url
                except httpx.HTTPError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"retrodb serve exited {self.proc.returncode}:\n{text}")
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"retrodb serve did not become healthy:\n{self.log.read_text()}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=30).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def workers_of(pid: int) -> list[int]:
    """uvicorn's worker processes: the spawned children of the server process."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids
            if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]


def connections(pid: int, port: int) -> int:
    """Established client connections on `port` that process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for f in rows if int(f[1].split(":")[1], 16) == port and f[3] == "01"
               and f[9] in inodes)
