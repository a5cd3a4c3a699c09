"""Readers of what the stages wrote, shared by later stages, the trainer and queries.

    chunks           chunk rows and documents by id, the document table
    tokens           a memory-mapped token matrix (built by its own small stage)
    vectors          the embedding shards as one memory-mapped matrix
    neighbour_table  a neighbour set: ids, scores, and the model's token blocks
    split            the train/validation split rule (DB/split.json)
    overlap          test-set leakage: the longest common token run of two chunks
"""
