"""The shard stages, each a config, a Stage (exec/stage.py) and the parts it needs:

    chunk/       corpora → tokenised chunks (Parquet), one shard per input split
    embed/       chunks → frozen-BERT keys (float16 .npy), on CPU lanes or GPUs
    index/       keys → a faiss IVF index: train, add one part per shard, merge, recall
    neighbours/  keys + index → the k nearest chunks of every chunk, filtered
"""
