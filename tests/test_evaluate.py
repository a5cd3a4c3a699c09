"""Evaluation as in the paper: bits per byte of the true bytes of the tokens evaluated,
leakage measured on the predicted chunk C_{u+1}, and results by leakage bucket."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.training.evaluate import BUCKETS, NONE, evaluate_run, token_groups
from retrodb.training.sequences import Batch
from retrodb.training.train import TrainConfig, train

from dbread import read_docs
from neighbour_fixture import write_neighbours

TINY = TrainConfig(run="x", preset="tiny", steps=2, seq_chunks=4, batch_size=4, lr=3e-3,
                   warmup=1, eval_every=0, eval_sequences=2, checkpoint_every=2,
                   val_fraction=0.4, split_seed=3)


@pytest.fixture(scope="module")
def db(tmp_path_factory, corpus_files) -> Path:
    """The example corpus and a renamed copy of every document, chunked with a trained
    byte-level BPE: a validation document's copy is usually in the training split, so
    its neighbours (the fixture's token-overlap rule) hold the text it predicts."""
    from retrodb.stages.tokenizer import TokenizerConfig, train_tokenizer

    root = tmp_path_factory.mktemp("eval")
    src = root / "src"
    src.mkdir()
    for f in corpus_files:
        shutil.copy(f, src / f.name)
        shutil.copy(f, src / ("copy-" + f.name))
    train_tokenizer([str(src)], str(root / "tok.json"), TokenizerConfig(vocab_size=800,
                                                                       root=str(src)))
    db = root / "db"
    chunk_corpus(db, [str(src)], ChunkConfig(tokenizer=str(root / "tok.json"),
                                             root=str(src), split_size=1 << 20))
    write_neighbours(db, "train", k=2)
    train(db, replace(TINY, run="retro"))
    train(db, replace(TINY, run="base", retrieval=False))
    return db


@pytest.fixture(scope="module")
def results(db):
    return evaluate_run(db, "retro"), evaluate_run(db, "base")


def test_buckets_partition_the_evaluated_tokens(results):
    retro, base = results
    for r in (retro["retrieval"], retro["no_retrieval"], retro["leakage_filtered"],
              base["no_retrieval"]):
        by = r["by_leakage"]
        assert len(by) == BUCKETS + 1 and by[-1]["r"] == "no neighbours"
        assert sum(b["tokens"] for b in by) == r["tokens"]
        assert sum(b["bytes"] for b in by) == pytest.approx(r["bytes"], abs=len(by))
        bits = sum(b["loss"] * b["tokens"] for b in by if b["tokens"]) / math.log(2)
        assert bits / r["bytes"] == pytest.approx(r["bpb"], rel=1e-9)
    # the baseline is bucketed by the same neighbours, so both are scored on the same
    # tokens in every bucket
    assert ([b["tokens"] for b in base["no_retrieval"]["by_leakage"]] ==
            [b["tokens"] for b in retro["retrieval"]["by_leakage"]])
    # copied documents: most tokens with neighbours are in the top bucket
    by = retro["retrieval"]["by_leakage"]
    assert by[BUCKETS - 1]["tokens"] > 0.5 * sum(b["tokens"] for b in by[:BUCKETS])


def test_bits_per_byte_counts_the_true_bytes_of_the_tokens_evaluated(db, results):
    """All windows evaluated: the bytes are the validation documents' bytes less the
    first token of every window (never predicted)."""
    from retrodb.core.db import Database
    from retrodb.stores.split import load_split
    from retrodb.training.sequences import Sequences

    retro, _ = results
    assert retro["bytes"] == "exact"
    d = Database(db)
    split = load_split(d)
    docs = read_docs(db).to_pydict()
    val = split.is_validation(np.asarray(docs["doc_id"]))
    seqs = Sequences(d, split, "val", TINY.seq_chunks)
    tok = d.tokenizer().load()
    first = seqs.store.tokens(seqs.windows[:, 0])[:, 0]
    first_text = [tok.decode([int(t)]) for t in first]
    assert not any("\ufffd" in t for t in first_text)
    want = sum(np.asarray(docs["n_bytes"])[val]) - sum(len(t.encode()) for t in first_text)
    assert retro["retrieval"]["bytes"] == want == retro["no_retrieval"]["bytes"]


def test_leakage_is_measured_on_the_predicted_chunk(db):
    """A validation chunk whose neighbour is its copy in a training document: that
    neighbour's continuation is the next chunk, so r = 1 wherever the next chunk is
    whole; against the query chunk itself the old measure would have said the same for
    every chunk, including the last one (which predicts nothing)."""
    from retrodb.core.db import Database
    from retrodb.stores.split import load_split
    from retrodb.training.sequences import Sequences, neighbour_table

    d = Database(db)
    split = load_split(d)
    seqs = Sequences(d, split, "val", TINY.seq_chunks, table=neighbour_table(d, "train"))
    b = seqs.batch(np.arange(len(seqs)), leakage=True)
    store = seqs.store
    nxt = store.continuation_ids(b.chunk_ids)
    whole_next = (nxt >= 0) & (store.rows(nxt)["length"] == store.chunk_size)
    copy_first = (b.neighbour_ids[..., 0] >= 0) & (store.tokens(b.neighbour_ids[..., 0]) ==
                                                    store.tokens(b.chunk_ids)).all(-1)
    sel = copy_first & whole_next
    assert sel.sum() > 10 and (b.leakage[..., 0][sel] == 1.0).all()
    last = copy_first & (nxt < 0)  # a document's last chunk: nothing to predict
    assert (b.leakage[..., 0][last] == 0).all()
    # validation never retrieves validation text, whatever the neighbour set holds
    nd = store.doc_ids(b.neighbour_ids)
    assert not (split.is_validation(nd) & (b.neighbour_ids >= 0)).any()


def test_each_token_takes_the_bucket_of_the_neighbours_that_predict_it():
    m, S = 4, 3
    leak = np.array([[[0.0, 0.2], [0.9, np.nan], [np.nan, np.nan]]])  # (1, S, k)
    b = Batch(np.zeros((1, m * S), np.int64), np.zeros((1, m * S), np.int64),
              np.arange(S)[None], leakage=leak)
    g = token_groups(b, m)[0]
    # positions 0-2 predict tokens of slot 0 (no neighbours before them); 3-6 predict
    # slot 1 with slot 0's neighbours (r = 0.2 → bucket 1); 7-10 predict slot 2 with
    # slot 1's (0.9 → bucket 7); 11 predicts past the window
    assert g.tolist() == [NONE] * 3 + [1] * 4 + [7] * 4 + [NONE]
    b.leakage = np.array([[[0.0, 0.0], [np.nan, np.nan], [1.0, 1.0]]])
    assert token_groups(b, m)[0].tolist() == [NONE] * 3 + [0] * 4 + [NONE] * 5


def test_filtered_mode_drops_only_leaky_neighbours(db, results):
    retro, _ = results
    assert retro["overlap_alpha"] == 0.2
    # copies (r = 1) are dropped at α = 0.2: the filtered loss differs
    assert retro["leakage_filtered"]["loss"] != retro["retrieval"]["loss"]
    # at α = 1 nothing is dropped: the filtered mode is the retrieval mode, exactly
    every = evaluate_run(db, "retro", overlap_alpha=1.0, max_sequences=4)
    assert every["leakage_filtered"]["loss"] == every["retrieval"]["loss"]


def test_eval_json_and_the_leakage_plot(db, tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from typer.testing import CliRunner

    from retrodb.cli.main import app

    r = CliRunner().invoke(app, ["eval", "--db", str(db), "--run", "retro", "--run",
                                 "base", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [x["run"] for x in got] == ["retro", "base"]
    out = tmp_path / "leakage.png"
    r = CliRunner().invoke(app, ["plot", "--leakage", "retro", "base", "--db", str(db),
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
