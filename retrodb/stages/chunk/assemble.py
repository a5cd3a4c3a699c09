"""Documents → tokenised, fixed-size chunks, inside one worker.

Text: a chunk's `text` is the source text from its first token's start offset (the
document's start for the first chunk) to the next chunk's first token's start (the
document's end for the last chunk). Concatenating a document's chunk texts gives back
the decoded document exactly, including whitespace and characters the tokenizer drops.

Segments: documents are tokenised in segments of about `segment_chars` characters, cut
at the start of a whitespace run, in batches of about `item_chars` characters (one Rust
`encode_batch` call). For tokenizers whose pre-tokenizer splits on whitespace (BERT
WordPiece, byte-level BPE) this gives the same tokens as the whole document; a run of
more than `segment_chars` characters without whitespace is cut hard. Memory is bounded
by one batch plus the tail of the current document that is not yet a whole chunk.

Ids here are local to the split: documents and chunks are numbered from 0; the stage
adds the split's offsets when it writes the shard.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .documents import PieceReader
from .readers import DOC_END, DocStart

# How a segment relates to the previous one, so the tokeniser knows which token starts
# it must report: NEW starts a document; NEXT continues the previous segment's document
# in the same batch; CONT continues a document whose earlier tokens were in another batch.
NEW, NEXT, CONT = 0, 1, 2
SEG, END, PIECE_DONE = 0, 1, 2


def tokenize_segments(tok, chunk_size: int, segments: list[str], links: list[int]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids, start offsets and token counts of a batch of segments.

    Start offsets are characters into each segment, given only where the assembler
    needs them: for tokens that begin a chunk (every chunk_size-th token of a document;
    -1 elsewhere), or for every token of a segment whose place in its document is
    unknown here (CONT). Materialising all offsets costs ~100 ns per token, an eighth of
    the tokeniser's own time.
    """
    encs = tok.encode_batch(segments, add_special_tokens=False)
    counts = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    ids = np.concatenate([np.array(e.ids, dtype=np.uint32) for e in encs]) if encs else \
        np.zeros(0, np.uint32)
    starts = np.full(len(ids), -1, dtype=np.int64)
    cs, at, in_doc = chunk_size, 0, None
    for e, link, n in zip(encs, links, counts.tolist()):
        in_doc = 0 if link == NEW else None if link == CONT else in_doc
        if in_doc is None:
            starts[at:at + n] = np.fromiter((o[0] for o in e.offsets), np.int64, count=n)
        else:
            for j in range((-in_doc) % cs, n, cs):
                starts[at + j] = e.token_to_chars(j)[0]
            in_doc += n
        at += n
    return ids, starts, counts


class DocState:
    """A document being assembled into chunks."""

    __slots__ = ("piece", "position", "doc", "first_chunk", "ids", "starts", "texts",
                 "text_base", "chars", "chars_sent", "n_chunks", "n_tokens", "n_bytes")

    def __init__(self, piece: int, position: int):
        self.piece = piece  # index of the piece within the split
        self.position = position  # piece-local line (text/jsonl) or row (parquet)
        self.doc = -1  # local id, assigned at the first chunk: empty documents get none
        self.first_chunk = -1
        self.ids: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.texts: list[str] = []
        self.text_base = 0  # document offset of texts[0][0]
        self.chars = 0  # characters assembled so far
        self.chars_sent = 0  # characters sent to the tokeniser so far
        self.n_chunks = self.n_tokens = self.n_bytes = 0


def _cut(text: str) -> int:
    """Where to cut a long text: the start of its last whitespace run (0 if none)."""
    i = text.rfind("\n")
    if i < len(text) // 4:
        i = max(i, text.rfind(" "))
    if i <= 0:
        return 0
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return i


