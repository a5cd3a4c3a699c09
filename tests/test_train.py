"""The trainer: learning, exact resume after a crash, pickle-free checkpoints."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.training.train import TrainConfig, batch_rows, train

from neighbour_fixture import write_neighbours

TINY = TrainConfig(run="x", preset="tiny", steps=6, seq_chunks=4, batch_size=4, lr=3e-3,
                   warmup=2, eval_every=3, eval_sequences=4, checkpoint_every=2,
                   val_fraction=0.2)


@pytest.fixture(scope="module")
def db(tmp_path_factory, corpus) -> Path:
    """The example corpus (874 chunks, 7 documents) with a token-overlap neighbour set."""
    db = tmp_path_factory.mktemp("train") / "db"
    chunk_corpus(db, [str(corpus)], ChunkConfig(split_size=40_000))
    write_neighbours(db, "train", k=2)
    return db


def curve(db: Path, run: str) -> list[dict]:
    lines = (db / "models" / run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_loss_decreases_on_tiny(db):
    cfg = replace(TINY, run="learn", steps=25, eval_every=0, checkpoint_every=25)
    train(db, cfg)
    losses = [m["loss"] for m in curve(db, "learn")]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < losses[0] - 1.0, losses


class Crash(Exception):
    pass


def test_resume_after_crash_gives_the_uninterrupted_curve(db):
    train(db, replace(TINY, run="whole"))

    def crash_at_5(p):
        if p.done == 5:  # checkpoint at 4, step 5 is logged, then the process "dies"
            raise Crash

    with pytest.raises(Crash):
        train(db, replace(TINY, run="crashed"), on_progress=crash_at_5)
    assert len(curve(db, "crashed")) == 5
    train(db, replace(TINY, run="crashed"), resume=True)
    whole, resumed = curve(db, "whole"), curve(db, "crashed")
    assert [m["step"] for m in resumed] == list(range(1, 7))
    for a, b in zip(whole, resumed):
        a.pop("tokens_per_s"), b.pop("tokens_per_s")
        assert a == b  # loss, lr, grad norm, validation: bit for bit
    w = db / "models/whole/checkpoints/step-000006/model.safetensors"
    r = db / "models/crashed/checkpoints/step-000006/model.safetensors"
    assert w.read_bytes() == r.read_bytes()


def test_checkpoints_are_safetensors_and_json_only(db, monkeypatch):
    from safetensors.torch import load_file

    train(db, replace(TINY, run="nopickle", steps=2))
    ckpt = db / "models/nopickle/checkpoints/step-000002"
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json", ".safetensors",
                                                        ".safetensors", ".safetensors"]
    assert "embed.weight" in load_file(str(ckpt / "model.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["samples_seen"] == 2 * TINY.batch_size

    def no_pickle(*a, **k):
        raise AssertionError("torch.load / pickle used")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    train(db, replace(TINY, run="nopickle", steps=3), resume=True)
    assert curve(db, "nopickle")[-1]["step"] == 3


def test_user_errors_name_the_option(db):
    train(db, replace(TINY, run="errs", steps=1))
    with pytest.raises(RetrodbError, match="--resume"):
        train(db, replace(TINY, run="errs", steps=2))
    with pytest.raises(RetrodbError, match="--preset"):
        train(db, replace(TINY, run="errs", preset="small", steps=2), resume=True)
    with pytest.raises(RetrodbError, match="no checkpoint"):
        train(db, replace(TINY, run="fresh"), resume=True)
    with pytest.raises(RetrodbError, match="--neighbours"):
        train(db, replace(TINY, run="nonb", neighbours="nope"))
    with pytest.raises(RetrodbError, match="--val-fraction"):
        train(db, replace(TINY, run="split", val_fraction=0.5))
    if not torch.cuda.is_available():
        with pytest.raises(RetrodbError, match="--device cuda"):
            train(db, replace(TINY, run="gpu", device="cuda"))


def test_data_order_depends_on_step_only():
    a = np.concatenate([batch_rows(10, 0, s, 4) for s in range(1, 6)])
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    assert np.array_equal(batch_rows(10, 0, 4, 4), a[12:16])


def test_sequences_mask_padding_and_filter_neighbours(db):
    from retrodb.stores.neighbour_table import NeighbourTable
    from retrodb.training.sequences import Sequences
    from retrodb.stores.split import load_split

    split = load_split(db)
    train_seqs = Sequences(db, split, "train", 4, table=NeighbourTable(db))
    val_seqs = Sequences(db, split, "val", 4, table=NeighbourTable(db))
    assert val_seqs.n_docs >= 1 and train_seqs.n_docs >= 1
    b = train_seqs.batch(np.arange(len(train_seqs)))
    real = (b.chunk_ids >= 0).sum()
    lengths = train_seqs.store.rows(b.chunk_ids)["length"]
    # every real token but the first of each window is a target; padding never is
    assert (b.targets != -100).sum() == lengths.sum() - len(b.tokens)
    assert b.neighbours.shape == (len(b.tokens), 4, 2, 128) and real > 0
    nb_docs = train_seqs.store.doc_ids(b.neighbour_ids)
    q_docs = train_seqs.store.doc_ids(b.chunk_ids)[..., None]
    assert not ((nb_docs == q_docs) & (b.neighbour_ids >= 0)).any()
    assert not split.is_validation(nb_docs).any()  # no validation text in training
    assert not b.neighbour_mask[b.neighbour_ids < 0].any()


def test_eval_reports_bpb_with_without_and_filtered_retrieval(db):
    import math

    from retrodb.training.evaluate import evaluate_run

    train(db, replace(TINY, run="ev", steps=4))
    r = evaluate_run(db, "ev", max_sequences=6)
    assert r["step"] == 4 and r["validation_docs"] >= 1
    for key in ("retrieval", "no_retrieval", "leakage_filtered"):
        e = r[key]
        assert e["sequences"] == 6 and e["tokens"] > 0 and math.isfinite(e["bpb"])
    # a BERT WordPiece token of English/Python text covers ~3.5 bytes
    ratio = r["retrieval"]["bpb"] / (r["retrieval"]["loss"] / math.log(2))
    assert 0.2 < ratio < 0.4
    assert r["retrieval"]["loss"] != r["no_retrieval"]["loss"]  # neighbours are used
    train(db, replace(TINY, run="ev-base", steps=2, retrieval=False))
    base = evaluate_run(db, "ev-base", max_sequences=2)
    assert set(base) >= {"no_retrieval"} and "retrieval" not in base


def initial_weights(db, cfg) -> dict:
    """The weights a run of `cfg` starts from (the trainer seeds torch, then builds)."""
    from retrodb.core.db import Database
    from retrodb.training.model import Retro, preset_config

    dbc = Database(db).config()
    torch.manual_seed(cfg.seed)
    m = Retro(preset_config(cfg.preset, dbc["tokenizer"]["vocab_size"], dbc["chunk_size"],
                            cfg.retrieval))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_retrieval_weights_learn(db):
    """Training a RETRO run moves every tensor of CCA and the encoder: gradients reach
    them through the neighbours."""
    from safetensors.torch import load_file

    train(db, replace(TINY, run="learns", steps=3, eval_every=0, checkpoint_every=3))
    got = load_file(str(db / "models/learns/checkpoints/step-000003/model.safetensors"))
    init = initial_weights(db, TINY)
    new = [k for k in got if k.startswith("encoder.") or ".cca." in k]
    assert new and all(not torch.equal(got[k], init[k]) for k in new), \
        [k for k in new if torch.equal(got[k], init[k])]


def test_retrofit_trains_only_cca_and_encoder(db):
    from safetensors.torch import load_file

    train(db, replace(TINY, run="rf-base", steps=2, retrieval=False))
    train(db, replace(TINY, run="rf", steps=2, retrofit="rf-base"))
    base = load_file(str(db / "models/rf-base/checkpoints/step-000002/model.safetensors"))
    rf = load_file(str(db / "models/rf/checkpoints/step-000002/model.safetensors"))
    for k, v in base.items():
        assert torch.equal(rf[k], v), f"{k} of the frozen decoder changed"
    # ... while every tensor of CCA and the encoder moved from its initial value
    init = initial_weights(db, TINY)
    new = [k for k in rf if k.startswith("encoder.") or ".cca." in k]
    assert new and all(not torch.equal(rf[k], init[k]) for k in new), \
        [k for k in new if torch.equal(rf[k], init[k])]
    with pytest.raises(RetrodbError, match="--retrofit"):
        train(db, replace(TINY, run="rf2", steps=1, retrofit="rf"))


def test_cli_train_and_eval(db):
    from typer.testing import CliRunner

    from retrodb.cli.main import app

    r = CliRunner().invoke(app, ["train", "--db", str(db), "--run", "cli", "--preset",
                                 "tiny", "--steps", "2", "--seq-chunks", "4",
                                 "--batch-size", "2", "--val-fraction", "0.2",
                                 "--eval-sequences", "2"])
    assert r.exit_code == 0, r.output
    assert (db / "models/cli/metrics.jsonl").exists()
    r = CliRunner().invoke(app, ["eval", "--db", str(db), "--run", "cli", "--json",
                                 "--max-sequences", "2"])
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] == 2
    r = CliRunner().invoke(app, ["train", "--db", str(db), "--run", "cli2", "--preset",
                                 "huge", "--val-fraction", "0.2"])
    assert r.exit_code == 2 and "--preset huge" in r.output


def test_plot_writes_a_png(db):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from retrodb.cli.main import app

    train(db, replace(TINY, run="p1", steps=3, eval_every=1))
    train(db, replace(TINY, run="p2", steps=3, retrieval=False))
    out = db.parent / "curves.png"
    r = CliRunner().invoke(app, ["plot", "p1", "p2", "--db", str(db), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, ["plot", "nope", "--db", str(db)])
    assert r.exit_code == 2 and "--run nope" in r.output


def test_retrieval_weights_have_their_own_schedule(db):
    from retrodb.training.train import lr_at, prepare

    cfg = replace(TINY, run="sched", steps=10, lr=1e-3, warmup=4, retrieval_lr=5e-3,
                  retrieval_warmup=1)
    assert lr_at(cfg, 1) == pytest.approx(2.5e-4) and lr_at(cfg, 1, True) == 5e-3
    assert lr_at(cfg, 10, True) == pytest.approx(5e-4)  # cosine to 10% of its own peak
    s = prepare(db, cfg)
    from retrodb.training.model import is_retrieval

    retrieval = {id(p) for n, p in s.model.named_parameters() if is_retrieval(n)}
    for g in s.opt.param_groups:
        assert all((id(p) in retrieval) == g["retrieval"] for p in g["params"])
    assert {g["retrieval"] for g in s.opt.param_groups} == {True, False}
    with pytest.raises(RetrodbError, match="--retrieval-lr"):
        replace(cfg, retrieval_lr=0.0).validate()


def test_retrofit_from_another_decoder_shape_is_refused(db):
    train(db, replace(TINY, run="rfs-base", steps=1, retrieval=False))
    with pytest.raises(RetrodbError, match=r"--retrofit rfs-base: its decoder differs .*"
                                           r"d_model 64 \(here 320\)"):
        train(db, replace(TINY, run="rfs", preset="small", steps=1, retrofit="rfs-base"))
    assert not (db / "models" / "rfs").exists()


def test_retrofit_from_a_missing_checkpoint_path_names_it(db, tmp_path):
    """A --retrofit path without a checkpoint is named as such, not taken for a run."""
    from retrodb.training.runs import retrofit_source

    missing = tmp_path / "base" / "checkpoints" / "step-000450"
    with pytest.raises(RetrodbError, match=r"--retrofit .*step-000450: no checkpoint "
                                           r"there \(no model.safetensors\)"):
        retrofit_source(db, str(missing))
    with pytest.raises(RetrodbError, match="neither a checkpoint directory nor a run"):
        retrofit_source(db, "no-such-run")
