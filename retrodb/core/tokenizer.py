"""The tokenizer as a database stores it: its name and its full `tokenizer.json`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as stored in the database: its name and its full JSON definition."""

    name: str
    json: str  # the tokenizer.json text; also written to DB/tokenizer.json

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.json.encode()).hexdigest()

    def load(self):
        """A ready `tokenizers.Tokenizer`: no padding, no truncation."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.json)
        tok.no_padding()
        tok.no_truncation()
        return tok

    @property
    def vocab_size(self) -> int:
        return self.load().get_vocab_size(with_added_tokens=True)
