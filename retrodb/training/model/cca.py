"""Chunked cross-attention (CCA): how decoder tokens read the retrieved neighbours.

A sequence of T = L × m tokens is split into chunks C_0 … C_{L-1} of m tokens. The
neighbours retrieved for chunk C_u (with its text complete) are encoded into E_u.

Which token attends to which neighbours, and why: the token at position t attends to
E_u with u = ⌊(t + 1) / m⌋ - 1, i.e. the **last token of chunk u and the first m - 1
tokens of chunk u + 1** attend to the neighbours of chunk u. Token t predicts token
t + 1, and its input is tokens 0 … t. Chunk u is complete in that input exactly from
its last token, (u + 1)m - 1, on; retrieving with chunk u earlier would show the model
neighbours chosen with tokens it has not seen yet, i.e. leak the future. The first
m - 1 tokens of the sequence attend to nothing (there is no complete chunk yet); the
last token of the sequence attends to the neighbours of the last chunk (C_{L-1} is
complete there), the rest of that attending chunk is padding and dropped.

Implementation (as in the paper): shift the hidden states left by m - 1, pad to
L × m, cut into L attending chunks, and let attending chunk u cross-attend to the k × r
encoded neighbour tokens of C_u (r = 2m: the neighbour and its continuation). Rotary
positions give relative positions between the query token within its attending chunk
and the neighbour token. Neighbour tokens that are padding are masked; a chunk with no
neighbour at all gets a zero update, which is what "retrieval disabled" means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Attention


class ChunkedCrossAttention(nn.Module):
    def __init__(self, d: int, n_head: int, chunk_size: int, rope_base: float,
                 dropout: float = 0.0):
        super().__init__()
        self.m = chunk_size
        self.attn = Attention(d, n_head, rope_base, dropout)

    def forward(self, h, enc, enc_mask):
        # h: (b, T, d) decoder states, T = L*m; enc: (b, L, k, r, d) encoded neighbours
        # enc_mask: (b, L, k, r) bool, True = real neighbour token
        b, T, d = h.shape
        _, L, k, r, _ = enc.shape
        m = self.m
        q = F.pad(h[:, m - 1:], (0, 0, 0, m - 1))  # (b, T, d): token (u+1)m-1+i at u*m+i
        q = q.reshape(b * L, m, d)  # attending chunk u = tokens (u+1)m-1 … (u+2)m-2
        kv = enc.reshape(b * L, k * r, d)  # (b*L, k*r, d)
        mask = enc_mask.reshape(b * L, k * r)
        has_any = mask.any(-1)  # (b*L,): chunks with at least one neighbour token
        mask = mask.clone()
        mask[:, 0] |= ~has_any  # keep softmax finite; those rows are zeroed below
        q_pos = torch.arange(m, device=h.device)
        k_pos = torch.arange(r, device=h.device).repeat(k)  # position within neighbour
        y = self.attn(q, kv, q_pos, k_pos, mask[:, None, None, :])  # (b*L, m, d)
        y = y * has_any[:, None, None].to(y.dtype)
        y = y.reshape(b, T, d)[:, : T - (m - 1)]  # drop the padded queries after T
        return F.pad(y, (0, 0, m - 1, 0))  # (b, T, d): first m-1 tokens get nothing
