"""The embed stage: keys equal sentence-transformers', rows align with chunk ids, a
crashed run resumes to the same bytes, two workers equal one, corrupt shards are
recomputed, and every bad input is one line naming what to fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrodb.stages.chunk import ChunkConfig, chunk_corpus  # noqa: E402
from retrodb.stages.embed import EmbedConfig, embed_db, load_embedder  # noqa: E402
from retrodb.core.errors import RetrodbError  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus" / "tutorial"
FILES = [CORPUS / "errors.rst.txt", CORPUS / "introduction.rst.txt"]  # 186 chunks, 4 shards
MORE = CORPUS / "modules.rst.txt"  # 111 more in 3 shards, appended
SPLIT = 12_000  # bytes of input per shard: each file cut into 2 shards
# Bytes are compared between runs: each batch runs on one torch thread (CPU lanes), so
# its bits depend neither on the cores, lanes or workers nor on the process.


def _chunk(db: Path, files: list[Path]) -> None:
    chunk_corpus(db, [str(f) for f in files], ChunkConfig(split_size=SPLIT))


def _keys(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((db / "embeddings").glob("[0-9]*.npy"))}


def _copy_keys(src: Path, db: Path) -> None:
    """Give `db` (a copy of the same chunks) the keys and embedder record of `src`."""
    shutil.copytree(src / "embeddings", db / "embeddings")
    (db / "retrodb.json").write_text((src / "retrodb.json").read_text())


def _chunk_table(db: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((db / "chunks").glob("[0-9]*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in files])


def _all_keys(db: Path) -> np.ndarray:
    files = sorted((db / "embeddings").glob("[0-9]*.npy"))
    return np.concatenate([np.load(p) for p in files]).astype(np.float32)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _cli(*args: str):
    from typer.testing import CliRunner

    from retrodb.cli.main import app

    return CliRunner().invoke(app, list(args))


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def chunked(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("chunked") / "db"
    _chunk(db, FILES)
    return db


@pytest.fixture(scope="session")
def reference(chunked, tmp_path_factory) -> Path:
    """One uninterrupted one-worker run: what every other run must reproduce."""
    db = tmp_path_factory.mktemp("reference") / "db"
    shutil.copytree(chunked, db)
    r = embed_db(db, EmbedConfig())
    assert r.chunks == 186 and len(r.shards) == 4 and r.skipped == 0
    return db


@pytest.fixture(scope="session")
def embedder(reference):
    """The query-side API, loaded from the database's embedder record."""
    spec = json.loads((reference / "retrodb.json").read_text())["embedder"]
    return load_embedder(spec)


@pytest.fixture
def db(chunked, tmp_path) -> Path:
    out = tmp_path / "db"
    shutil.copytree(chunked, out)
    return out


def _model_copy(dst: Path, **edits) -> Path:
    """The default model, its files linked, with JSON files edited: {name: fn(dict)}."""
    from retrodb.stages.chunk.tokenizer import default_model_dir

    src = default_model_dir()
    dst.mkdir()
    for p in src.iterdir():
        if p.name.replace(".", "_") in edits:
            data = json.loads(p.read_text())
            edits[p.name.replace(".", "_")](data)
            (dst / p.name).write_text(json.dumps(data))
        else:
            (dst / p.name).symlink_to(p)
    return dst


@pytest.fixture(scope="session")
def other_tokenizer_model(tmp_path_factory) -> Path:
    """The default model with a tokenizer.json that tokenises the same but is another
    file (padding/truncation settings dropped): a model whose tokenizer differs."""
    def drop_settings(tok):
        tok["padding"] = tok["truncation"] = None

    return _model_copy(tmp_path_factory.mktemp("models") / "minilm-copy",
                       tokenizer_json=drop_settings)


# --------------------------------------------------------------------------------------
# The keys


def test_keys_equal_sentence_transformers(reference, embedder):
    from sentence_transformers import SentenceTransformer

    from retrodb.stages.chunk.tokenizer import default_model_dir

    texts = _chunk_table(reference).column("text").to_pylist()
    st = SentenceTransformer(str(default_model_dir()), device="cpu")
    ref = st.encode(texts, convert_to_numpy=True)
    ours = _all_keys(reference)
    cos = _cosines(ours, ref)
    assert cos.min() >= 0.999, (cos.argmin(), cos.min())
    # the query-side API gives the same keys from text, in float32
    q = embedder.encode_texts(texts[:40], batch_size=16)
    assert q.dtype == np.float32 and q.shape == (40, 384)
    assert _cosines(q, ref[:40]).min() >= 0.999