class Batches:
    """Segments of a split's documents, grouped into tokeniser batches."""

    def __init__(self, segment_chars: int, item_chars: int):
        self.seg, self.item = segment_chars, item_chars
        self.entries: list[tuple] = []  # (SEG, doc, text) | (END, doc, None) | (PIECE_DONE, i, None)
        self.segments: list[str] = []
        self.links: list[int] = []
        self.size = 0
        self.last: DocState | None = None

    def add(self, doc: DocState, text: str) -> None:
        link = NEXT if doc is self.last else NEW if doc.chars_sent == 0 else CONT
        self.entries.append((SEG, doc, text))
        self.segments.append(text)
        self.links.append(link)
        doc.chars_sent += len(text)
        self.size += len(text)
        self.last = doc

    def take(self) -> tuple[list[tuple], list[str], list[int]]:
        out = (self.entries, self.segments, self.links)
        self.entries, self.segments, self.links, self.size, self.last = [], [], [], 0, None
        return out

    def stream(self, readers: list[PieceReader]) -> Iterator[tuple]:
        """Every piece's documents as segments, in batches of about `item` characters."""
        seg = self.seg
        for p, reader in enumerate(readers):
            doc: DocState | None = None
            buf: list[str] = []
            buf_len = 0
            for ev in reader.events():
                if isinstance(ev, DocStart):
                    doc = DocState(p, ev.position)
                    buf, buf_len = [], 0
                elif ev is DOC_END:
                    if buf:
                        self.add(doc, "".join(buf))
                    self.entries.append((END, doc, None))
                    doc = None
                    if self.size >= self.item:
                        yield self.take()
                else:  # a text piece: cut whole segments off the front of the buffer
                    buf.append(ev)
                    buf_len += len(ev)
                    if buf_len < seg:
                        continue
                    text = "".join(buf)
                    at = 0
                    while len(text) - at >= seg:
                        cut = _cut(text[at:at + 2 * seg]) or min(2 * seg, len(text) - at)
                        self.add(doc, text[at:at + cut])
                        at += cut
                        if self.size >= self.item:
                            yield self.take()
                    rest = text[at:]
                    buf, buf_len = ([rest], len(rest)) if rest else ([], 0)
            self.entries.append((PIECE_DONE, p, None))
        if self.entries:
            yield self.take()


class Assembler:
    """Turns tokenised segments back into chunks of whole documents, in order, and
    hands them to `rows` (`add(doc, tokens, length, texts)`, `add_doc(doc)`)."""

    def __init__(self, rows, chunk_size: int):
        self.rows = rows
        self.cs = chunk_size
        self.next_chunk = 0
        self.next_doc = 0
        self.empty_docs = 0

    def feed(self, entries: list[tuple], tokenized) -> None:
        ids, starts, counts = tokenized
        bounds = np.concatenate([[0], np.cumsum(counts)])
        k = 0
        for kind, obj, text in entries:
            if kind == SEG:
                a, b = bounds[k], bounds[k + 1]
                self._segment(obj, text, ids[a:b], starts[a:b])
                k += 1
            elif kind == END:
                self._end(obj)

    def _segment(self, doc: DocState, text: str, ids: np.ndarray, starts: np.ndarray):
        doc.ids.append(ids)
        doc.starts.append(starts + doc.chars)
        doc.texts.append(text)
        doc.chars += len(text)
        doc.n_bytes += len(text.encode("utf-8"))
        pending = sum(len(x) for x in doc.ids)
        if pending > self.cs:  # emit every chunk whose successor's start is known
            self._emit(doc, (pending - 1) // self.cs, final=False)

    def _end(self, doc: DocState) -> None:
        pending = sum(len(x) for x in doc.ids)
        if pending:
            self._emit(doc, -(-pending // self.cs), final=True)
        if doc.n_chunks == 0:
            self.empty_docs += 1
        else:
            self.rows.add_doc(doc)
        doc.ids = doc.starts = doc.texts = []

    def _emit(self, doc: DocState, n: int, final: bool) -> None:
        cs = self.cs
        ids = np.concatenate(doc.ids) if len(doc.ids) > 1 else doc.ids[0]
        starts = np.concatenate(doc.starts) if len(doc.starts) > 1 else doc.starts[0]
        text = "".join(doc.texts) if len(doc.texts) > 1 else doc.texts[0]
        used = min(n * cs, len(ids))
        tokens = np.zeros((n, cs), dtype=np.uint32)
        tokens.reshape(-1)[:used] = ids[:used]
        length = np.full(n, cs, dtype=np.int32)
        length[-1] = used - (n - 1) * cs
        # character boundaries of the n chunks, relative to text
        cuts = np.empty(n + 1, dtype=np.int64)
        cuts[0] = 0
        cuts[1:n] = starts[cs:n * cs:cs] - doc.text_base
        cuts[n] = len(text) if final else starts[n * cs] - doc.text_base
        if n > 1 and starts[cs:n * cs:cs].min() < 0 or not final and starts[n * cs] < 0:
            raise AssertionError("chunk boundary without a token offset")  # a bug, not input
        np.maximum.accumulate(cuts, out=cuts)
        if doc.doc < 0:
            doc.doc = self.next_doc
            self.next_doc += 1
            doc.first_chunk = self.next_chunk
        texts = [text[cuts[j]:cuts[j + 1]] for j in range(n)]
        self.rows.add(doc, doc.n_chunks, tokens, length, texts)
        doc.n_chunks += n
        doc.n_tokens += used
        self.next_chunk += n
        # keep what follows the emitted chunks
        rest = used if final else n * cs
        doc.ids = [ids[rest:]] if rest < len(ids) else []
        doc.starts = [starts[rest:]] if rest < len(starts) else []
        doc.texts = [text[cuts[n]:]] if cuts[n] < len(text) else []
        doc.text_base += int(cuts[n])
