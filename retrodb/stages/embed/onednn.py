"""CPU speed: every `nn.Linear` of the model through oneDNN with a prepacked weight.

On the 2-core AMD EPYC this was written on, torch's default fp32 GEMM (MKL) reached
~110 GFLOP/s per core and oneDNN ~250; the maths is the same fp32 matmul (checked
against the plain layer when the model is loaded; the plain layer is kept where oneDNN
is missing or differs).
"""

from __future__ import annotations

import functools


def onednn_linear(model) -> int:
    """Route every nn.Linear of `model` through oneDNN (CPU, fp32); return how many.

    Each layer is checked against itself on a random input first; on any error or
    mismatch the model is left as it was. The choice is not timed: a timing would
    make the keys' last bits depend on the machine's load at start-up.
    """
    import torch
    from torch import nn

    if not torch.backends.mkldnn.is_available():
        return 0
    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if type(child) is nn.Linear]
    cls = onednn_class()
    try:
        new = [cls(child) for _, _, child in swaps]
        with torch.inference_mode():
            for (_, _, old), fast in zip(swaps, new):
                x = torch.randn(3, 5, old.in_features)
                if not torch.allclose(fast(x), old(x), rtol=1e-4, atol=1e-5):
                    return 0
    except RuntimeError:
        return 0
    for (parent, name, _), fast in zip(swaps, new):
        setattr(parent, name, fast)
    return len(swaps)


@functools.lru_cache(maxsize=None)
def onednn_class():
    """The oneDNN linear layer class (defined on first use: torch is imported lazily)."""
    import torch
    from torch import nn

    class OneDNNLinear(nn.Module):
        """`nn.Linear` (fp32, inference) through oneDNN with a prepacked weight."""

        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            w = linear.weight.detach().float().contiguous()
            b = (linear.bias.detach().float() if linear.bias is not None
                 else torch.zeros(self.out_features))
            self.weight = w.to_mkldnn()
            self.bias = b.contiguous().to_mkldnn()

        def forward(self, x):
            lead = x.shape[:-1]
            x2 = x.reshape(-1, self.in_features).contiguous().to_mkldnn()
            y = torch._C._nn.mkldnn_linear(x2, self.weight, self.bias).to_dense()
            return y.reshape(*lead, self.out_features)

    return OneDNNLinear
