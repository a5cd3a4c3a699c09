"""The foundation every other layer stands on.

    errors    the one exception a user can cause (printed as one line by the CLI)
    storage   where files live (local directory or object store) and atomic publishing
    remote    the object-store backend (s3://, gs://, any fsspec URL)
    manifest  the record of a stage's finished shards
    db        the database handle: every place of the layout, retrodb.json
    progress  the progress events every stage reports
    faults    the SIGKILL points the reliability tests use
    util      small helpers (id ranges in messages, peak memory, quiet C stdout)
"""
