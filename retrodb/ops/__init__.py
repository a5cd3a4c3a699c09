"""Operating a database: planning a build, and verifying one.

    plan         bytes and hours per stage for a corpus size on given hardware
    verify       manifests against files, stages against each other, recomputation
    verify_sets  the same for the index and the neighbour sets
"""
