"""retrodb: build and query the retrieval database of a RETRO model."""

__version__ = "0.1.0"
