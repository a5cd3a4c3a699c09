"""Transformer building blocks: RMSNorm, rotary positions, attention, feed-forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., dim)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


def rotary(x, pos, base: float):
    """Rotate (..., t, head_dim) by positions pos (t,): RoFormer, half-split layout."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32)[:, None] * freq[None, :]  # (t, half)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention; self-attention when `ctx` is None, else cross-attention.

    Rotary positions are applied to queries and keys when positions are given, so the
    score of query i and key j depends on i - j only (relative positions).
    """

    def __init__(self, d: int, n_head: int, rope_base: float, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.rope_base, self.dropout = n_head, rope_base, dropout
        self.q = nn.Linear(d, d, bias=False)
        self.kv = nn.Linear(d, 2 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def heads(self, x):  # (b, t, d) -> (b, h, t, d/h)
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def forward(self, x, ctx=None, q_pos=None, k_pos=None, mask=None, causal=False):
        # x: (b, t, d) queries; ctx: (b, s, d) keys/values (x itself if None)
        # mask: (b, 1, 1|t, s) bool, True = may attend
        ctx = x if ctx is None else ctx
        q = self.heads(self.q(x))  # (b, h, t, dh)
        k, v = (self.heads(z) for z in self.kv(ctx).chunk(2, dim=-1))  # (b, h, s, dh)
        if q_pos is not None:
            q, k = rotary(q, q_pos, self.rope_base), rotary(k, k_pos, self.rope_base)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0)  # (b, h, t, dh)
        b, h, t, dh = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, h * dh))


class FeedForward(nn.Module):
    """The position-wise GELU feed-forward of a GPT-2-style transformer."""

    def __init__(self, d: int, mult: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d, mult * d, bias=False)
        self.down = nn.Linear(mult * d, d, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):  # (..., d)
        return self.drop(self.down(F.gelu(self.up(x))))
