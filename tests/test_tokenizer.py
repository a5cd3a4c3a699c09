"""`retrodb tokenizer`: a lossless byte-level BPE, and chunking with it.

A user relies on: decoding a document's chunk tokens gives back its exact text
(accents, emoji, CR LF, tabs, runs of spaces, text the tokenizer never saw in
training); the same corpus gives the same tokenizer; bad options are refused in one
line before anything is written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dbread import read_chunks, read_docs
from test_cli import run

TRICKY = [
    "Café  déjà-vu 😀",
    "line one\r\nline two\r\n\r\nline four",
    "\tdef f(x):\n\t\treturn x  # two tabs\n",
    "    indented by four\n        and by eight   \n",
    "日本語のテキストと emoji 👨‍👩‍👧 family, e\u0301 combining, ∑ maths",
    "x" * 700 + " after a long run without whitespace",
    "\n\n\nleading newlines and trailing spaces   ",
    "Ünïcödé ÀÉÎÕÜ «quotes» „low“ ‘single’ — dash … ellipsis\u00a0nbsp",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A 600-id tokenizer trained on the example corpus."""
    d = tmp_path_factory.mktemp("tok")
    p = run("tokenizer", str(corpus), "--out", str(d / "tok.json"), "--vocab-size", "600",
            "--root", str(corpus), "--json")
    assert p.returncode == 0, p.stderr
    return d / "tok.json", json.loads(p.stdout)


def tricky_jsonl(path):
    with open(path, "w", encoding="utf-8", newline="") as f:
        for t in TRICKY:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return path


def test_trains_the_asked_vocabulary_deterministically(trained, corpus, tmp_path):
    path, result = trained
    assert result["vocab_size"] == 600 and result["docs"] == 7
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    assert tok.get_vocab_size() == 600
    again = tmp_path / "again.json"
    p = run("tokenizer", str(corpus), "--out", str(again), "--vocab-size", "600",
            "--root", str(corpus))
    assert p.returncode == 0, p.stderr
    assert again.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("text", TRICKY)
def test_encode_decode_is_exact(trained, text):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(trained[0]))
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text
    assert tok.token_to_id("[UNK]") is None  # nothing is ever unknown


def test_chunk_tokens_decode_to_the_exact_document(trained, tmp_path):
    from tokenizers import Tokenizer

    src = tricky_jsonl(tmp_path / "tricky.jsonl")
    db = tmp_path / "db"
    p = run("chunk", str(src), "--db", str(db), "--root", str(tmp_path), "--tokenizer",
            str(trained[0]), "--chunk-size", "8")
    assert p.returncode == 0, p.stderr
    tok = Tokenizer.from_file(str(db / "tokenizer.json"))
    chunks = read_chunks(db).to_pydict()
    docs = read_docs(db).to_pydict()
    assert len(docs["doc_id"]) == len(TRICKY)
    for d, first, n in zip(docs["doc_id"], docs["first_chunk_id"], docs["n_chunks"]):
        ids = np.concatenate([np.asarray(chunks["tokens"][c][:chunks["length"][c]])
                              for c in range(first, first + n)])
        original = TRICKY[d]
        assert tok.decode(ids.tolist()) == original, d
        assert "".join(chunks["text"][first:first + n]) == original
        assert len(original.encode()) == docs["n_bytes"][d]


def test_vocab_below_the_byte_alphabet_is_refused(corpus, tmp_path):
    out = tmp_path / "tok.json"
    p = run("tokenizer", str(corpus), "--out", str(out), "--vocab-size", "255")
    assert p.returncode == 2 and "--vocab-size 255" in p.stderr
    assert "256" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_output_directory_is_refused(corpus, tmp_path):
    p = run("tokenizer", str(corpus), "--out", str(tmp_path / "no" / "tok.json"))
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_a_tokenizer_file_that_does_not_load_is_refused(corpus, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": 3}}')
    p = run("chunk", str(corpus), "--db", str(tmp_path / "db"), "--tokenizer", str(bad))
    assert p.returncode == 2 and str(bad) in p.stderr and "tokenizer.json" in p.stderr
    assert not (tmp_path / "db").exists()


def test_chunking_into_a_database_of_another_tokenizer_names_both(trained, corpus,
                                                                  tmp_path):
    db = tmp_path / "db"
    assert run("chunk", str(corpus / "tutorial" / "classes.rst.txt"), "--db", str(db),
               "--root", str(corpus)).returncode == 0
    before = sorted(p.name for p in (db / "chunks").iterdir())
    p = run("chunk", str(corpus), "--db", str(db), "--root", str(corpus), "--tokenizer",
            str(trained[0]))
    assert p.returncode == 2
    assert "'tok'" in p.stderr and "'all-MiniLM-L6-v2'" in p.stderr
    assert sorted(p.name for p in (db / "chunks").iterdir()) == before


def test_source_files_by_text_suffix(tmp_path, trained):
    """--text-suffix .py reads Python sources as plain text, one document each."""
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("def f(x):\n\treturn x  # tab\r\n")
    (src / "README.md").write_text("# not read\n")
    db = tmp_path / "db"
    p = run("chunk", str(src), "--db", str(db), "--root", str(src), "--tokenizer",
            str(trained[0]), "--text-suffix", ".py", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["docs"] == 1
    assert read_chunks(db).to_pydict()["text"] == ["def f(x):\n\treturn x  # tab\r\n"]
    assert read_docs(db).to_pydict()["source"] == ["pkg/mod.py"]
    p = run("chunk", str(src), "--db", str(tmp_path / "db2"), "--text-suffix", "py")
    assert p.returncode == 2 and "--text-suffix 'py'" in p.stderr


def test_exclude_patterns_skip_inputs(tmp_path, corpus):
    p = run("chunk", str(corpus), "--db", str(tmp_path / "db"), "--root", str(corpus),
            "--exclude", "tutorial/*", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["docs"] == 1  # howto/unicode.rst.txt only
    p = run("chunk", str(corpus), "--db", str(tmp_path / "db2"), "--root", str(corpus),
            "--exclude", "*")
    assert p.returncode == 2 and "--exclude" in p.stderr
    assert not (tmp_path / "db2").exists()
