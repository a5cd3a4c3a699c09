"""The defects found by trying every command as a new user would: each test reproduces
one and shows it fixed (bad input with a single error line is in test_bad_input.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dbread import shard_bytes
from index_fixtures import copy_db

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
ENV = {k: v for k, v in os.environ.items() if k not in ("RETRODB_DEBUG", "RETRODB_FAULT")}


ROOT = Path(__file__).resolve().parents[1]


def cli(*args, **kw) -> subprocess.CompletedProcess:
    """`retrodb ARGS` with stdout and stderr to pipes (not a terminal), as in a log,
    from the repository root (where the test databases' inputs are recorded from)."""
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600, cwd=ROOT,
                          **kw)


def test_two_runs_creating_one_database_at_once(tmp_path):
    """Two `chunk` runs create the same new database with other chunk sizes at the same
    time: one creates it, the other is refused with one line; the settings recorded are
    the ones the shards were made with."""
    for attempt in range(3):
        db = tmp_path / f"db{attempt}"
        args = [sys.executable, "-m", "retrodb.cli.main", "chunk", str(CORPUS), "--db",
                str(db)]
        procs = [subprocess.Popen(args + extra, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=ENV)
                 for extra in (["--chunk-size", "32"], [])]
        outs = [p.communicate(timeout=300) for p in procs]
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 2], outs
        err = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "another retrodb process" in lines[0] or "--chunk-size" in lines[0]
        size = json.loads((db / "retrodb.json").read_text())["chunk_size"]
        width = pq.read_schema(db / "chunks" / "00000.parquet").field("tokens").type.list_size
        assert size == width


def test_a_lost_chunk_shard_is_named_then_rebuilt(tmp_path, indexed_db):
    db = copy_db(indexed_db, tmp_path / "db")
    before = shard_bytes(db)
    text = pq.read_table(db / "chunks" / "00000.parquet").column("text")[3].as_py()
    (db / "chunks" / "00000.parquet").unlink()
    q = cli("query", db, text, "-k", "1")
    assert q.returncode == 2 and "chunks/00000.parquet: missing" in q.stderr
    v = cli("verify", db, "--sample", "0")
    assert v.returncode == 1 and "chunks/00000.parquet: missing" in v.stdout
    r = cli("chunk", CORPUS, "--db", db)
    assert r.returncode == 0, r.stderr
    assert "1 rebuilt" in r.stderr and shard_bytes(db) == before
    assert cli("query", db, text, "-k", "1").returncode == 0


def test_progress_lines_when_not_a_terminal(capsys):
    """A plain line per step at least every `every` seconds, even while nothing moves,
    and one when a step ends: step, amount, rate, ETA and the step's figures."""
    from retrodb.core.progress import Progress
    from retrodb.cli.progress import Reporter

    capsys.readouterr()
    with Reporter(every=0.3, tty=False) as r:
        r.update(Progress("train", 3, 40, "steps", {"loss": 7.25, "lr": 1e-4}))
        time.sleep(1.2)  # a long step: nothing reported, lines keep coming
        r.update(Progress("train", 13, 40, "steps", {"loss": 7.0}))
        time.sleep(0.8)
        r.update(Progress("train", 40, 40, "steps", {"loss": 6.5}))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 4, lines
    assert lines[0].startswith("train: 3 of 40 steps (8%)") and "loss 7.25" in lines[0]
    # no rate from the first instant (3 steps already done: not 3 per microsecond)
    assert "/s" not in lines[0] and "ETA" not in lines[0]
    mid = [x for x in lines if x.startswith("train: 13 of 40")]
    assert mid, lines  # 10 steps in ~1.2 s: ~8 steps/s, ETA ~3 s
    rate = float(mid[-1].split(" · ")[1].split()[0])
    assert 2 < rate < 10 and "ETA" in mid[-1], mid[-1]
    assert lines[-1].startswith("train: 40 of 40 steps (100%)") and "loss 6.5" in lines[-1]
    with Reporter(every=0.3, tty=False) as r:  # a slow step: its rate is not "0 steps/s"
        r.update(Progress("train", 0, 10, "steps"))
        time.sleep(0.6)
        r.update(Progress("train", 1, 10, "steps"))
        time.sleep(0.4)
    slow = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train: 1 of")]
    assert slow and " 0 steps/s" not in slow[-1] and "steps/s" in slow[-1], slow
    assert all("…" not in x for x in lines)


