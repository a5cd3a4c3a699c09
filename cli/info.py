"""`retrodb info`: what a database holds, per stage."""

from __future__ import annotations

from .common import (human_bytes, human_count, print_json, print_table, table,
                     user_errors, write)
from .options import DB_ARG, JSON


@user_errors
def info_cli(
    db: str = DB_ARG,
    json_out: bool = JSON,
):
    """Show shards, rows, tokens and bytes on disk for every stage of a database.

    Example: retrodb info mydb --json
    """
    from retrodb.query.info import db_info

    info = db_info(db)
    if json_out:
        print_json(info)
        return
    write(f"{info['path']}  tokenizer {info['tokenizer']} · chunk size "
          f"{info['chunk_size']} · tokens {info['token_dtype']} · format {info['format']}")
    t = table("stage", "shards", "rows", "tokens", "on disk", "notes")
    for name, s in info["stages"].items():
        notes = []
        if s.get("interrupted"):
            notes.append("interrupted run: rerun chunk to finish")
        for key, label in (("empty_docs", "empty docs skipped"),
                           ("decode_errors", "bytes replaced"),
                           ("bad_lines", "bad lines skipped")):
            if s.get(key):
                notes.append(f"{s[key]} {label}")
        if s.get("pending_shards"):
            notes.append(f"{s['pending_shards']} chunk shards not embedded yet")
        if s.get("dim"):
            notes.insert(0, f"{info['embedder']['name']}, {s['dim']}-d float16")
        if "inputs" in s:
            notes.insert(0, f"{s['inputs']} inputs")
        if name == "index":
            notes.extend(_index_notes(s))
        if name.startswith("neighbours/"):
            notes.extend(_neighbour_notes(s))
        t.add_row(name, str(s["shards"]), human_count(s["rows"]),
                      human_count(s["tokens"]) if "tokens" in s else "",
                      human_bytes(s["bytes"]), ", ".join(notes))
    print_table(t)


def _index_notes(s: dict) -> list[str]:
    """The index row: factory, the chosen operating point and its measured recall."""
    notes = [s["factory"] or "not trained"]
    if not s.get("merged"):
        return notes + ["not merged: run `retrodb index` to finish"]
    if "nprobe" not in s:
        return notes + ["recall not measured: run `retrodb index merge`"]
    rerank = f", {s['candidates']} candidates re-ranked" if s["candidates"] else ""
    notes.append(f"nprobe {s['nprobe']}{rerank}")
    mark = "" if s["reached"] else f" (below target {s['target']})"
    notes.append(f"recall@{s['k']} {s['recall']:.3f}{mark}, {s['ms_per_query']:.2f} ms/query")
    notes.append(f"lists {s['bytes_per_vector']:.0f} B/vector + {human_bytes(s['fixed_bytes'])} fixed")
    return notes


def _neighbour_notes(s: dict) -> list[str]:
    """A neighbour set's row: k, what it excludes, its measured filtered recall."""
    notes = [f"k {s['k']}", f"queries: {'another database' if s['queries_db'] else 'own chunks'}"]
    if s["exclude_same_doc"]:
        notes.append("own document excluded")
    if s["exclude_overlap"] is not None:
        notes.append(f"r ≤ {s['exclude_overlap']}")
    if s["filtered_recall"] is not None:
        notes.append(f"nprobe {s['nprobe']}, filtered recall@{s['k']} "
                     f"{s['filtered_recall']:.3f}")
    if s["short"]:
        notes.append(f"{s['short']} chunks short of k")
    return notes
