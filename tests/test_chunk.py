"""retrodb chunk: round trip, ids, shards, formats, resume and append."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from retrodb.stages.chunk import ChunkConfig, chunk_corpus
from retrodb.stages.chunk import ReaderOptions
from retrodb.core.manifest import Manifest
from retrodb.stages.chunk.tokenizer import resolve_tokenizer

from dbread import read_chunks, read_docs, shard_bytes

SMALL = dict(split_size=40_000, row_group_rows=128)


def _docs_text(db: Path) -> dict[int, str]:
    """doc_id → concatenation of its chunks' text."""
    t = read_chunks(db).to_pydict()
    out: dict[int, list[str]] = {}
    for d, txt in zip(t["doc_id"], t["text"]):
        out.setdefault(d, []).append(txt)
    return {d: "".join(v) for d, v in out.items()}


def test_round_trip_ids_and_manifest(tmp_path, corpus, corpus_files):
    db = tmp_path / "db"
    r = chunk_corpus(db, [str(corpus)], ChunkConfig(**SMALL))
    chunks, docs = read_chunks(db), read_docs(db).to_pylist()
    assert r.docs == len(docs) == len(corpus_files) == 7
    # one shard per split: here every file (18-40 KB) is its own split of ≤ 40 KB
    assert r.chunks == chunks.num_rows and len(r.shards) == 7

    # chunk and doc ids are dense, global and in order
    ids = chunks.column("chunk_id").to_numpy()
    assert (ids == np.arange(len(ids))).all()
    assert [d["doc_id"] for d in docs] == list(range(7))

    # manifest: rows, id ranges, checksums and token counts agree with the files
    m = Manifest(db / "chunks", "chunks")
    first = 0
    for e in m.shards:
        assert e["first_id"] == first
        assert m.files_ok(e, checksum=True)
        first += e["rows"]
    assert first == len(ids)
    assert sum(e["tokens"] for e in m.shards) == r.tokens == sum(d["n_tokens"] for d in docs)

    # concatenating a document's chunk text gives back the exact source text
    texts = _docs_text(db)
    for d in docs:
        assert texts[d["doc_id"]] == Path(d["source"]).read_text(encoding="utf-8")
        assert d["n_bytes"] == Path(d["source"]).stat().st_size
        assert d["position"] == 1
    # the continuation of chunk c is c + 1 within the same document
    doc_ids = chunks.column("doc_id").to_numpy()
    pos = chunks.column("pos").to_numpy()
    same = doc_ids[1:] == doc_ids[:-1]
    assert (pos[1:][same] == pos[:-1][same] + 1).all()
    assert (pos[1:][~same] == 0).all()


def test_tokens_match_whole_document_tokenisation(tmp_path, any_corpus):
    """Segmenting long documents must not change tokens; padding is zeros; the chunk
    texts of a document are its text (prose and code alike)."""
    db = tmp_path / "db"
    files = sorted(p for p in any_corpus.rglob("*.txt"))[:3]
    # tiny segments force many cuts inside every document
    chunk_corpus(db, [str(f) for f in files],  # splits large enough to hold whole files
                 ChunkConfig(segment_chars=300, item_chars=2000, split_size=1 << 20))
    texts = _docs_text(db)
    tok = resolve_tokenizer(None).load()
    t = read_chunks(db).to_pydict()
    for d in read_docs(db).to_pylist():
        rows = [i for i, x in enumerate(t["doc_id"]) if x == d["doc_id"]]
        got = []
        for i in rows:
            n = t["length"][i]
            got += t["tokens"][i][:n]
            assert all(v == 0 for v in t["tokens"][i][n:])
            assert n == 64 or i == rows[-1]
        source = Path(d["source"]).read_text(encoding="utf-8")
        assert got == tok.encode(source, add_special_tokens=False).ids
        assert texts[d["doc_id"]] == source


def test_workers_give_identical_shards(tmp_path, corpus):
    a, b = tmp_path / "a", tmp_path / "b"
    chunk_corpus(a, [str(corpus)], ChunkConfig(workers=1, **SMALL))
    chunk_corpus(b, [str(corpus)], ChunkConfig(workers=2, **SMALL))
    assert shard_bytes(a) == shard_bytes(b)


def test_rerun_adds_nothing_and_append_continues_ids(tmp_path, corpus_files):
    db = tmp_path / "db"
    first = [str(f) for f in corpus_files[:4]]
    r1 = chunk_corpus(db, first, ChunkConfig(**SMALL))
    again = chunk_corpus(db, first, ChunkConfig(**SMALL))
    assert again.chunks == 0 and again.inputs_skipped == 4 and again.shards == []
    r2 = chunk_corpus(db, [str(f) for f in corpus_files], ChunkConfig(**SMALL))
    assert r2.inputs == 3 and r2.inputs_skipped == 4
    chunks, docs = read_chunks(db), read_docs(db)
    assert chunks.num_rows == r1.chunks + r2.chunks
    assert (chunks.column("chunk_id").to_numpy() == np.arange(chunks.num_rows)).all()
    assert docs.column("doc_id").to_pylist() == list(range(7))
    # the new shards start after the last old one
    m = Manifest(db / "chunks", "chunks")
    assert [e["shard"] for e in m.shards] == list(range(len(m.shards)))
    assert m.shards[len(r1.shards)]["first_id"] == r1.chunks


def test_tokenizer_and_chunk_size_recorded(tmp_path, corpus_files):
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus_files[0])], ChunkConfig(chunk_size=32, **SMALL))
    cfg = json.loads((db / "retrodb.json").read_text())
    assert cfg["chunk_size"] == 32 and cfg["token_dtype"] == "uint16"
    assert cfg["tokenizer"]["name"] == "all-MiniLM-L6-v2"
    t = read_chunks(db)
    assert t.schema.field("tokens").type.list_size == 32
    # a later run without --chunk-size uses the database's
    r = chunk_corpus(db, [str(corpus_files[1])], ChunkConfig(**SMALL))
    assert r.chunks > 0


