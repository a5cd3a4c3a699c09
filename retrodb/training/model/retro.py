"""The RETRO model: a causal decoder with chunked cross-attention to encoded neighbours.

    tokens (b, T) ──embed──▶ decoder layers ─ … ─▶ norm ─▶ logits (b, T, vocab)
                                  │ (first CCA layer: states H after self-attention)
    neighbours (b, L, k, r) ──embed──▶ encoder(·, H) ──▶ E (b, L, k, r, d) ──▶ every CCA

Embeddings are shared by decoder, encoder and output head (tied).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cca import ChunkedCrossAttention
from .config import RetroConfig
from .layers import Attention, FeedForward, RMSNorm


class EncoderLayer(nn.Module):
    """Bidirectional self-attention within one neighbour, cross-attention to the
    decoder states of the chunk that retrieved it, feed-forward."""

    def __init__(self, c: RetroConfig):
        super().__init__()
        d = c.d_model
        self.n1, self.n2, self.n3 = RMSNorm(d), RMSNorm(d), RMSNorm(d)
        self.self_attn = Attention(d, c.n_head, c.rope_base, c.dropout)
        self.cross_attn = Attention(d, c.n_head, c.rope_base, c.dropout)
        self.ff = FeedForward(d, c.ff_mult, c.dropout)

    def forward(self, x, pos, mask, h_chunk):
        # x: (b*L*k, r, d) neighbour tokens; mask: (b*L*k, 1, 1, r)
        # h_chunk: (b*L, m, d) decoder states of the query chunks
        x = x + self.self_attn(self.n1(x), q_pos=pos, k_pos=pos, mask=mask)
        n, r, d = x.shape
        q = self.n2(x).reshape(h_chunk.shape[0], -1, d)  # (b*L, k*r, d)
        x = x + self.cross_attn(q, h_chunk).reshape(n, r, d)
        return x + self.ff(self.n3(x))


class Encoder(nn.Module):
    def __init__(self, c: RetroConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.enc_layers))
        self.norm = RMSNorm(c.d_model)

    def forward(self, x, mask, h):
        # x: (b, L, k, r, d) embedded neighbours; mask: (b, L, k, r); h: (b, T, d)
        b, L, k, r, d = x.shape
        h_chunk = h.reshape(b * L, -1, d)  # (b*L, m, d)
        flat = x.reshape(b * L * k, r, d)
        m = mask.reshape(b * L * k, r).clone()
        m[:, 0] |= ~m.any(-1)  # an empty neighbour attends to one slot; CCA masks it
        pos = torch.arange(r, device=x.device)
        for layer in self.layers:
            flat = layer(flat, pos, m[:, None, None, :], h_chunk)
        return self.norm(flat).reshape(b, L, k, r, d)


class DecoderLayer(nn.Module):
    def __init__(self, c: RetroConfig, cca: bool):
        super().__init__()
        d = c.d_model
        self.n1, self.n3 = RMSNorm(d), RMSNorm(d)
        self.attn = Attention(d, c.n_head, c.rope_base, c.dropout)
        self.ff = FeedForward(d, c.ff_mult, c.dropout)
        self.cca = ChunkedCrossAttention(d, c.n_head, c.chunk_size, c.rope_base,
                                         c.dropout) if cca else None
        self.n2 = RMSNorm(d) if cca else None

    def forward(self, x, pos, encode=None, enc=None, enc_mask=None):
        # x: (b, T, d); encode(x) -> E, run once at the first CCA layer
        x = x + self.attn(self.n1(x), q_pos=pos, k_pos=pos, causal=True)
        if self.cca is not None:
            if enc is None:
                enc = encode(x)  # (b, L, k, r, d), conditioned on the states H here
            x = x + self.cca(self.n2(x), enc, enc_mask)
        return x + self.ff(self.n3(x)), enc


def is_retrieval(name: str) -> bool:
    """Parameters that only RETRO has: the neighbour encoder, CCA and its norm."""
    return name.startswith("encoder.") or ".cca." in name or ".n2." in name


class Retro(nn.Module):
    """RETRO, or (retrieval=False) its baseline: the same decoder without CCA."""

    def __init__(self, c: RetroConfig, seed: int = 0):
        super().__init__()
        c.validate()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        cca = set(c.cca_layers)
        self.layers = nn.ModuleList(DecoderLayer(c, i in cca) for i in range(c.n_layer))
        self.encoder = Encoder(c) if c.retrieval else None
        self.norm = RMSNorm(c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.initialise(seed)

    @torch.no_grad()
    def initialise(self, seed: int) -> None:
        """Paired, neutral start. The decoder's weights come from a generator of the
        seed alone and the retrieval weights from another, so RETRO and its baseline
        start with the same decoder; CCA's output projection starts at zero, so an
        untrained RETRO computes exactly what its baseline does, and retrieval enters
        only as far as training finds it useful (as a zero-initialised residual branch).
        GPT-2 init otherwise: N(0, 0.02), residual projections scaled by 1/√(2 layers)."""
        dec = torch.Generator().manual_seed(seed)
        ret = torch.Generator().manual_seed(seed + 7919)  # any other stream
        deep = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            g = ret if is_retrieval(name) else dec
            if p.dim() == 1:  # RMSNorm gains
                nn.init.ones_(p)
            elif ".cca." in name and name.endswith("out.weight"):
                nn.init.zeros_(p)
            else:
                std = deep if name.endswith(("out.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std, generator=g)

    def hidden(self, idx, neighbours=None, neighbour_mask=None):
        """Final normed states (b, T, d) of tokens idx (b, T), T a multiple of m.

        neighbours: (b, L, k, r) token ids of each chunk's neighbours (+continuation);
        neighbour_mask: (b, L, k, r) bool, True = real token. None = no retrieval.
        """
        b, T = idx.shape
        x = self.drop(self.embed(idx))  # (b, T, d)
        pos = torch.arange(T, device=idx.device)
        use = self.encoder is not None and neighbours is not None
        if self.encoder is not None and neighbours is None:  # retrieval disabled
            L, m = T // self.config.chunk_size, self.config.chunk_size
            neighbours = idx.new_zeros(b, L, 1, 2 * m)
            neighbour_mask = torch.zeros(b, L, 1, 2 * m, dtype=torch.bool,
                                         device=idx.device)
            use = True
        enc = None
        encode = (lambda h: self.encoder(self.embed(neighbours), neighbour_mask, h)) \
            if use else None
        for layer in self.layers:
            x, enc = layer(x, pos, encode, enc, neighbour_mask)
        return self.norm(x)

    def forward(self, idx, neighbours=None, neighbour_mask=None, targets=None,
                reduction: str = "mean"):
        """Logits (b, T, vocab); or, with targets (b, T; -100 = ignore), the loss.

        With targets, logits are computed only where a target exists.
        """
        h = self.hidden(idx, neighbours, neighbour_mask)
        if targets is None:
            return h @ self.embed.weight.T
        keep = targets != -100
        logits = h[keep] @ self.embed.weight.T  # (n, vocab)
        return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
