"""Shared fixtures: the committed example corpus and small helpers to read a DB."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"
PERL = ROOT / "examples" / "corpus-perl"  # a second real corpus, different in kind

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def corpus() -> Path:
    """Seven real documents of the Python documentation (PSF licence), ~200 KB."""
    return CORPUS


@pytest.fixture(scope="session")
def corpus_files() -> list[Path]:
    return sorted(CORPUS.rglob("*.rst.txt"))


@pytest.fixture(scope="session")
def perl_corpus() -> Path:
    """Four documents of Perl's own documentation (POD, code-heavy; GPL/Artistic),
    ~210 KB: a second real corpus, unlike the Python docs."""
    return PERL


@pytest.fixture(scope="session", params=["python-docs", "perl-docs"])
def any_corpus(request) -> Path:
    return CORPUS if request.param == "python-docs" else PERL

# Databases shared by the index and query tests (session-scoped: built once).
from index_fixtures import chunked_db, embedded_db, fake_db, indexed_db  # noqa: E402,F401
