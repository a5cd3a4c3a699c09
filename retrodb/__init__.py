"""retrodb: build and query the retrieval database of a RETRO model."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `retrodb.open(DB)` without importing faiss (or numpy) at `import retrodb`.
    if name == "open":
        from .search import open

        return open
    raise AttributeError(f"module 'retrodb' has no attribute {name!r}")
