"""The merged index in faiss's fast-scan layout, written to disk and memory-mapped.

4-bit PQ codes are scanned fastest in faiss's fast-scan layout: each list's codes packed
32 vectors to a block, so that a block is scored in SIMD registers. faiss holds that
layout only in RAM (`BlockInvertedLists`: code_size + 8 B per vector, plus its
power-of-two buffers, ~71 B per vector at 48 B codes). The merge writes it to disk
instead, in the file layout of faiss's `OnDiskInvertedLists`: for each list, its blocks
(`capacity` = size rounded up to 32 vectors, × code_size bytes), then its ids
(`capacity` × 8 bytes). Readers memory-map it like any on-disk index: the lists are
disk, shared between processes through the page cache, never copied into a process.

The merge streams one list at a time from the parts' memory-mapped lists, and faiss's
own code packer packs each block (the same bytes as faiss's in-RAM conversion).
"""

from __future__ import annotations

import numpy as np

from ...core.errors import RetrodbError
from ...core.progress import Progress, ProgressFn
from ...stores.searcher import BLOCK, fast_scan_of
from .factory import faiss


def list_arrays(lists, i: int, code_size: int) -> tuple[np.ndarray, np.ndarray]:
    """List `i` of every part, concatenated: codes (n, code_size) uint8, ids (n,) int64
    (each part's list copied once, straight into place)."""
    f = faiss()
    sizes = [il.list_size(i) for il in lists]
    codes = np.empty((sum(sizes), code_size), np.uint8)
    ids = np.empty(sum(sizes), np.int64)
    at = 0
    for il, n in zip(lists, sizes):
        if n:
            c, d = il.get_codes(i), il.get_ids(i)
            codes[at:at + n] = f.rev_swig_ptr(c, n * code_size).reshape(n, code_size)
            ids[at:at + n] = f.rev_swig_ptr(d, n)
            il.release_codes(i, c)
            il.release_ids(i, d)
            at += n
    return codes, ids


def pack_list(packer, codes: np.ndarray, capacity: int) -> np.ndarray:
    """The fast-scan blocks of one list's flat codes (zero codes fill the last block)."""
    f = faiss()
    flat = np.zeros((capacity, codes.shape[1]), np.uint8)
    flat[:len(codes)] = codes
    out = np.empty(capacity * codes.shape[1], np.uint8)
    step = BLOCK * codes.shape[1]
    for b in range(capacity // BLOCK):
        packer.pack_all(f.swig_ptr(flat[b * BLOCK:(b + 1) * BLOCK]),
                        f.swig_ptr(out[b * step:(b + 1) * step]))
    return out


def write_packed(trained, lists, ivf_tmp, ivf_name: str, idx_tmp,
                 on_progress: ProgressFn | None = None) -> int:
    """Write the parts' `lists` (memory-mapped plain IVF-PQ lists) as one fast-scan
    index: lists to `ivf_tmp`, the index (quantizer, codebooks; lists named
    `ivf_name`, read from the same directory) to `idx_tmp`. Returns the vector count."""
    f = faiss()
    index = fast_scan_of(trained)
    fs = f.downcast_index(f.extract_index_ivf(index))
    nlist, cs = int(fs.nlist), int(fs.code_size)
    packer = fs.get_CodePacker()
    if packer.block_size != BLOCK * cs:  # pragma: no cover - a faiss contract
        raise RetrodbError(f"fast-scan blocks of {packer.block_size} B, not {BLOCK} × {cs}")
    sizes = np.array([sum(il.list_size(i) for il in lists) for i in range(nlist)],
                     dtype=np.uint64)
    caps = (sizes + BLOCK - 1) // BLOCK * BLOCK
    with open(ivf_tmp, "wb") as out:
        for i in range(nlist):
            codes, ids = list_arrays(lists, i, cs)
            cap = int(caps[i])
            out.write(pack_list(packer, codes, cap).tobytes())
            out.write(np.concatenate([ids, np.full(cap - len(ids), -1, np.int64)]).tobytes())
            if on_progress and (i % 256 == 255 or i == nlist - 1):
                on_progress(Progress("pack lists", i + 1, nlist, "lists"))
    od = f.OnDiskInvertedLists(nlist, cs, str(ivf_tmp))
    od.set_all_lists_sizes(f.swig_ptr(caps))  # offsets and capacities: blocks + ids
    set_sizes(od, sizes)
    od.totsize = int(caps.sum()) * (cs + 8)
    fs.replace_invlists(od, True)
    od.this.disown()  # the index owns the lists now
    od.filename = ivf_name  # read next to the index (IO_FLAG_ONDISK_SAME_DIR)
    index.ntotal = fs.ntotal = int(sizes.sum())
    f.write_index(index, str(idx_tmp))
    return int(sizes.sum())


def set_sizes(od, sizes: np.ndarray) -> None:
    """Each list's vector count, below its block-rounded capacity. faiss offers no call
    for it (`resize` would move a small list's blocks), so the `lists` records (size,
    capacity, offset: three size_t each) are written in place, then checked."""
    f = faiss()
    recs = f.rev_swig_ptr(f.cast_integer_to_idx_t_ptr(int(od.lists.data().this)),
                          3 * len(sizes))
    caps = recs[1::3].copy()
    recs[0::3] = sizes.astype(np.int64)
    for i in {0, len(sizes) // 2, len(sizes) - 1}:
        rec = od.lists.at(i)
        if od.list_size(i) != sizes[i] or rec.capacity != caps[i]:  # pragma: no cover
            raise RetrodbError("faiss's OnDiskInvertedLists records changed layout; "
                               "this faiss version cannot hold packed lists")
