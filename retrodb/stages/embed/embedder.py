"""The frozen BERT that computes retrieval keys, shared by the embed stage and queries.

A key is the model's last hidden state mean-pooled over the real tokens of a sequence
([CLS] and [SEP] included, padding excluded: what sentence-transformers' mean pooling
does) and L2-normalised, so inner product = cosine. The model is any local
sentence-transformers directory whose modules are Transformer → Pooling(mean) →
optionally Normalize; it is read with `transformers` + `tokenizers` directly:
importing sentence_transformers costs ~8 s, and nothing here needs it.

Speed on CPU is fp32 only (bf16 and int8 were slower or inaccurate there), through
oneDNN (`onednn.py`); on CUDA, fp16 autocast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ...core.errors import RetrodbError
from .model import describe, model_dir, module_dirs, resolve_model, same_model
from .onednn import onednn_linear


def is_oom(e: BaseException) -> bool:
    """Whether an exception is an allocator running out of memory (CUDA or CPU)."""
    if isinstance(e, MemoryError):
        return True
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and any(
        s in msg for s in ("out of memory", "can't allocate memory", "not enough memory"))


class Embedder:
    """A loaded embedding model on one device. Build it with `load_embedder`.

    `encode_texts` tokenises text; `encode_ids` takes token ids without special tokens
    (what the chunk stage stores when the chunk tokenizer is the model's). Both sort by
    length, pad each batch to its longest sequence and return float32 (n, dim) rows in
    input order, L2-normalised. On out-of-memory a batch is halved and retried, and the
    smaller batch size is kept; `on_note` hears about it.
    """

    def __init__(self, spec: dict, device: str = "cpu", precision: str = "auto",
                 on_note: Callable[[str], None] | None = None, gpu: bool | None = None):
        import torch
        from tokenizers import Tokenizer

        self.spec = spec
        self.device = torch.device(device)
        self.on_note = on_note
        root = model_dir(spec)
        flag = "--model" if spec.get("path") is None else f"--model {spec['path']}"
        trans, _, _ = module_dirs(root, flag)
        tok_text = (trans / "tokenizer.json").read_text(encoding="utf-8")
        if hashlib.sha256(tok_text.encode()).hexdigest() != spec["tokenizer_sha256"]:
            raise RetrodbError(f"{flag}: its tokenizer.json changed since the embeddings "
                               "were made with it; restore it or embed a new set "
                               "(retrodb embed --new-set)")
        self.tokenizer_json = tok_text
        self.tokenizer = Tokenizer.from_str(tok_text)
        self.tokenizer.no_padding()  # the shipped file pads/truncates at 128: we batch
        self.tokenizer.no_truncation()  # and truncate ourselves, and count it
        self.prefix, self.suffix = _special_tokens(self.tokenizer)
        self.pad_id = _pad_id(self.tokenizer, trans)
        self.max_len = int(spec["max_seq_length"])
        self.max_content = self.max_len - len(self.prefix) - len(self.suffix)
        if self.max_content <= 0:
            raise RetrodbError(f"{flag}: max_seq_length {self.max_len} leaves no room for "
                               "text after the special tokens")

        # the GPU path (`gpu`: a CUDA device, or the CPU standing in for one in tests):
        # autocast, fp16 by default (its 10-bit mantissa is closer to fp32 than bf16's)
        self.gpu = self.device.type == "cuda" if gpu is None else gpu
        if self.gpu:
            if precision == "auto":
                precision = "fp16"
            self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16,
                             "fp32": None}[precision]
        else:
            self.autocast = None  # CPU: fp32 (bf16/int8 measured slower or inaccurate)
        self.precision = "fp32" if self.autocast is None else precision
        model = _load_transformer(trans, flag)
        if int(getattr(model.config, "hidden_size", spec["dim"])) != spec["dim"]:
            raise RetrodbError(f"{flag}: hidden size {model.config.hidden_size} differs from "
                               f"the pooling dimension {spec['dim']}")
        model = model.float().eval().requires_grad_(False)  # fp32 master weights
        self.onednn_layers = onednn_linear(model) if not self.gpu else 0
        self.model = model.to(self.device)
        self.batch_size: int | None = None  # lowered for good after an out-of-memory
        self.oom_halvings = 0
        self._lock = threading.Lock()

    # tokens ------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, without special tokens, not truncated."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def padded(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """Sequences as a (n, width) id matrix, cut at max_content, and true lengths."""
        lengths = np.fromiter((len(x) for x in seqs), np.int64, count=len(seqs))
        width = int(min(lengths.max(initial=1), self.max_content))
        content = np.zeros((len(seqs), max(width, 1)), dtype=np.int64)
        for i, x in enumerate(seqs):
            x = x[:width]
            content[i, :len(x)] = x
        return content, lengths

    def batches(self, content: np.ndarray, lengths: np.ndarray, batch_size: int
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        """Length-sorted padded model inputs: (positions, ids (B, T), lengths, truncated).

        `content` holds each sequence's ids without special tokens, left-aligned;
        `lengths` their true lengths (longer than max_content: truncated and counted).
        """
        pre, suf = np.asarray(self.prefix, np.int64), np.asarray(self.suffix, np.int64)
        kept = np.minimum(lengths, self.max_content)
        total = kept + len(pre) + len(suf)
        order = np.argsort(-total, kind="stable")  # longest first: OOM shows early
        for s in range(0, len(order), batch_size):
            pos = order[s:s + batch_size]
            k = kept[pos]
            width = int(k[0])
            ids = np.full((len(pos), int(total[pos[0]])), self.pad_id, dtype=np.int64)
            ids[:, :len(pre)] = pre
            real = np.arange(width)[None, :] < k[:, None]  # (batch, width)
            ids[:, len(pre):len(pre) + width] = np.where(real, content[pos, :width],
                                                         self.pad_id)
            rows = np.arange(len(pos))
            for j, tok in enumerate(suf):
                ids[rows, len(pre) + k + j] = tok
            yield pos, ids, total[pos], int((lengths[pos] > k).sum())

    # maths -------------------------------------------------------------------------
    def _run_model(self, ids, mask):
        """(batch, seq) token ids and 0/1 mask (None: no padding) → (batch, seq, dim)."""
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state

    def _embed(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        import torch

        dev = self.device
        ids_t = torch.from_numpy(ids)
        full = bool((lengths == ids.shape[1]).all())
        mask = None if full else torch.from_numpy(
            (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64))
        if dev.type != "cpu":  # a batch of ids is ~0.5 MB: a plain copy is cheap
            ids_t = ids_t.to(dev)
            mask = None if mask is None else mask.to(dev)
        cast = (torch.autocast(dev.type, dtype=self.autocast) if self.autocast is not None
                else contextlib.nullcontext())
        with torch.inference_mode(), cast:
            h = self._run_model(ids_t, mask).float()  # (batch, seq, dim)
            if mask is None:
                e = h.mean(dim=1)  # no padding: a plain mean over the sequence
            else:
                m = mask.unsqueeze(-1).to(h.dtype)  # (batch, seq, 1)
                e = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            e = torch.nn.functional.normalize(e, p=2, dim=-1)  # (batch, dim)
        return e.cpu().numpy()

    def embed_batch(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Embed one padded batch; halve it (and later batches) on out-of-memory."""
        limit = self.batch_size
        if limit is not None and len(ids) > limit:
            return np.concatenate([self.embed_batch(ids[i:i + limit], lengths[i:i + limit])
                                   for i in range(0, len(ids), limit)])
        ids = ids[:, :int(lengths.max())]  # a slice of a longest-first batch may be shorter
        try:
            return self._embed(ids, lengths)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
            if not is_oom(e):
                raise
        self._free_cache()
        n = len(ids)
        if n == 1:
            raise RetrodbError(f"out of memory on {self.device} embedding one sequence of "
                               f"{ids.shape[1]} tokens; use a device with more free memory")
        half = (n + 1) // 2
        with self._lock:  # lanes that ran out together halve once
            lowered = self.batch_size is None or half < self.batch_size
            if lowered:
                self.batch_size = half
                self.oom_halvings += 1
        if lowered and self.on_note is not None:
            self.on_note(f"out of memory on {self.device} with a batch of {n}: halved to "
                         f"{half} and retried (--batch-size {half} avoids this)")
        return self.embed_batch(ids, lengths)

    def _free_cache(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def encode_ids(self, seqs: list, batch_size: int = 32) -> np.ndarray:
        """Keys of token-id sequences given without special tokens: float32 (n, dim)."""
        content, lengths = self.padded([np.asarray(x, dtype=np.int64) for x in seqs])
        out = np.zeros((len(seqs), self.spec["dim"]), dtype=np.float32)
        for pos, ids, lens, _ in self.batches(content, lengths, batch_size):
            out[pos] = self.embed_batch(ids, lens)
        return out

    def encode_texts(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Keys of texts (tokenised by the model's tokenizer): float32 (n, dim)."""
        return self.encode_ids(self.tokenize(texts), batch_size)


def load_embedder(spec: dict, device: str = "cpu", precision: str = "auto",
                  on_note: Callable[[str], None] | None = None) -> Embedder:
    """Load the model an `embedder` record (retrodb.json) describes, checking that it is
    still the model (weights, tokenizer, pooling) that made the database's keys."""
    current = resolve_model(spec.get("path"))
    if not same_model(current, spec):
        raise RetrodbError(f"{describe(current)}: not the model the keys were made with "
                           "(weights, tokenizer or pooling differ); restore it or embed a "
                           "new set (retrodb embed --new-set)")
    return Embedder({**current, **spec}, device, precision, on_note)


def _load_transformer(trans: Path, flag: str):
    """The Hugging Face model of a directory: safetensors only, offline, quietly."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the library prints nothing; the CLI shows progress
    try:
        return AutoModel.from_pretrained(str(trans), local_files_only=True,
                                         use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise RetrodbError(f"{flag}: transformers cannot load it "
                           f"({str(e).splitlines()[0][:200]})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _special_tokens(tok) -> tuple[list[int], list[int]]:
    """Ids the tokenizer's post-processor puts before and after a single sequence."""
    probe = "a"
    bare = tok.encode(probe, add_special_tokens=False).ids
    full = tok.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []  # pragma: no cover - a post-processor that rewrites the content


def _pad_id(tok, trans: Path) -> int:
    """The padding id (masked out, so only its validity matters)."""
    cfg = trans / "special_tokens_map.json"
    name = None
    if cfg.is_file():
        pad = json.loads(cfg.read_text(encoding="utf-8")).get("pad_token")
        name = pad.get("content") if isinstance(pad, dict) else pad
    for cand in (name, "[PAD]", "<pad>"):
        if cand and tok.token_to_id(cand) is not None:
            return int(tok.token_to_id(cand))
    return 0


def continuation_table(tokenizer_json: str) -> np.ndarray | None:
    """For WordPiece tokenizers that split words on whitespace and punctuation: a
    boolean per id, True where the token continues a word ("##ing"). None otherwise.

    A stored chunk whose first token, and whose successor's first token, start words
    re-tokenises from its text to exactly its stored ids (the pre-tokenizer and the
    normalizer act per character and WordPiece per word), so its ids can be used as
    they are. Other chunks start or end inside a word; their text is re-tokenised.
    """
    data = json.loads(tokenizer_json)
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    if model.get("type") != "WordPiece" or pre.get("type") != "BertPreTokenizer":
        return None
    prefix = model.get("continuing_subword_prefix") or "##"
    vocab = dict(model.get("vocab") or {})
    for t in data.get("added_tokens") or []:
        vocab.setdefault(t["content"], t["id"])  # special tokens start nothing
    table = np.zeros(max(vocab.values(), default=-1) + 1, dtype=bool)
    for token, i in vocab.items():
        table[i] = token.startswith(prefix) and token != prefix
    return table
