"""`retrodb generate` and `retrodb eval` with `--server URL`: the same results as with
the index opened in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from index_fixtures import copy_db
from test_serve import TOKEN, Server, served_db  # noqa: F401 (a fixture)

pytest.importorskip("httpx")


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "RETRODB_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def trained(served_db, tmp_path_factory):  # noqa: F811
    """A copy of the served database with a tiny RETRO run (same split)."""
    from retrodb.training.train import TrainConfig, train

    d = tmp_path_factory.mktemp("clients")
    db = copy_db(served_db, d / "db")
    train(db, TrainConfig(run="r", preset="tiny", steps=2, seq_chunks=4, batch_size=2,
                          warmup=1, eval_every=0, checkpoint_every=2, val_fraction=0.3))
    (d / "token").write_text(TOKEN + "\n")
    s = Server(served_db, d / "serve.log", "--token-file", str(d / "token"))
    yield db, s, d / "token"
    s.stop()


def test_generate_through_the_server_is_the_same(trained, tmp_path):
    db, server, token = trained
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Classes provide a means of bundling data and functionality "
                      "together. Creating a new class creates a new type of object, "
                      "allowing new instances of that type to be made.\n")
    args = ["generate", "--db", str(db), "--run", "r", "--prompt-file", str(prompt),
            "--max-tokens", "70", "--json"]
    here = cli(*args)
    there = cli(*args, "--server", server.url, "--token-file", str(token))
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    a, b = json.loads(here.stdout), json.loads(there.stdout)
    assert a["retrieved"] and a == b
    assert a["prompt"] == prompt.read_text()
    # without the token the service refuses, in one line naming the status
    p = cli(*args, "--server", server.url)
    assert p.returncode == 2 and "401" in p.stderr and len(p.stderr.splitlines()) == 1


def test_eval_through_the_server_is_the_same(trained):
    db, server, token = trained
    args = ["eval", "--db", str(db), "--run", "r", "--max-sequences", "6", "--json"]
    here = cli(*args)
    there = cli(*args, "--server", server.url, "--token-file", str(token))
    assert here.returncode == 0 and there.returncode == 0, here.stderr + there.stderr
    a, b = json.loads(here.stdout), json.loads(there.stdout)
    assert b["neighbours"].startswith(server.url)
    for mode in ("retrieval", "no_retrieval", "leakage_filtered"):
        assert a[mode] == b[mode], mode


def test_token_file_without_server_is_refused(trained, tmp_path):
    db, _, token = trained
    p = cli("eval", "--db", str(db), "--run", "r", "--token-file", str(token))
    assert p.returncode == 2 and "--token-file" in p.stderr and "--server" in p.stderr
    p = cli("generate", "--db", str(db), "--run", "r")
    assert p.returncode == 2 and "--prompt-file" in p.stderr


def test_a_stage_writing_the_database_meanwhile(served_db, perl_corpus,  # noqa: F811
                                                tmp_path):
    """Chunk, embed and index a new corpus into the served database while clients
    query it: the stages finish undisturbed (the service holds no lock) and every
    answer stays the loaded generation's, whole and correct; a restarted service sees
    the new chunks."""
    import threading

    import httpx

    db = copy_db(served_db, tmp_path / "db")
    texts = ["How do I define a class?", "reading a file line by line",
             "regular expressions in Perl", "hash of arrays"]
    server = Server(db, tmp_path / "serve.log")
    try:
        def ask() -> list:
            r = httpx.post(server.url + "/query", json={"texts": texts, "k": 3},
                           timeout=60)
            assert r.status_code == 200, r.text
            return [[(h["chunk_id"], h["text"]) for h in hits] for hits in r.json()["results"]]

        want, answers, stop = ask(), [], threading.Event()

        def load():
            while not stop.is_set():
                answers.append(ask())

        t = threading.Thread(target=load)
        t.start()
        try:
            for args in (["chunk", str(perl_corpus), "--db", str(db), "--root",
                          str(perl_corpus)], ["embed", "--db", str(db)],
                         ["index", "--db", str(db)]):
                p = cli(*args)
                assert p.returncode == 0, p.stderr
        finally:
            stop.set()
            t.join()
        assert len(answers) >= 3 and all(a == want for a in answers)
        chunks_before = httpx.get(server.url + "/health", timeout=10).json()["chunks"]
    finally:
        server.stop()
    again = Server(db, tmp_path / "serve2.log")
    try:
        assert httpx.get(again.url + "/health", timeout=10).json()["chunks"] > chunks_before
    finally:
        again.stop()
