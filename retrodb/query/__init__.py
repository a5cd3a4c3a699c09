"""Reading a finished database: search by vector or text, and what it holds.

    searcher   the merged index, memory-mapped, with exact re-ranking
    retriever  `retrodb.open(DB).search(["text"], k)`: embed, search, N + F, sources
    info       what every stage holds (`retrodb info`)
    service    `retrodb serve`: the database over HTTP, requests batched across clients
    client     the service's wire format and `RemoteRetriever(url).search(texts, k)`
"""
