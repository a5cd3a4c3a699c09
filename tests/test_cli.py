"""The command line: one-line errors, exit codes, --json, info."""

from __future__ import annotations

import json
import os
import subprocess
import sys

BIN = [sys.executable, "-m", "retrodb.cli.main"]


def run(*args, env=None):
    e = dict(os.environ, **(env or {}))
    e.pop("RETRODB_DEBUG", None) if not env or "RETRODB_DEBUG" not in env else None
    return subprocess.run([*BIN, *args], capture_output=True, text=True, env=e, timeout=120)


def test_chunk_and_info_json(tmp_path, corpus):
    db = tmp_path / "db"
    p = run("chunk", str(corpus), "--db", str(db), "--split-size", "120K", "--json")
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    assert result["docs"] == 7 and result["shards"] == ["00000.parquet", "00001.parquet"]
    p = run("info", str(db), "--json")
    info = json.loads(p.stdout)
    assert info["stages"]["chunks"]["rows"] == result["chunks"]
    assert info["stages"]["chunks"]["tokens"] == result["tokens"]
    assert info["stages"]["docs"]["rows"] == 7
    p = run("info", str(db))
    assert p.returncode == 0 and "chunks" in p.stdout


def test_user_error_is_one_line_without_traceback(tmp_path):
    p = run("chunk", str(tmp_path / "missing"), "--db", str(tmp_path / "db"))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    p = run("chunk", str(tmp_path / "missing"), "--db", str(tmp_path / "db"),
            env={"RETRODB_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_info_on_a_non_database(tmp_path):
    p = run("info", str(tmp_path))
    assert p.returncode == 2 and "not a retrodb database" in p.stderr


def test_help_has_examples():
    for cmd in ("chunk", "info"):
        p = run(cmd, "--help")
        assert p.returncode == 0 and "Example:" in p.stdout
