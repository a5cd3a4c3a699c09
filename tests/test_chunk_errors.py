"""Bad input gets one clear error (or a counted skip) and nothing half-written."""

from __future__ import annotations

import gzip
import json

import pytest

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.core.errors import RetrodbError
from retrodb.stages.chunk import ReaderOptions

from dbread import read_chunks, read_docs

SMALL = dict(split_size=40_000, row_group_rows=128)


def _run(db, paths, **kw):
    reader = kw.pop("reader", ReaderOptions())
    return chunk_corpus(db, [str(p) for p in paths], ChunkConfig(reader=reader, **SMALL, **kw))


def _unchanged(db):
    """Nothing was published: no shards, no temporary files."""
    assert not list(db.glob("chunks/[0-9]*.parquet"))
    assert not list(db.rglob(".tmp-*"))


def test_missing_path(tmp_path):
    with pytest.raises(RetrodbError, match=r"nope\.txt: no such file or directory"):
        _run(tmp_path / "db", [tmp_path / "nope.txt"])
    assert not (tmp_path / "db").exists()


def test_directory_without_inputs(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "x.csv").write_text("a,b\n")
    with pytest.raises(RetrodbError, match="directory holds no .txt"):
        _run(tmp_path / "db", [d])


def test_glob_without_match_and_unsupported_file(tmp_path):
    with pytest.raises(RetrodbError, match="pattern matches no"):
        _run(tmp_path / "db", [str(tmp_path / "*.txt")])
    f = tmp_path / "a.csv"
    f.write_text("x")
    with pytest.raises(RetrodbError, match="unsupported input type"):
        _run(tmp_path / "db", [f])


@pytest.mark.parametrize("size", [0, -3])
def test_bad_chunk_size(tmp_path, corpus_files, size):
    with pytest.raises(RetrodbError, match=f"--chunk-size {size}"):
        _run(tmp_path / "db", corpus_files[:1], chunk_size=size)


def test_undecodable_bytes_replaced_and_counted_or_strict(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("first line\ncaf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1"))
    r = _run(tmp_path / "db", [f])
    assert r.decode_errors == 4 and r.docs == 1
    assert "caf\ufffd" in "".join(read_chunks(tmp_path / "db").column("text").to_pylist())
    with pytest.raises(RetrodbError, match=r"latin1\.txt:2: undecodable UTF-8.*--errors"):
        _run(tmp_path / "db2", [f], reader=ReaderOptions(errors="strict"))
    _unchanged(tmp_path / "db2")


def test_bad_jsonl_line_names_file_and_line(tmp_path, corpus_files):
    f = tmp_path / "a.jsonl"
    good = json.dumps({"text": corpus_files[0].read_text(encoding="utf-8")})
    f.write_text(good + "\n{not json\n" + json.dumps({"body": "x"}) + "\n" + good + "\n")
    with pytest.raises(RetrodbError, match=r"a\.jsonl:2: not valid JSON.*--skip-bad"):
        _run(tmp_path / "db", [f])
    _unchanged(tmp_path / "db")
    r = _run(tmp_path / "db", [f], reader=ReaderOptions(skip_bad=True))
    assert r.bad_lines == 2 and r.docs == 2
    assert read_docs(tmp_path / "db").column("position").to_pylist() == [1, 4]


def test_jsonl_missing_field(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"body": "hello"}) + "\n")
    with pytest.raises(RetrodbError, match=r"a\.jsonl:1: no field 'text' \(set --text-field\)"):
        _run(tmp_path / "db", [f])


def test_empty_documents_skipped_and_counted(tmp_path, corpus_files):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")
    r = _run(tmp_path / "db", [tmp_path / "empty.txt", tmp_path / "blank.txt", corpus_files[0]])
    assert r.empty_docs == 2 and r.docs == 1
    assert read_docs(tmp_path / "db").column("doc_id").to_pylist() == [0]
    manifest = json.loads((tmp_path / "db" / "chunks" / "manifest.json").read_text())
    # the empty inputs are recorded (as chunked) with their shard's counts
    inputs = [p["input"].rsplit("/", 1)[1] for e in manifest["shards"]
              for p in e["split"]["pieces"]]
    assert {"empty.txt", "blank.txt", corpus_files[0].name} <= set(inputs)
    assert sum(e["empty_docs"] for e in manifest["shards"]) == 2


