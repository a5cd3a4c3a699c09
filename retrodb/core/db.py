"""The database handle: every place of the layout, and `retrodb.json`.

    DB/
      retrodb.json     format, tokenizer, chunk size, token dtype, embedder
      tokenizer.json   the exact tokenizer the chunks were made with
      split.json       the train/validation split rule
      docs/ chunks/ embeddings/ tokens/ index/ neighbours/<set>/ models/<run>/

One `Database` is passed down to every stage and store; none of them joins layout paths
itself. The root may be a local directory or an object-store URL (`s3://bucket/db`).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import RetrodbError
from .storage import Loc, storage_for

FORMAT = 2  # 2: chunk shards are input splits, sources relative to --root
READABLE = (1, 2)  # 1: the first release (one driver process wrote every shard)
CONFIG = "retrodb.json"


class Database:
    """A retrodb database: a directory (or object-store prefix) and its layout."""

    def __init__(self, location: "str | Path | Loc | Database"):
        if isinstance(location, Database):
            location = location.root
        self.root: Loc = location if isinstance(location, Loc) else storage_for(location)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Database({str(self.root)!r})"

    # places -------------------------------------------------------------------------
    @property
    def config_file(self) -> Loc:
        return self.root / CONFIG

    @property
    def tokenizer_file(self) -> Loc:
        return self.root / "tokenizer.json"

    @property
    def split_file(self) -> Loc:
        return self.root / "split.json"

    @property
    def chunks(self) -> Loc:
        return self.root / "chunks"

    @property
    def docs(self) -> Loc:
        return self.root / "docs"

    @property
    def embeddings(self) -> Loc:
        return self.root / "embeddings"

    @property
    def tokens(self) -> Loc:
        return self.root / "tokens"

    @property
    def index(self) -> Loc:
        return self.root / "index"

    @property
    def neighbour_sets(self) -> Loc:
        return self.root / "neighbours"

    def neighbours(self, set_name: str) -> Loc:
        return self.neighbour_sets / set_name

    @property
    def models(self) -> Loc:
        return self.root / "models"

    def local_root(self, what: str) -> Path:
        """The database as a local directory; `what` names the command needing one."""
        if self.root.remote:
            raise RetrodbError(f"{self.root}: {what} needs a database on a local or "
                               "shared file system; copy it there first")
        return self.root.local()

    # retrodb.json -------------------------------------------------------------------
    def exists(self) -> bool:
        return self.config_file.exists()

    def config(self) -> dict[str, Any]:
        if not self.exists():
            if self.root.exists():
                raise RetrodbError(f"{self.root}: a file, not a retrodb database; give "
                                   "the database directory")
            raise RetrodbError(f"{self.root}: not a retrodb database (no {CONFIG}); "
                               "create one with `retrodb chunk INPUT --db DB`")
        cfg = self.config_file.read_json()
        if not isinstance(cfg, dict) or cfg.get("format") not in READABLE:
            got = cfg.get("format") if isinstance(cfg, dict) else None
            raise RetrodbError(f"{self.config_file}: format {got!r}, this retrodb reads "
                               f"formats {', '.join(map(str, READABLE))}")
        return cfg

    def update_config(self, **fields: Any) -> dict[str, Any]:
        with self.root.lock("the database settings"):
            cfg = self.config()
            cfg.update(fields)
            self.config_file.write_json(cfg)
        return cfg

    def tokenizer(self):
        """The tokenizer the chunks were made with (a `TokenizerSpec`)."""
        from .tokenizer import TokenizerSpec

        cfg = self.config()
        if not self.tokenizer_file.exists():
            raise RetrodbError(f"{self.tokenizer_file}: missing; the database cannot be "
                               "read without the tokenizer it was chunked with")
        return TokenizerSpec(cfg["tokenizer"]["name"], self.tokenizer_file.read_text())

    @contextmanager
    def creating(self, spec, chunk_size: int) -> Iterator[dict[str, Any]]:
        """Hold the database lock; create it for this tokenizer and chunk size, or check
        that it matches. If the database was created here and the block fails before
        anything else was written, the creation is undone: a failed first run leaves no
        settings behind."""
        if self.root.exists() and not self.root.is_dir():
            raise RetrodbError(f"--db {self.root}: a file, not a directory; give another "
                               "--db")
        existed = self.root.is_dir()
        with self.root.lock("the database settings"):
            created = not self.exists()
            cfg = self._create(spec, chunk_size) if created else self._check(spec, chunk_size)
            try:
                yield cfg
            except BaseException:
                if created and not self._has_shards():
                    if existed:
                        self.config_file.remove()
                        self.tokenizer_file.remove()
                    else:  # this run made the directory: leave nothing behind
                        self.root.remove_tree()
                raise

    def _has_shards(self) -> bool:
        m = self.chunks / "manifest.json"
        return m.exists() and bool(m.read_json().get("shards"))

    def _check(self, spec, chunk_size: int) -> dict[str, Any]:
        cfg = self.config()
        diffs = []
        if cfg["tokenizer"]["sha256"] != spec.sha256:
            diffs.append(f"tokenizer {spec.name!r} differs from the database's "
                         f"{cfg['tokenizer']['name']!r}")
        if cfg["chunk_size"] != chunk_size:
            diffs.append(f"--chunk-size {chunk_size} differs from the database's "
                         f"{cfg['chunk_size']}")
        if diffs:
            raise RetrodbError(f"{self.root}: " + "; ".join(diffs) +
                               "; use the database's settings or a new --db")
        return cfg

    def _create(self, spec, chunk_size: int) -> dict[str, Any]:
        vocab = spec.vocab_size
        self.tokenizer_file.write_text(spec.json)
        cfg = {
            "format": FORMAT,
            "tokenizer": {"name": spec.name, "sha256": spec.sha256, "vocab_size": vocab},
            "chunk_size": chunk_size,
            "token_dtype": "uint16" if vocab <= 1 << 16 else "uint32",
            "embedder": None,
        }
        self.config_file.write_json(cfg)  # last: its presence is the creation
        return cfg
