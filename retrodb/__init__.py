"""retrodb: build and query the retrieval database of a RETRO model.

The packages, from the bottom up (each only imports the ones above it in this list):

    core/      the database handle and layout, storage (local or object store) with
               atomic publishing, manifests, errors, progress events, fault points
    exec/      the Stage protocol, the one runner (pending shards, publish, record,
               resume) and the executors that run shard work (in process, a process
               pool, one worker per GPU, Ray)
    stores/    readers of what stages wrote: chunks and documents, the token store,
               the key shards, neighbour sets, the split, leakage overlap
    stages/    chunk, embed, index and neighbours: each a config, a Stage and its parts
    query/     the searcher, `retrodb.open(DB).search`, `retrodb info`
    training/  the RETRO model, training, evaluation, generation
    ops/       plan and verify

`import retrodb` is light: numpy, torch and faiss are imported by the code that uses
them.
"""

__version__ = "0.2.0"


def __getattr__(name: str):
    # `retrodb.open(DB)` without importing faiss (or numpy) at `import retrodb`.
    if name == "open":
        from .query.retriever import open

        return open
    raise AttributeError(f"module 'retrodb' has no attribute {name!r}")
