"""The chunk stage: corpora → tokenised, fixed-size chunks in Parquet shards.

Each input split (see `inputs.py`) becomes one shard, written by the worker that
tokenised it; this process only plans splits and records manifest entries. Chunk and
document ids are global and dense: a split's first ids are the sums of the counts of
the splits before it, so the runner counts splits ahead and writes them in order of
known offsets (`exec/runner.py`, ordered stages). The output is byte-identical for any
number of workers, and a rerun resumes: recorded shards are kept (and rebuilt, the same
bytes, when a file is missing or corrupt), unfinished splits of the recorded plan are
done, and inputs already chunked are skipped.

A shard's entry records its split (pieces of inputs by key, relative to --root), where
its ids start, the options that shaped it and its counts: enough for `retrodb verify`
to recompute it byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import numpy as np

from ...core.db import Database
from ...core.errors import RetrodbError
from ...core.manifest import Manifest, shard_name
from ...core.progress import NoteFn, ProgressFn
from ...exec.runner import RunReport, run_stage
from ...exec.stage import Task, WorkerEnv
from .assemble import Assembler, Batches, tokenize_segments
from .config import DEFAULT_CHUNK_SIZE, ChunkConfig, ChunkResult
from .documents import PieceReader
from .inputs import InputFile, Piece, discover_inputs, input_loc, plan_splits
from .readers import ReaderOptions
from .shards import RowBuffer, ShardWriter, SpillWriter, local_schema, read_spill
from .tokenizer import TokenizerSpec, resolve_tokenizer


def split_id(pieces: list[dict], made_with: dict) -> str:
    text = json.dumps({"pieces": pieces, "made_with": made_with}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ChunkStage:
    """The Stage (exec/stage.py) of `retrodb chunk`."""

    name, suffix, unit, label, ordered = "chunks", ".parquet", "bytes", "chunk", True

    def __init__(self, db: Database, cfg: ChunkConfig, chunk_size: int, token_dtype: str,
                 inputs: list[InputFile]):
        self.db, self.cfg = db, cfg
        self.out = db.chunks
        self.extra_dirs = (db.docs, db.chunks / ".work")
        self.chunk_size, self.token_dtype = chunk_size, token_dtype
        self.root = os.path.abspath(cfg.root) if "://" not in cfg.root else cfg.root
        self.inputs = inputs  # not sent to workers (see __getstate__)
        self.skipped_inputs = 0
        self.planned_now: set[int] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "inputs": [], "planned_now": set()}

    def made_with(self) -> dict:
        c = self.cfg
        return {"reader": dataclasses.asdict(c.reader), "segment_chars": c.segment_chars,
                "row_group_rows": c.row_group_rows, "chunk_size": self.chunk_size}

    # planning (this process) ----------------------------------------------------------
    def tasks(self, m: Manifest) -> list[Task]:
        if any("split" not in e for e in m.shards) and self.inputs:
            raise RetrodbError(f"{self.out}: chunked by an earlier retrodb (database "
                               "format 1), which cannot be appended to; chunk the new "
                               "inputs into a new database")
        plan = m.data.get("plan") or {"splits": [], "base_shard": m.next_shard}
        known: dict[str, int] = {}
        for pieces in [e["split"]["pieces"] for e in m.shards] + \
                [s["pieces"] for s in plan["splits"]]:
            for p in pieces:
                known[p["input"]] = p["size"]
        new = []
        for f in self.inputs:
            size = known.get(f.key)
            if size is None:
                new.append(f)
            elif size != f.size:
                raise RetrodbError(f"{f.loc}: already chunked into this database with "
                                   f"{size} bytes, now {f.size}; chunked inputs are "
                                   "immutable: give the new version another name")
        self.skipped_inputs = len(self.inputs) - len(new)
        self._check_plan_inputs(plan, m)
        if new:
            made = self.made_with()
            first = plan["base_shard"] + len(plan["splits"])
            for pieces in plan_splits(new, self.cfg.split_size, self.cfg.reader.doc_separator):
                d = [p.to_dict() for p in pieces]
                plan["splits"].append({"pieces": d, "made_with": made,
                                       "split_id": split_id(d, made)})
            self.planned_now = set(range(first, plan["base_shard"] + len(plan["splits"])))
            m.record(None, plan=plan)  # before any work: a crash resumes this plan
        tasks = {e["shard"]: self._task(e["shard"], {**e["split"], "split_id": e["split_id"],
                                                     "made_with": e["made_with"]})
                 for e in m.shards}
        for i, s in enumerate(plan["splits"]):
            tasks.setdefault(plan["base_shard"] + i, self._task(plan["base_shard"] + i, s))
        return [tasks[k] for k in sorted(tasks)]

    def _task(self, shard: int, split: dict) -> Task:
        source = {"pieces": split["pieces"], "made_with": split["made_with"],
                  "split_id": split["split_id"]}
        units = sum(p["end"] - p["start"] for p in split["pieces"])
        return Task(shard, source, {"split_id": split["split_id"]}, units)

    def _check_plan_inputs(self, plan: dict, m: Manifest) -> None:
        done = {e["shard"] for e in m.shards}
        for i, s in enumerate(plan["splits"]):
            if plan["base_shard"] + i in done:
                continue
            for p in s["pieces"]:
                loc = input_loc(self.root, p["input"])
                st = loc.stat()
                if st is None:
                    raise RetrodbError(f"an interrupted run was chunking {p['input']}, "
                                       f"which is not at {loc}; restore it (or give the "
                                       "same --root) and rerun to finish that run")
                if st.size != p["size"]:
                    raise RetrodbError(f"{loc}: changed since an interrupted run began "
                                       "chunking it; restore it to finish that run, or "
                                       "chunk into a new database")

    # ids: prefix sums over splits -----------------------------------------------------
    def start_offsets(self, m: Manifest) -> dict:
        return {"first_id": 0, "first_doc": 0, "carry": {}}

    def offsets_of(self, entry: dict) -> dict:
        pieces = entry["split"]["pieces"]
        carry = {p["input"]: b for p, b in zip(pieces, entry["split"]["line_base"])
                 if p["start"] > 0 and b is not None}
        return {"first_id": entry["first_id"], "first_doc": entry["first_doc_id"],
                "carry": carry}

    def counts_of(self, entry: dict) -> dict:
        return {"rows": entry["rows"], "docs": entry["docs"],
                "newlines": entry["split"]["newlines"]}

    def offsets_after(self, task: Task, offsets: dict, counts: dict) -> dict:
        carry = {}
        for p, base, nl in zip(task.source["pieces"], line_bases(task.source, offsets),
                               counts["newlines"]):
            if p["end"] < p["size"] and base is not None:
                carry[p["input"]] = base + nl  # the file continues in the next split
        return {"first_id": offsets["first_id"] + counts["rows"],
                "first_doc": offsets["first_doc"] + counts["docs"], "carry": carry}

    # workers --------------------------------------------------------------------------
    def open_worker(self, env: WorkerEnv) -> "ChunkWorker":
        return ChunkWorker(self, env)

    def spill(self, task: Task):
        base = self.out / ".work" / shard_name(task.shard, "")
        return base.parent / f"{base.name}.rows.arrow", base.parent / f"{base.name}.docs.arrow"

    def finished(self, m: Manifest, rep: RunReport) -> None:
        plan = m.data.get("plan")
        if plan and all(m.entry(plan["base_shard"] + i) is not None
                        for i in range(len(plan["splits"]))):
            m.forget("plan")
            (self.out / ".work").remove_tree()
        mine = [e for e in rep.entries if e["shard"] in self.planned_now]
        if self.planned_now and mine and not any(e["docs"] for e in mine):
            first = self.inputs[0] if self.inputs else None
            more = f" (and {len(self.inputs) - 1} more inputs)" if len(self.inputs) > 1 else ""
            raise RetrodbError(f"{first.loc if first else self.out}{more}: no text to chunk "
                               "(empty, or only empty documents); nothing was added")

    def failed(self, m: Manifest, error: BaseException) -> None:
        """A user error (bad input) undoes what this run planned: no trace is left.
        (A crash or Ctrl-C keeps the plan and finished shards: rerun to resume.)"""
        if not isinstance(error, RetrodbError) or not self.planned_now:
            return
        for shard in sorted(self.planned_now):
            e = m.entry(shard)
            if e is not None:
                for name in [e["file"]] + [x["file"] for x in e.get("extra", [])]:
                    m.path_of(name).remove()
                m.drop(shard)
        plan = m.data.get("plan")
        if plan is not None:
            keep = min(self.planned_now) - plan["base_shard"]
            plan["splits"] = plan["splits"][:keep]
            if not plan["splits"]:
                m.forget("plan")
        (self.out / ".work").remove_tree()
        m.flush()


def line_bases(source: dict, offsets: dict) -> list[int | None]:
    """The file line number each piece starts at (None: not a line-based format)."""
    out = []
    for p in source["pieces"]:
        if p["format"] == ".parquet":
            out.append(None)
        else:
            out.append(offsets["carry"].get(p["input"], 1) if p["start"] > 0 else 1)
    return out


class ChunkWorker:
    """Tokenises splits; writes spills (count) and shards (run)."""

    def __init__(self, stage: ChunkStage, env: WorkerEnv):
        if env.threads <= 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.stage = stage
        self.env = env
        self.tok = TokenizerSpec("", stage.db.tokenizer_file.read_text()).load()
        self.dtype = np.dtype(stage.token_dtype)

    def count(self, task: Task) -> dict:
        rows, docs = self.stage.spill(task)
        got = read_spill(rows.local(), docs.local()) if docs.exists() else None
        if got is not None and got[2].get("split_id") == task.source["split_id"]:
            return got[2]  # counted by an interrupted run
        schema = local_schema(self.dtype, self.stage.chunk_size)
        cpu = time.process_time()
        with docs.writing() as docs_tmp, rows.writing() as rows_tmp:  # docs last
            meta = self._tokenise(task, SpillWriter(rows_tmp, docs_tmp, schema),
                                  cpu_s=lambda: time.process_time() - cpu)
        return meta

    def run(self, task: Task, out) -> dict:
        cpu = time.process_time()
        st, offs = self.stage, task.offsets
        bases = line_bases(task.source, offs)
        writer = ShardWriter(out.main(), out.extra(st.db.docs / shard_name(task.shard,
                                                                            ".parquet")),
                             self.dtype, st.chunk_size, offs["first_id"], offs["first_doc"],
                             [p["input"] for p in task.source["pieces"]], bases)
        rows, docs = st.spill(task)
        got = read_spill(rows.local(), docs.local()) if docs.exists() else None
        if got is not None and got[2].get("split_id") == task.source["split_id"]:
            batches, local_docs, meta = got
            for b in batches:
                writer.write(b)
            meta["cpu_s"] = round(meta.get("cpu_s", 0) + time.process_time() - cpu, 3)
            stats = writer.close(local_docs, **meta)
        else:
            stats = self._tokenise(task, writer, cpu_s=lambda: time.process_time() - cpu)
        rows.remove()
        docs.remove()
        split = {"pieces": task.source["pieces"], "line_base": bases,
                 "newlines": stats.pop("newlines")}
        return {**stats, "first_id": offs["first_id"], "first_doc_id": offs["first_doc"],
                "split": split, "made_with": task.source["made_with"]}

    def _tokenise(self, task: Task, target, cpu_s) -> dict:
        """Read and tokenise the split's pieces into `target`; its counts (and the CPU
        seconds this worker spent on it, `cpu_s`)."""
        made = task.source["made_with"]
        opts = ReaderOptions(**made["reader"])
        readers = []
        for d in task.source["pieces"]:
            p = Piece.from_dict(d)
            loc = input_loc(self.stage.root, p.key)
            st = loc.stat()
            if st is None:
                raise RetrodbError(f"{loc}: input {p.key} is gone; restore it (or give the "
                                   "same --root as the run that planned it)")
            if st.size != p.size:
                raise RetrodbError(f"{loc}: {st.size} bytes now, {p.size} when this run was "
                                   "planned; chunked inputs are immutable: restore it")
            readers.append(PieceReader(InputFile(loc, p.key, p.size, p.format), p, opts))
        cs = made["chunk_size"]
        buf = RowBuffer(target, self.dtype, cs, made["row_group_rows"])
        asm = Assembler(buf, cs)
        reported = 0
        for entries, segments, links in Batches(made["segment_chars"],
                                                self.stage.cfg.item_chars).stream(readers):
            asm.feed(entries, tokenize_segments(self.tok, cs, segments, links))
            done = sum(r.bytes_read for r in readers)
            self.env.report(done - reported)
            reported = done
        return buf.close(tokens=buf.tokens, split_id=task.source["split_id"],
                         cpu_s=round(cpu_s(), 3),
                         newlines=[r.newlines for r in readers],
                         empty_docs=asm.empty_docs,
                         decode_errors=sum(r.stats.decode_errors for r in readers),
                         bad_lines=sum(r.stats.bad_lines for r in readers))


def chunk_corpus(db_path, paths: list[str], cfg: ChunkConfig = ChunkConfig(),
                 on_progress: ProgressFn | None = None,
                 on_note: NoteFn | None = None) -> ChunkResult:
    """Chunk `paths` (files, directories, globs, URLs) into the database at `db_path`.

    Inputs already in the database are skipped; an interrupted run is resumed; shards
    whose files are missing or corrupt are rebuilt."""
    cfg.validate()
    t0 = time.time()
    db = Database(db_path)
    if cfg.tokenizer is None and db.exists():
        spec = db.tokenizer()
    else:
        spec = resolve_tokenizer(cfg.tokenizer)
    chunk_size = cfg.chunk_size
    if chunk_size is None:
        chunk_size = db.config()["chunk_size"] if db.exists() else DEFAULT_CHUNK_SIZE
    files = discover_inputs(paths, cfg.root, cfg.text_suffixes,  # checked before writing
                            cfg.exclude)
    with db.creating(spec, chunk_size) as dbcfg:
        stage = ChunkStage(db, cfg, chunk_size, dbcfg["token_dtype"], files)
        rep = run_stage(stage, cfg.executor_spec, on_progress, on_note)
    result = ChunkResult(inputs=len(files) - stage.skipped_inputs,
                         inputs_skipped=stage.skipped_inputs, rebuilt=rep.redone)
    for e in rep.entries:
        result.shards.append(e["file"])
        result.docs += e["docs"]
        result.chunks += e["rows"]
        result.tokens += e["tokens"]
        for k in ("empty_docs", "decode_errors", "bad_lines"):
            setattr(result, k, getattr(result, k) + e.get(k, 0))
    result.seconds = time.time() - t0
    return result