def test_long_chunks_are_truncated_counted_and_match_sentence_transformers(db, tmp_path):
    from sentence_transformers import SentenceTransformer

    short = _model_copy(tmp_path / "minilm-32",
                        sentence_bert_config_json=lambda c: c.update(max_seq_length=32))
    r = embed_db(db, EmbedConfig(model=str(short)))
    lengths = _chunk_table(db).column("length").to_numpy()
    stats = json.loads((db / "embeddings" / "manifest.json").read_text())["shards"]
    assert r.truncated == sum(e["truncated"] for e in stats) > 0
    # a chunk re-tokenised from its text may have a token more or less than stored
    assert abs(r.truncated - int((lengths > 30).sum())) <= r.retokenized
    assert json.loads((db / "retrodb.json").read_text())["embedder"]["max_seq_length"] == 32
    texts = _chunk_table(db).column("text").to_pylist()
    ref = SentenceTransformer(str(short), device="cpu").encode(texts)
    assert _cosines(_all_keys(db), ref).min() >= 0.999


def test_shards_align_with_chunk_ids(reference, embedder):
    chunks = json.loads((reference / "chunks" / "manifest.json").read_text())["shards"]
    emb = json.loads((reference / "embeddings" / "manifest.json").read_text())
    assert emb["stage"] == "embeddings"
    assert [e["shard"] for e in emb["shards"]] == [c["shard"] for c in chunks]
    table = _chunk_table(reference)
    spec = json.loads((reference / "retrodb.json").read_text())["embedder"]
    assert spec["path"] is None and spec["dim"] == 384 and spec["pooling"] == "mean"
    assert spec["normalize"] is True and spec["max_seq_length"] == 256
    assert spec["tokenizer_sha256"] == json.loads(
        (reference / "retrodb.json").read_text())["tokenizer"]["sha256"]
    for c, e in zip(chunks, emb["shards"]):
        assert (e["first_id"], e["rows"], e["source_sha256"]) == (
            c["first_id"], c["rows"], c["sha256"])
        path = reference / "embeddings" / e["file"]
        with open(path, "rb") as f:  # a standard .npy: version 1 header, float16 rows
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        assert shape == (c["rows"], 384) and not fortran and dtype == np.float16
        keys = np.load(path).astype(np.float32)
        assert np.allclose(np.linalg.norm(keys, axis=1), 1, atol=2e-3)
        # row i is chunk first_id + i: each sampled row is the key of that chunk's
        # text and of no neighbouring row
        rows = np.random.default_rng(c["shard"]).choice(c["rows"], 6, replace=False)
        ids = c["first_id"] + rows
        texts = table.column("text").take(ids).to_pylist()
        assert table.column("chunk_id").take(ids).to_pylist() == ids.tolist()
        sims = embedder.encode_texts(texts) @ keys.T  # (6, rows)
        assert (sims[np.arange(6), rows] >= 0.999).all()
        assert (sims.argmax(1) == rows).all()


def test_stored_ids_used_only_where_text_tokenises_the_same(reference, embedder):
    from retrodb.stages.embed.batches import reusable
    from retrodb.stages.embed.embedder import continuation_table

    tok_json = (reference / "tokenizer.json").read_text()
    table = _chunk_table(reference)
    tokens = np.stack(table.column("tokens").to_numpy(zero_copy_only=False))
    lengths = table.column("length").to_numpy()
    reuse = reusable(tokens, lengths, table.column("doc_id").to_numpy(), 64,
                      continuation_table(tok_json))
    retok = embedder.tokenize(table.column("text").to_pylist())
    same = np.array([np.array_equal(t[:n], r) for t, n, r in zip(tokens, lengths, retok)])
    assert reuse.sum() > 0.6 * len(reuse)  # most chunks skip re-tokenisation
    assert same[reuse].all()  # and every one that does is exact
    assert not same.all()  # chunks cut inside a word exist, and were re-tokenised
    # the stage decides per shard: a shard's last full chunk may continue its word in
    # the next shard, so it is re-tokenised too
    stats = json.loads((reference / "embeddings" / "manifest.json").read_text())["shards"]
    for e in stats:
        a, b = e["first_id"], e["first_id"] + e["rows"]
        own = reusable(tokens[a:b], lengths[a:b], table.column("doc_id").to_numpy()[a:b],
                        64, continuation_table(tok_json))
        assert e["retokenized"] == int((~own).sum())
        assert not own[-1] or lengths[b - 1] < 64
    # encode_ids on stored ids gives the stored keys
    keys = _all_keys(reference)
    idx = np.flatnonzero(reuse)[:20]
    got = embedder.encode_ids([tokens[i, :lengths[i]] for i in idx])
    assert _cosines(got, keys[idx]).min() >= 0.999


# --------------------------------------------------------------------------------------
# Resume, workers, corruption, append