def test_custom_tokenizer_file(tmp_path, corpus_files):
    """Any tokenizer.json works: here a byte-level BPE trained on the corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(f) for f in corpus_files], trainers.BpeTrainer(vocab_size=2000))
    path = tmp_path / "bpe" / "tokenizer.json"
    path.parent.mkdir()
    tok.save(str(path))
    db = tmp_path / "db"
    chunk_corpus(db, [str(corpus_files[0])],
                 ChunkConfig(tokenizer=str(path.parent), segment_chars=500, **SMALL))
    t = read_chunks(db).to_pydict()
    got = [i for toks, n in zip(t["tokens"], t["length"]) for i in toks[:n]]
    assert got == tok.encode(corpus_files[0].read_text(encoding="utf-8")).ids
    assert "".join(t["text"]) == corpus_files[0].read_text(encoding="utf-8")


# -- formats ------------------------------------------------------------------------


def _write_jsonl(path: Path, texts: list[str], field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": 1}) + "\n")


def test_jsonl_gz_zst_parquet_and_separator(tmp_path, corpus_files):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [f.read_text(encoding="utf-8") for f in corpus_files[:3]]
    inp = tmp_path / "in"
    inp.mkdir()
    _write_jsonl(inp / "a.jsonl", texts, field="body")
    _write_jsonl(inp / "b.jsonl.gz", texts, field="body", opener=gzip.open)
    raw = "".join(json.dumps({"body": t}) + "\n" for t in texts).encode()
    (inp / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"body": texts, "n": [1, 2, 3]}), inp / "d.parquet")
    (inp / "e.txt.gz").write_bytes(gzip.compress("\n<doc>\n".join(texts).encode()))

    db = tmp_path / "db"
    r = chunk_corpus(db, [str(inp)], ChunkConfig(
        reader=ReaderOptions(text_field="body", text_column="body",
                             doc_separator="\n<doc>\n"), **SMALL))
    assert r.docs == 15 and r.inputs == 5
    docs = read_docs(db).to_pylist()
    got = _docs_text(db)
    for d in docs:
        assert got[d["doc_id"]] == texts[d["doc_id"] % 3]
    positions = {(Path(d["source"]).name, d["position"]) for d in docs}
    # .jsonl: 1-based line; .parquet: 0-based row; split .txt: line where the doc starts
    assert {("a.jsonl", 1), ("a.jsonl", 2), ("a.jsonl", 3)} <= positions
    assert {("d.parquet", 0), ("d.parquet", 2)} <= positions
    line2 = texts[0].count("\n") + 3  # first doc, the separator's two newlines, then 1
    assert ("e.txt.gz", 1) in positions and ("e.txt.gz", line2) in positions


def test_one_enormous_line_streams(tmp_path, corpus_files, monkeypatch):
    """A document of a single multi-megabyte line is read in bounded pieces."""
    import retrodb.stages.chunk.documents as documents

    monkeypatch.setattr(documents, "PIECE_BYTES", 4096)
    words = corpus_files[0].read_text(encoding="utf-8").split()
    line = " ".join(words * 6)  # ~1 MB, no newline
    f = tmp_path / "long.txt"
    f.write_text(line, encoding="utf-8")
    db = tmp_path / "db"
    r = chunk_corpus(db, [str(f)], ChunkConfig(segment_chars=2048, **SMALL))
    assert r.docs == 1 and "".join(read_chunks(db).column("text").to_pylist()) == line
    tok = resolve_tokenizer(None).load()
    assert r.tokens == len(tok.encode(line, add_special_tokens=False).ids)


def test_large_inputs_are_cut_at_line_starts_into_splits(tmp_path, perl_corpus):
    """A file larger than --split-size spreads over several shards (and workers): a
    .txt as consecutive documents cut at line starts, a .jsonl by its lines. Nothing is
    lost or repeated, positions are the lines where documents start, and the shards are
    the same bytes for one worker and two."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(perl_corpus.iterdir()))
    big = tmp_path / "in" / "big.txt"
    big.parent.mkdir()
    big.write_text(text, encoding="utf-8")
    paras = [p + "\n\n" for p in text.split("\n\n") if p.strip()]
    lines = [json.dumps({"text": p}) for p in paras]
    (tmp_path / "in" / "many.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dbs = []
    for workers in (1, 2):
        db = tmp_path / f"db{workers}"
        r = chunk_corpus(db, [str(tmp_path / "in")], ChunkConfig(
            split_size=20_000, workers=workers, root=str(tmp_path)))
        dbs.append(db)
    assert shard_bytes(dbs[0]) == shard_bytes(dbs[1])
    size = big.stat().st_size + (tmp_path / "in" / "many.jsonl").stat().st_size
    assert len(r.shards) >= size // 20_000
    docs = read_docs(dbs[0]).to_pylist()
    got = _docs_text(dbs[0])
    txt = [d for d in docs if d["source"] == "in/big.txt"]
    assert len(txt) > 5 and "".join(got[d["doc_id"]] for d in txt) == text
    file_lines = text.split("\n")
    for d in txt:  # each part starts at the line its position names
        assert got[d["doc_id"]].startswith(file_lines[d["position"] - 1])
    js = [d for d in docs if d["source"] == "in/many.jsonl"]
    assert [got[d["doc_id"]] for d in js] == paras
    assert [d["position"] for d in js] == list(range(1, len(paras) + 1))
