"""The chunk stage: corpora → tokenised, fixed-size chunks in Parquet shards.

    inputs     discovery, keys relative to --root, splits of about --split-size
    readers    byte ranges of inputs (line-aligned), decompression
    documents  the documents of one piece, per format (.txt, .jsonl, .parquet)
    tokenizer  the chunk tokenizer (Hugging Face tokenizer.json, offline)
    assemble   documents → segments → tokens → chunks (split-local ids)
    shards     chunk rows → Parquet shards, directly or through a spill
    stage      the Stage and `chunk_corpus`
"""

from .config import ChunkConfig, ChunkResult
from .readers import ReaderOptions
from .stage import ChunkStage, chunk_corpus

__all__ = ["ChunkConfig", "ChunkResult", "ChunkStage", "ReaderOptions", "chunk_corpus"]