def test_crash_after_first_shard_then_resume_gives_identical_files(db, reference):
    # A hard crash (no cleanup: os._exit) half-way through the second shard.
    code = textwrap.dedent("""
        import os, sys
        import retrodb.stages.embed.stage as E
        real, calls = E.embed_shard, []
        def crashing(chunks, out, *args, **kw):
            calls.append(out)
            if len(calls) == 2:
                out.write_bytes(b"half a shard")
                os._exit(3)
            return real(chunks, out, *args, **kw)
        E.embed_shard = crashing
        E.embed_db(sys.argv[1], E.EmbedConfig(threads=1))  # one lane
    """)
    p = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                       text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 3, p.stderr
    left = sorted(x.name for x in (db / "embeddings").iterdir())
    assert left == [".lock", ".tmp-00001.npy", "00000.npy", "manifest.json"]
    assert [e["shard"] for e in json.loads(
        (db / "embeddings" / "manifest.json").read_text())["shards"]] == [0]

    r = embed_db(db, EmbedConfig())
    assert r.skipped == 1 and r.shards == ["00001.npy", "00002.npy", "00003.npy"]
    assert r.redone == 0
    assert not (db / "embeddings" / ".tmp-00001.npy").exists()
    assert _keys(db) == _keys(reference)
    assert embed_db(db, EmbedConfig()).shards == []  # nothing left to do


def test_two_workers_equal_one_worker(db, reference):
    seen = {}
    r = embed_db(db, EmbedConfig(workers=2),
                 on_progress=lambda p: seen.update(p.workers))
    assert r.devices == ["cpu", "cpu"] and sorted(r.shards) == sorted(_keys(reference))
    assert sorted(seen) == ["cpu0", "cpu1"] and sum(seen.values()) == 186
    assert _keys(db) == _keys(reference)
    drop = ("device", "seconds", "mtime_ns")
    mine, ref = (json.loads((d / "embeddings" / "manifest.json").read_text())["shards"]
                 for d in (db, reference))
    assert [{k: v for k, v in e.items() if k not in drop} for e in mine] == \
           [{k: v for k, v in e.items() if k not in drop} for e in ref]


def test_corrupt_or_truncated_shard_is_detected_and_recomputed(db, reference):
    _copy_keys(reference, db)
    d = db / "embeddings"
    with open(d / "00000.npy", "r+b") as f:  # truncated
        f.truncate(f.seek(0, 2) - 100)
    raw = bytearray((d / "00002.npy").read_bytes())  # same size, one flipped byte
    raw[-7] ^= 0x55
    (d / "00002.npy").write_bytes(bytes(raw))
    r = embed_db(db, EmbedConfig())
    assert r.redone == 2 and r.shards == ["00000.npy", "00002.npy"] and r.skipped == 2
    assert _keys(db) == _keys(reference)


def test_appended_chunk_shards_are_embedded_alone(db, reference):
    _copy_keys(reference, db)
    before = {p.name: p.stat().st_mtime_ns for p in (db / "embeddings").glob("0*.npy")}
    _chunk(db, [MORE])
    r = embed_db(db, EmbedConfig())
    assert r.skipped == 4 and r.chunks == 111
    assert r.shards == ["00004.npy", "00005.npy", "00006.npy"]
    assert {p.name: p.stat().st_mtime_ns for p in (db / "embeddings").glob("0*.npy")
            if p.name in before} == before
    keys = np.load(db / "embeddings" / "00005.npy")
    second = json.loads((db / "embeddings" / "manifest.json").read_text())["shards"][5]
    assert second["first_id"] == 186 + 35 and keys.shape == (44, 384)


def test_out_of_memory_halves_the_batch_and_retries(db, reference, monkeypatch):
    import torch

    from retrodb.stages.embed.embedder import Embedder

    real = Embedder._run_model

    def small_memory(self, ids, mask):
        if ids.shape[0] > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real(self, ids, mask)

    monkeypatch.setattr(Embedder, "_run_model", small_memory)
    _copy_keys(reference, db)
    (db / "embeddings" / "00002.npy").unlink()  # one shard (57 chunks) to compute
    notes = []
    # one lane: with more, lanes that run out together may each halve their own batch
    r = embed_db(db, EmbedConfig(batch_size=32, threads=1), on_note=notes.append)
    assert r.shards == ["00002.npy"]
    assert r.oom_halvings == 2  # 32 → 16 → 8, kept for the following batches
    assert [n.split(": ", 1)[1][:40] for n in notes] == [
        "out of memory on cpu with a batch of 32:",
        "out of memory on cpu with a batch of 16:"]
    assert "halved to 8 and retried" in notes[1]
    assert _cosines(_all_keys(db), _all_keys(reference)).min() >= 0.999


def test_out_of_memory_on_a_single_chunk_is_an_error(db, monkeypatch):
    import torch

    from retrodb.stages.embed.embedder import Embedder

    def no_memory(self, ids, mask):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Embedder, "_run_model", no_memory)
    with pytest.raises(RetrodbError, match="out of memory on cpu embedding one sequence"):
        embed_db(db, EmbedConfig(batch_size=4))


