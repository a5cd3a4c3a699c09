"""Bad input, table-driven, through the CLI: each case gets one `error:` line naming the
file (or option) and the problem, a non-zero exit, and leaves the database as it was.

The table is mirrored in RELIABILITY.md.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index_fixtures import copy_db

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"
TEXT = sorted(CORPUS.rglob("*.rst.txt"), key=lambda p: p.stat().st_size)[0]


@pytest.fixture(scope="module")
def full_db(indexed_db, tmp_path_factory) -> Path:
    """Every stage done: chunks, keys, merged index, neighbours, a tiny training run."""
    from retrodb.stages.neighbours import NeighboursConfig, build_neighbours
    from retrodb.training.train import TrainConfig, train

    db = copy_db(indexed_db, tmp_path_factory.mktemp("bad") / "db")
    build_neighbours(db, NeighboursConfig(k=2, val_fraction=0.3))
    train(db, TrainConfig(run="t", preset="tiny", steps=2, seq_chunks=2, batch_size=2,
                          eval_every=0, eval_sequences=1, warmup=1, val_fraction=0.3))
    return db


# --- inputs -----------------------------------------------------------------------------

def truncated_gz(tmp: Path, db: Path):
    f = tmp / "doc.txt.gz"
    data = gzip.compress(TEXT.read_bytes())
    f.write_bytes(data[: len(data) // 2])
    return ["chunk", str(f), "--db", str(db)], ["doc.txt.gz", "truncated"]


def truncated_zst(tmp: Path, db: Path):
    import zstandard

    f = tmp / "doc.txt.zst"
    data = zstandard.ZstdCompressor().compress(TEXT.read_bytes())
    f.write_bytes(data[: len(data) // 2])
    return ["chunk", str(f), "--db", str(db)], ["doc.txt.zst", "truncated"]


def binary_file(tmp: Path, db: Path):
    f = tmp / "image.txt"
    f.write_bytes(bytes(range(256)) * 64)
    return ["chunk", str(f), "--db", str(db)], ["image.txt", "binary"]


def mixed_encodings(tmp: Path, db: Path):
    f = tmp / "mixed.txt"
    f.write_bytes("plain UTF-8 line: caf\u00e9\n".encode() + "latin-1: caf\xe9\n".encode("latin-1"))
    return ["chunk", str(f), "--db", str(db), "--errors", "strict"], ["mixed.txt:2",
                                                                      "undecodable"]


def jsonl_line_of_100_mb(tmp: Path, db: Path):
    f = tmp / "huge.jsonl"
    with open(f, "wb") as out:  # one 100 MB line whose string never ends
        out.write(b'{"text": "')
        block = b"a" * (1 << 20)
        for _ in range(100):
            out.write(block)
        out.write(b"\n")
    return ["chunk", str(f), "--db", str(db)], ["huge.jsonl:1", "JSON"]


def empty_file(tmp: Path, db: Path):
    f = tmp / "empty.txt"
    f.write_bytes(b"")
    return ["chunk", str(f), "--db", str(db)], ["empty.txt", "no text"]


def parquet_wrong_column_type(tmp: Path, db: Path):
    f = tmp / "numbers.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2, 3], pa.int64())}), f)
    return ["chunk", str(f), "--db", str(db)], ["numbers.parquet", "text"]


# --- a damaged database ---------------------------------------------------------------

def deleted_chunk_shard(tmp: Path, db: Path):
    (db / "chunks" / "00001.parquet").unlink()
    return ["embed", "--db", str(db)], ["chunks/00001.parquet", "missing"]


def edited_manifest(tmp: Path, db: Path):
    p = db / "embeddings" / "manifest.json"
    p.write_text(p.read_text()[:-40])
    return ["index", "--db", str(db)], ["embeddings/manifest.json", "not valid JSON"]


def manifest_escaping_the_db(tmp: Path, db: Path):
    p = db / "embeddings" / "manifest.json"
    p.write_text(p.read_text().replace('"00000.npy"', '"../../../etc/passwd"', 1))
    return ["neighbours", "--db", str(db), "--set", "x"], ["manifest.json",
                                                           "outside the database"]


def truncated_npy(tmp: Path, db: Path):
    p = db / "embeddings" / "00001.npy"
    p.write_bytes(p.read_bytes()[:-100])
    return ["neighbours", "--db", str(db), "--set", "x"], ["embeddings", "truncated"]


def corrupted_index(tmp: Path, db: Path):
    p = next((db / "index").glob("merged.*.faiss"))
    raw = bytearray(p.read_bytes())
    raw[100:140] = bytes(40)
    p.write_bytes(bytes(raw))
    return ["query", str(db), "classes and instances"], ["merged.", "corrupted"]


def checkpoint_from_another_preset(tmp: Path, db: Path):
    run = db / "models" / "t"
    cfg = (run / "config.json").read_text()
    shutil.copytree(run, db / "models" / "u")
    (db / "models" / "u" / "config.json").write_text(
        cfg.replace('"preset": "tiny"', '"preset": "small"').replace('"run": "t"',
                                                                      '"run": "u"'))
    import json

    from retrodb.training.model.config import PRESETS

    d = json.loads((db / "models" / "u" / "config.json").read_text())
    d["model"].update({k: v for k, v in PRESETS["small"].items() if k in d["model"]})
    (db / "models" / "u" / "config.json").write_text(json.dumps(d))
    return ["eval", "--db", str(db), "--run", "u"], ["models/u/checkpoints",
                                                     "do not fit"]


def query_empty_text(tmp: Path, db: Path):
    return ["query", str(db), "   "], ["query is empty"]


def neighbours_k_too_large(tmp: Path, db: Path):
    return ["neighbours", "--db", str(db), "--set", "x", "-k", "1000"], ["-k 1000",
                                                                         "only 874"]


# --- text that is not UTF-8, nonsense values, a file where a database should be -------

def query_not_utf8(tmp: Path, db: Path):
    return ["query", str(db), b"caf\xe9 au lait"], ["the query", "not valid UTF-8"]


def prompt_not_utf8(tmp: Path, db: Path):
    return ["generate", b"\xff\xfe some text", "--db", str(db), "--run", "t"], [
        "PROMPT", "not valid UTF-8"]


def input_name_not_utf8(tmp: Path, db: Path):
    d = tmp / "in"
    d.mkdir()
    (d / os.fsdecode(b"bad\xff.txt")).write_text("some text\n")
    return ["chunk", str(d), "--db", str(db)], ["bad", "file name is not valid UTF-8"]


def plan_negative_chunk_size(tmp: Path, db: Path):
    return ["plan", "--tokens", "2e12", "--chunk-size", "-64"], ["--chunk-size -64"]


def plan_tokens_nan(tmp: Path, db: Path):
    return ["plan", "--tokens", "nan"], ["--tokens nan", "positive number"]


def plan_tokens_inf(tmp: Path, db: Path):
    return ["plan", "--tokens", "inf"], ["--tokens inf", "positive number"]


def query_nprobe_zero(tmp: Path, db: Path):
    return ["query", str(db), "classes", "--nprobe", "0"], ["--nprobe 0"]


def eval_overlap_out_of_range(tmp: Path, db: Path):
    return ["eval", "--db", str(db), "--run", "t", "--exclude-overlap", "7"], [
        "--exclude-overlap 7", "[0, 1]"]


def generate_negative_tokens(tmp: Path, db: Path):
    return ["generate", "text", "--db", str(db), "--run", "t", "--max-tokens", "-5"], [
        "--max-tokens -5"]


def generate_k_zero(tmp: Path, db: Path):
    return ["generate", "text", "--db", str(db), "--run", "t", "-k", "0"], ["-k 0"]


def db_is_a_file(tmp: Path, db: Path):
    f = tmp / "notes.txt"
    f.write_text("not a database\n")
    return ["chunk", str(TEXT), "--db", str(f)], ["notes.txt", "a file, not a directory"]


def info_of_a_file(tmp: Path, db: Path):
    f = tmp / "notes.txt"
    f.write_text("not a database\n")
    return ["info", str(f)], ["notes.txt", "a file, not a retrodb database"]


def gpus_negative(tmp: Path, db: Path):
    return ["embed", "--db", str(db), "--gpus", "-1"], ["--gpus -1",
                                                        "device numbers start at 0"]


# --- a damaged shard read by a query or an evaluation ---------------------------------

def truncated_docs_shard(tmp: Path, db: Path):
    import json

    p = db / "docs" / "00000.parquet"
    p.write_bytes(p.read_bytes()[:-30])
    first = json.loads((db / "chunks" / "manifest.json").read_text())["shards"][0]
    text = pq.read_table(db / "chunks" / first["file"]).column("text")[5].as_py()
    return ["query", str(db), text, "-k", "1"], ["docs/00000.parquet", "truncated"]


def truncated_neighbour_shards(tmp: Path, db: Path):
    for p in (db / "neighbours" / "train").glob("0*.parquet"):
        p.write_bytes(p.read_bytes()[:-30])
    return ["eval", "--db", str(db), "--run", "t"], ["neighbours/train/0",
                                                     "cannot read"]


def tokenizer_vocab_below_bytes(tmp: Path, db: Path):
    return ["tokenizer", str(CORPUS), "--out", str(tmp / "tok.json"), "--vocab-size",
            "200"], ["--vocab-size 200", "256"]


def tokenizer_file_that_does_not_load(tmp: Path, db: Path):
    bad = tmp / "broken.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE"')
    return ["chunk", str(TEXT), "--db", str(db), "--tokenizer", str(bad)], [
        "broken.json", "not a Hugging Face tokenizer.json"]


def chunk_with_another_tokenizer(tmp: Path, db: Path):
    from retrodb.stages.tokenizer import TokenizerConfig, train_tokenizer

    train_tokenizer([str(CORPUS)], str(tmp / "mine.json"), TokenizerConfig(vocab_size=300))
    return ["chunk", str(TEXT), "--db", str(db), "--tokenizer", str(tmp / "mine.json")], [
        "tokenizer 'mine' differs from the database's 'all-MiniLM-L6-v2'"]


def retrofit_from_another_decoder(tmp: Path, db: Path):
    return ["train", "--db", str(db), "--run", "rf", "--preset", "cpu", "--retrofit", "t",
            "--val-fraction", "0.3", "--steps", "1"], [
        "--retrofit t: its decoder differs", "d_model 64 (here 192)"]


def index_unmergeable_factory(tmp: Path, db: Path):
    return ["index", "--db", str(db), "--rebuild", "--factory", "IVF8,PQ32x4fs"], [
        "--factory 'IVF8,PQ32x4fs'", "cannot be sharded and merged on disk", "PQ48x4"]


def index_kmeans_unknown(tmp: Path, db: Path):
    return ["index", "--db", str(db), "--kmeans", "fastest"], ["--kmeans fastest",
                                                               "auto, flat or two-level"]


def chunk_text_suffix_without_dot(tmp: Path, db: Path):
    return ["chunk", str(CORPUS), "--db", str(db), "--text-suffix", "py"], [
        "--text-suffix 'py'", "starts with a dot"]


CASES = [truncated_gz, truncated_zst, binary_file, mixed_encodings, jsonl_line_of_100_mb,
         empty_file, parquet_wrong_column_type, deleted_chunk_shard, edited_manifest,
         manifest_escaping_the_db, truncated_npy, corrupted_index,
         checkpoint_from_another_preset, query_empty_text, neighbours_k_too_large,
         query_not_utf8, prompt_not_utf8, input_name_not_utf8, plan_negative_chunk_size,
         plan_tokens_nan, plan_tokens_inf, query_nprobe_zero, eval_overlap_out_of_range,
         generate_negative_tokens, generate_k_zero, db_is_a_file, info_of_a_file,
         gpus_negative, truncated_docs_shard, truncated_neighbour_shards,
         tokenizer_vocab_below_bytes, tokenizer_file_that_does_not_load,
         chunk_with_another_tokenizer, retrofit_from_another_decoder,
         index_unmergeable_factory, index_kmeans_unknown, chunk_text_suffix_without_dot]


def snapshot(db: Path) -> dict[str, bytes]:
    return {str(p.relative_to(db)): p.read_bytes() for p in sorted(db.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_gets_one_line_and_leaves_the_database(case, full_db, tmp_path):
    db = copy_db(full_db, tmp_path / "db")
    args, fragments = case(tmp_path, db)
    before = snapshot(db)
    env = {k: v for k, v in os.environ.items() if k not in ("RETRODB_DEBUG",
                                                            "RETRODB_FAULT")}
    p = subprocess.run([sys.executable, "-m", "retrodb.cli.main", *args],
                       capture_output=True, text=True, env=env, timeout=300)
    errors = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(errors) == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for frag in fragments:
        assert frag in errors[0], (frag, errors[0])
    assert snapshot(db) == before, "the failed command changed the database"
    log = os.environ.get("RETRODB_BAD_INPUT_LOG")  # tests/reliability_table.py
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case.__name__, "command": args[0],
                                "doc": (case.__doc__ or "").strip(),
                                "status": p.returncode,
                                "error": errors[0].replace(str(tmp_path), "TMP")}) + "\n")
