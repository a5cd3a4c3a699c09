"""`retrodb tokenizer`: train the language model's tokenizer on a corpus.

A byte-level BPE (Hugging Face `tokenizers`): the 256 byte symbols are the base
alphabet, so every string is encodable and decoding a document's tokens gives back its
exact UTF-8 bytes (no normaliser, no lower-casing, no unknown token; spaces, tabs,
CR LF and emoji survive). This is the paper's arrangement: one lossless tokenizer for
the language model, while BERT only computes the keys (the embed stage re-tokenises
chunk text for the embedder).

Scale: BPE merges need corpus-wide pair counts, so training is one process. It reads a
sample, not the corpus: the inputs are cut into blocks of `BLOCK` bytes (the chunk
stage's splits) and, when the corpus is larger than `sample_bytes`, evenly spaced blocks
are read up to that budget. 1 GiB of text fixes a 16k-32k vocabulary well (the count
tables grow with distinct words, not bytes); the time is minutes, once per corpus.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..core.errors import RetrodbError
from ..core.progress import Progress, ProgressFn
from .chunk.documents import PieceReader
from .chunk.inputs import (InputFile, check_text_suffixes, discover_inputs, input_loc,
                           plan_splits)
from .chunk.readers import DOC_END, DocStart, ReaderOptions

BLOCK = 16 << 20  # bytes per sampled block of input
MAX_PIECE = 1 << 20  # characters handed to the trainer at once (cut at whitespace)
MIN_VOCAB = 256  # one symbol per byte


@dataclass(frozen=True)
class TokenizerConfig:
    """Options of `retrodb tokenizer`; each field names its flag."""

    vocab_size: int = 16384  # --vocab-size: ids in all, the 256 byte symbols included
    sample_bytes: int = 1 << 30  # --sample: input bytes read at most
    min_frequency: int = 2  # --min-frequency: a merge must occur this often
    root: str = "."  # --root: as for chunk (inputs are named relative to it)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    text_suffixes: tuple[str, ...] = ()  # --text-suffix: as for chunk
    exclude: tuple[str, ...] = ()  # --exclude: as for chunk

    def validate(self) -> None:
        if self.vocab_size < MIN_VOCAB:
            raise RetrodbError(f"--vocab-size {self.vocab_size}: at least {MIN_VOCAB} (one "
                               "id per byte value); 16384 to 65536 is usual")
        if self.vocab_size > 1 << 20:
            raise RetrodbError(f"--vocab-size {self.vocab_size}: at most {1 << 20}; the "
                               "paper's tokenizer has 128k")
        if self.sample_bytes < 1 << 16:
            raise RetrodbError(f"--sample {self.sample_bytes}: at least 64K of text")
        check_text_suffixes(self.text_suffixes)
        if self.min_frequency < 1:
            raise RetrodbError(f"--min-frequency {self.min_frequency}: must be 1 or more")


@dataclass
class TokenizerResult:
    path: str = ""
    vocab_size: int = 0  # ids in the trained tokenizer (may be fewer than asked)
    inputs: int = 0
    bytes_read: int = 0
    docs: int = 0
    seconds: float = 0.0


def new_tokenizer():
    """An untrained byte-level BPE: no normaliser, byte-level pre-tokenizer (GPT-2's
    split rules, no prefix space) and decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def sample_pieces(files: list[InputFile], sample_bytes: int, doc_separator):
    """The pieces of input to read: all of it, or evenly spaced blocks up to the budget."""
    blocks = [p for split in plan_splits(files, BLOCK, doc_separator) for p in split]
    total = sum(p.end - p.start for p in blocks)
    if total <= sample_bytes:
        return blocks, total
    take = max(1, min(len(blocks), math.ceil(sample_bytes / BLOCK)))
    picked = sorted({int(i * len(blocks) / take) for i in range(take)})
    out = [blocks[i] for i in picked]
    return out, sum(p.end - p.start for p in out)


class _Texts:
    """The documents of the sampled pieces as strings of at most MAX_PIECE characters,
    cut at whitespace; counts what it read and reports progress."""

    def __init__(self, cfg: TokenizerConfig, pieces, files, total: int,
                 on_progress: ProgressFn | None):
        self.cfg, self.pieces, self.total = cfg, pieces, total
        self.by_key = {f.key: f for f in files}
        self.on_progress = on_progress
        self.done = self.docs = 0
        self.last = 0.0

    def __iter__(self) -> Iterator[str]:
        for p in self.pieces:
            f = self.by_key[p.key]
            reader = PieceReader(InputFile(input_loc(self.cfg.root, p.key), p.key, p.size,
                                           p.format), p, self.cfg.reader)
            base = self.done
            buf: list[str] = []
            size = 0
            for ev in reader.events():
                if isinstance(ev, DocStart):
                    buf, size = [], 0
                elif ev is DOC_END:
                    if buf:
                        yield "".join(buf)
                    self.docs += 1
                else:
                    buf.append(ev)
                    size += len(ev)
                    if size >= MAX_PIECE:
                        text = "".join(buf)
                        cut = _cut(text)
                        yield text[:cut]
                        buf, size = [text[cut:]], len(text) - cut
                self._report(base + reader.bytes_read)
            self.done = base + (p.end - p.start if f.format != ".parquet" else reader.bytes_read)
            self._report(self.done, force=True)

    def _report(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress and (force or now - self.last >= 0.5):
            self.last = now
            self.on_progress(Progress("read sample", done, self.total, "bytes",
                                      {"docs": self.docs}))


def _cut(text: str) -> int:
    """Where to cut a long text: after its last whitespace (the end if none)."""
    i = max(text.rfind("\n"), text.rfind(" "))
    return i + 1 if i > 0 else len(text)


def out_path(out: str) -> Path:
    """--out: a file, or an existing directory (→ DIR/tokenizer.json)."""
    p = Path(out)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.parent.is_dir():
        raise RetrodbError(f"--out {out}: directory {p.parent} does not exist; create it "
                           "first")
    if p.suffix != ".json":
        raise RetrodbError(f"--out {out}: name the file *.json (a Hugging Face "
                           "tokenizer.json)")
    return p


def train_tokenizer(paths: list[str], out: str, cfg: TokenizerConfig = TokenizerConfig(),
                    on_progress: ProgressFn | None = None) -> TokenizerResult:
    """Train a byte-level BPE of `cfg.vocab_size` ids on `paths`; write it to `out`."""
    from tokenizers import pre_tokenizers, trainers

    t0 = time.time()
    cfg.validate()
    target = out_path(out)
    files = discover_inputs(paths, cfg.root, cfg.text_suffixes,  # checked before training
                            cfg.exclude)
    pieces, total = sample_pieces(files, cfg.sample_bytes, cfg.reader.doc_separator)
    texts = _Texts(cfg, pieces, files, total, on_progress)
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size,
                                  min_frequency=cfg.min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(iter(texts), trainer=trainer)
    if texts.docs == 0 or texts.done == 0:
        raise RetrodbError(f"{files[0].loc}: no text to train on (empty inputs); "
                           "nothing was written")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, target)
    return TokenizerResult(str(target), tok.get_vocab_size(), len(files), texts.done,
                           texts.docs, time.time() - t0)
