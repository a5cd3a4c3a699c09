"""The embed stage: chunks → frozen-BERT keys, one float16 .npy per chunk shard.

    model     a sentence-transformers directory → the `embedder` record (checked)
    onednn    CPU linears through oneDNN with prepacked weights
    embedder  the loaded model: tokenise, batch, embed, mean-pool, normalise
    batches   one chunk shard → one key shard, in bounded memory, on CPU lanes
    stage     the Stage and `embed_db`
"""

from .embedder import Embedder, continuation_table, load_embedder
from .model import describe, resolve_model, same_model
from .stage import EmbedConfig, EmbedResult, EmbedStage, embed_db

__all__ = ["EmbedConfig", "EmbedResult", "EmbedStage", "Embedder", "continuation_table",
           "describe", "embed_db", "load_embedder", "resolve_model", "same_model"]