def test_training_in_a_log_says_what_it_does(tmp_path, corpus):
    """A short tiny run with output to a file: a warning about a warm-up longer than the
    run, progress lines, and the final line whole."""
    from neighbour_fixture import write_neighbours
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus

    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=80_000))
    write_neighbours(db, "train", k=2)
    r = cli("train", "--db", db, "--run", "tiny", "--preset", "tiny", "--steps", "12",
            "--batch-size", "2", "--seq-chunks", "2", "--val-fraction", "0.2",
            "--eval-sequences", "2")
    assert r.returncode == 0, r.stderr
    err = r.stderr
    assert "--warmup 100 is longer than --steps 12" in err
    assert "train: 12 of 12 steps (100%)" in err and "loss" in err
    assert err.strip().splitlines()[-1].startswith("tiny: step 12, loss ")
    assert "…" not in err


def test_output_in_files_is_exact_and_whole(tmp_path, indexed_db):
    db = copy_db(indexed_db, tmp_path / "db")
    t = pq.read_table(db / "chunks" / "00000.parquet")
    text = t.column("text")[5].as_py()
    q = cli("query", db, text, "-k", "1")
    assert q.returncode == 0
    assert text + "\n" in q.stdout  # exactly as stored: no wrapping at column 80
    assert max(len(x) for x in text.splitlines()) < 80 or "\n" not in text or True
    # a long path: a verify report in a file shows it whole, with the verdict
    long = tmp_path / ("a-rather-long-directory-name-" * 3) / "db"
    shutil.copytree(db, long)
    (long / "embeddings" / "00001.npy").write_bytes(b"x")
    v = cli("verify", long, "--sample", "0")
    assert v.returncode == 1
    assert str(long / "embeddings" / "00001.npy") in v.stdout and "…" not in v.stdout
    assert v.stdout.strip().splitlines()[-1].endswith("PROBLEMS FOUND")


def test_failed_commands_leave_no_settings_behind(tmp_path, corpus):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    db = tmp_path / "db"
    r = cli("chunk", empty, "--db", db)
    assert r.returncode == 2 and "no text to chunk" in r.stderr
    assert not (db / "retrodb.json").exists()
    # a retry with other settings is not refused because of the failed first run
    r = cli("chunk", corpus, "--db", db, "--chunk-size", "32")
    assert r.returncode == 0, r.stderr
    # a refused `train` writes no split
    r = cli("train", "--db", db, "--run", "x", "--preset", "huge")
    assert r.returncode == 2 and "--preset huge" in r.stderr
    assert not (db / "split.json").exists() and not (db / "models").exists()


@pytest.mark.parametrize("command,shown", [
    (["chunk"], ["[default: the database's, else 64", "retrodb[ray]", "[default: 256M]"]),
    (["embed"], ["retrodb[ray]", "[default: 64 on CPU, 1024 on GPU]"]),
    (["eval"], ["--neighbours", "[default: the run's]", "[default: 0.2]"]),
    (["plot"], ["--out", "[default: DB/models/RUN/curves.png"]),
    (["index"], ["[default: 8G]", "retrodb[ray]"]),
])
def test_help_shows_defaults_and_extras(command, shown):
    r = cli(*command, "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for s in shown:
        assert s in text, (s, r.stdout)


def test_keys_of_the_wrong_dimension_are_recomputed(tmp_path, indexed_db):
    """A key shard of another dimension whose manifest entry matches it: the index
    refuses it with what to do, and `embed` recomputes it (it does not say "nothing to
    embed")."""
    from retrodb.core.manifest import Manifest, file_record

    db = copy_db(indexed_db, tmp_path / "db")
    p = db / "embeddings" / "00001.npy"
    good = p.read_bytes()
    rows = np.load(p).shape[0]
    np.save(p, np.zeros((rows, 16), np.float16))
    m = Manifest(db / "embeddings", "embeddings")
    m.record({**m.entry(1), **file_record(p, p.name)})
    r = cli("index", "--db", db)
    assert r.returncode == 2 and "rerun `retrodb embed --db" in r.stderr
    r = cli("embed", "--db", db)
    assert r.returncode == 0 and "1 recomputed" in r.stderr, r.stderr
    assert p.read_bytes() == good


def test_messages_say_what_is_true(tmp_path, corpus_files):
    """The recall table counts the queries it used; plan cites files that exist; embed
    explains its re-tokenised chunks."""
    from retrodb.stages.chunk import ChunkConfig, chunk_corpus

    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus_files[4])], ChunkConfig())
    r = cli("embed", "--db", db)
    assert "re-tokenised from their text (cut inside a word" in r.stderr
    n = json.loads(cli("info", db, "--json").stdout)["stages"]["chunks"]["rows"]
    r = cli("index", "--db", db)
    assert r.returncode == 0, r.stderr
    assert f"recall vs exact search ({n} queries" in " ".join(r.stderr.split())
    p = cli("plan", "--tokens", "2e12")
    assert p.returncode == 0 and "DESIGN.md" not in p.stdout