def test_db_with_other_tokenizer_or_chunk_size_refused(tmp_path, corpus_files):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    db = tmp_path / "db"
    _run(db, corpus_files[:1])
    with pytest.raises(RetrodbError, match="--chunk-size 32 differs from the database's 64"):
        _run(db, corpus_files[1:2], chunk_size=32)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(corpus_files[0])], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "wl.json"))
    with pytest.raises(RetrodbError, match="tokenizer 'wl' differs from the database's 'all-MiniLM-L6-v2'"):
        _run(db, corpus_files[1:2], tokenizer=str(tmp_path / "wl.json"))


def test_bad_tokenizer_path(tmp_path, corpus_files):
    with pytest.raises(RetrodbError, match="--tokenizer .*no such file"):
        _run(tmp_path / "db", corpus_files[:1], tokenizer=str(tmp_path / "none"))
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(RetrodbError, match="not a Hugging Face tokenizer.json"):
        _run(tmp_path / "db", corpus_files[:1], tokenizer=str(tmp_path / "t.json"))


def test_parquet_wrong_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2], "body": ["a", "b"]}), tmp_path / "a.parquet")
    with pytest.raises(RetrodbError, match=r"column 'text' is int64, not a string"):
        _run(tmp_path / "db", [tmp_path / "a.parquet"])
    with pytest.raises(RetrodbError, match=r"no column 'txt'"):
        _run(tmp_path / "db", [tmp_path / "a.parquet"], reader=ReaderOptions(text_column="txt"))


def test_truncated_gzip(tmp_path, corpus_files):
    data = gzip.compress(corpus_files[0].read_bytes())
    (tmp_path / "a.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(RetrodbError, match=r"a\.txt\.gz: cannot read .*truncated or corrupt"):
        _run(tmp_path / "db", [tmp_path / "a.txt.gz"])
    _unchanged(tmp_path / "db")


def test_changed_input_refused(tmp_path, corpus_files):
    f = tmp_path / "a.txt"
    f.write_text(corpus_files[0].read_text(encoding="utf-8"))
    _run(tmp_path / "db", [f])
    f.write_text(corpus_files[1].read_text(encoding="utf-8"))
    with pytest.raises(RetrodbError, match="already chunked .* immutable"):
        _run(tmp_path / "db", [f])


def test_binary_and_utf16_files_refused(tmp_path, corpus_files):
    (tmp_path / "a.txt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(RetrodbError, match=r"a\.txt: not UTF-8 text \(NUL byte at offset 0"):
        _run(tmp_path / "db", [tmp_path / "a.txt"])
    (tmp_path / "b.jsonl").write_text('{"text": "hi"}\n', encoding="utf-16")
    with pytest.raises(RetrodbError, match=r"b\.jsonl: not UTF-8 text.*UTF-16"):
        _run(tmp_path / "db", [tmp_path / "b.jsonl"])
    _unchanged(tmp_path / "db")


def test_truncated_zstd(tmp_path, corpus_files):
    import zstandard

    data = zstandard.ZstdCompressor().compress(corpus_files[0].read_bytes())
    (tmp_path / "a.txt.zst").write_bytes(data[: len(data) // 2])
    with pytest.raises(RetrodbError, match=r"a\.txt\.zst: cannot read .*truncated or corrupt"):
        _run(tmp_path / "db", [tmp_path / "a.txt.zst"])
    _unchanged(tmp_path / "db")


def test_input_changed_between_planning_and_reading(tmp_path, corpus_files, monkeypatch):
    """A split whose input changed size after the plan was made: one line naming the
    file, and nothing of the run is kept."""
    from retrodb.stages.chunk.stage import ChunkStage

    f = tmp_path / "doc.txt"
    f.write_text(corpus_files[0].read_text(encoding="utf-8"), encoding="utf-8")
    real = ChunkStage.tasks

    def plan_then_change(self, m):
        tasks = real(self, m)
        with open(f, "a", encoding="utf-8") as out:
            out.write("appended while the run was starting\n")
        return tasks

    monkeypatch.setattr(ChunkStage, "tasks", plan_then_change)
    with pytest.raises(RetrodbError, match=r"doc\.txt: \d+ bytes now, \d+ when this run "
                                           r"was planned"):
        _run(tmp_path / "db", [f])
    assert not (tmp_path / "db").exists()
