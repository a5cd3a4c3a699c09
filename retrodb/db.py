"""The database directory and its `retrodb.json`.

    DB/
      retrodb.json     format version, tokenizer, chunk size, token dtype, embedder
      tokenizer.json   the exact tokenizer the chunks were made with
      docs/ chunks/ embeddings/ index/ neighbours/ models/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import RetrodbError
from .storage import read_json, write_json
from .tokenizer import TokenizerSpec

FORMAT = 1
CONFIG = "retrodb.json"


class Database:
    """A retrodb database directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # directories ------------------------------------------------------------------
    @property
    def docs_dir(self) -> Path:
        return self.root / "docs"

    @property
    def chunks_dir(self) -> Path:
        return self.root / "chunks"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    # retrodb.json -----------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    def exists(self) -> bool:
        return self.config_path.is_file()

    def config(self) -> dict[str, Any]:
        if not self.exists():
            raise RetrodbError(f"{self.root}: not a retrodb database (no {CONFIG}); "
                               "create one with `retrodb chunk INPUT --db DB`")
        cfg = read_json(self.config_path)
        if cfg.get("format") != FORMAT:
            raise RetrodbError(f"{self.config_path}: format {cfg.get('format')!r}, this "
                               f"retrodb reads format {FORMAT}")
        return cfg

    def update_config(self, **fields: Any) -> dict[str, Any]:
        cfg = self.config()
        cfg.update(fields)
        write_json(self.config_path, cfg)
        return cfg

    def tokenizer(self) -> TokenizerSpec:
        cfg = self.config()
        path = self.root / "tokenizer.json"
        if not path.is_file():
            raise RetrodbError(f"{path}: missing; the database cannot be read without "
                               "the tokenizer it was chunked with")
        return TokenizerSpec(cfg["tokenizer"]["name"], path.read_text(encoding="utf-8"))

    def create_or_check(self, spec: TokenizerSpec, chunk_size: int) -> dict[str, Any]:
        """Create the database for this tokenizer and chunk size, or check it matches."""
        if self.exists():
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
        vocab = spec.vocab_size
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tokenizer.json").write_text(spec.json, encoding="utf-8")
        cfg = {
            "format": FORMAT,
            "tokenizer": {"name": spec.name, "sha256": spec.sha256, "vocab_size": vocab},
            "chunk_size": chunk_size,
            "token_dtype": "uint16" if vocab <= 1 << 16 else "uint32",
            "embedder": None,
        }
        write_json(self.config_path, cfg)
        return cfg
