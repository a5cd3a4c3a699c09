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

    @property
    def byte_level(self) -> bool:
        """A byte-level BPE with no normaliser: lossless, every token a byte string (each
        character of a token's string stands for one byte)."""
        import json

        d = json.loads(self.json)

        def has_byte_level(part) -> bool:
            if not part:
                return False
            if part.get("type") == "ByteLevel":
                return True
            return any(has_byte_level(p) for p in part.get("pretokenizers", []) or
                       part.get("decoders", []) or [])

        return ((d.get("model") or {}).get("type") == "BPE" and not d.get("normalizer")
                and has_byte_level(d.get("pre_tokenizer"))
                and has_byte_level(d.get("decoder")))

    def byte_lengths(self):
        """UTF-8 bytes of each token id (an int32 array), or None where that is not
        defined (a tokenizer that is not byte-level drops or rewrites text)."""
        import numpy as np

        if not self.byte_level:
            return None
        vocab = self.load().get_vocab(with_added_tokens=True)
        out = np.zeros(max(vocab.values()) + 1, dtype=np.int32)
        for token, i in vocab.items():
            out[i] = len(token)
        return out