# --------------------------------------------------------------------------------------
# Models


def test_other_tokenizer_is_said_once_and_text_is_retokenised(db, reference,
                                                               other_tokenizer_model):
    res = _cli("embed", "--db", str(db), "--model", str(other_tokenizer_model))
    assert res.exit_code == 0, res.output
    assert res.stderr.count("tokenizer differs") == 1, res.stderr
    stats = json.loads((db / "embeddings" / "manifest.json").read_text())["shards"]
    assert sum(e["retokenized"] for e in stats) == 186
    assert _cosines(_all_keys(db), _all_keys(reference)).min() >= 0.999
    spec = json.loads((db / "retrodb.json").read_text())["embedder"]
    assert spec["path"] == str(other_tokenizer_model) and spec["name"] == "minilm-copy"


def test_another_model_is_refused_unless_new_set(db, reference, other_tokenizer_model):
    _copy_keys(reference, db)
    res = _cli("embed", "--db", str(db), "--model", str(other_tokenizer_model))
    _one_line_error(res, "--model", "all-MiniLM-L6-v2", "--new-set")
    assert _keys(db) == _keys(reference)  # untouched

    notes = []
    r = embed_db(db, EmbedConfig(model=str(other_tokenizer_model), new_set=True),
                 on_note=notes.append)
    assert r.new_set and r.redone == 0 and len(r.shards) == 4
    assert any("discarded 4 key shards" in n for n in notes), notes
    spec = json.loads((db / "retrodb.json").read_text())["embedder"]
    assert spec["path"] == str(other_tokenizer_model)
    # later runs without --model keep the database's (new) model
    assert embed_db(db, EmbedConfig()).shards == []


# --------------------------------------------------------------------------------------
# Bad input: one line each


def test_no_chunks(tmp_path):
    from retrodb.core.db import Database
    from retrodb.stages.chunk.tokenizer import resolve_tokenizer

    with Database(tmp_path / "empty").creating(resolve_tokenizer(None), 64):
        pass  # a database with settings but no chunks
    _one_line_error(_cli("embed", "--db", str(tmp_path / "empty")),
                    "no chunk shards to embed", "retrodb chunk")


def test_missing_model(db, tmp_path):
    _one_line_error(_cli("embed", "--db", str(db), "--model", str(tmp_path / "nope")),
                    "--model", "no such directory")


def test_not_a_sentence_transformers_model(db, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    _one_line_error(_cli("embed", "--db", str(db), "--model", str(plain)),
                    "not a sentence-transformers model", "modules.json")


def test_pickled_weights_or_other_pooling_are_refused(db, tmp_path):
    from retrodb.stages.chunk.tokenizer import default_model_dir

    src = default_model_dir()
    bin_only = tmp_path / "bin"
    shutil.copytree(src, bin_only, ignore=shutil.ignore_patterns("model.safetensors"))
    (bin_only / "pytorch_model.bin").write_bytes(b"pickle")
    _one_line_error(_cli("embed", "--db", str(db), "--model", str(bin_only)),
                    "no model.safetensors", "pickled")
    cls = tmp_path / "cls"
    shutil.copytree(src, cls, ignore=shutil.ignore_patterns("model.safetensors"))
    (cls / "model.safetensors").symlink_to(src / "model.safetensors")
    pool = json.loads((cls / "1_Pooling" / "config.json").read_text())
    pool.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (cls / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    _one_line_error(_cli("embed", "--db", str(db), "--model", str(cls)),
                    "pools with cls_token", "mean")


@pytest.mark.parametrize("args, needles", [
    (["--gpus", "0,x"], ["--gpus 0,x", "e.g. --gpus 0,1"]),
    (["--batch-size", "0"], ["--batch-size 0"]),
    (["--workers", "0"], ["--workers 0"]),
    (["--precision", "fp16"], ["--precision fp16", "only with --gpus"]),
])
def test_bad_options(db, args, needles):
    _one_line_error(_cli("embed", "--db", str(db), *args), *needles)


def test_gpus_without_cuda(db):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(_cli("embed", "--db", str(db), "--gpus", "0,1"),
                    "--gpus 0,1", "CUDA is not available", "omit --gpus")


def test_moved_model_is_named_with_what_to_do(db, reference, tmp_path):
    _copy_keys(reference, db)
    cfg = json.loads((db / "retrodb.json").read_text())
    cfg["embedder"]["path"] = str(tmp_path / "moved-away")
    (db / "retrodb.json").write_text(json.dumps(cfg))
    _one_line_error(_cli("embed", "--db", str(db)), "cannot be loaded", "moved-away",
                    "--model", "--new-set")
