"""The RETRO model: chunked cross-attention never leaks the future."""

from __future__ import annotations

import pytest
import torch

from retrodb.core.errors import RetrodbError
from retrodb.training.model import Retro, RetroConfig, preset_config

M, L, K, V = 8, 5, 2, 101  # chunk size, chunks, neighbours, vocabulary


def small_model(seed=0, trained_cca=True) -> Retro:
    """A small RETRO. CCA's output starts at zero (a neutral start); the attention tests
    give it random weights, as training would, so that neighbours change something."""
    c = RetroConfig(vocab_size=V, chunk_size=M, d_model=32, n_layer=4, n_head=4,
                    cca_start=2, cca_every=2)
    model = Retro(c, seed=seed).eval()
    if trained_cca:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".cca." in name and name.endswith("out.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (2, L * M), generator=g)
    nb = torch.randint(0, V, (2, L, K, 2 * M), generator=g)
    mask = torch.rand(2, L, K, 2 * M, generator=g) > 0.2
    return idx, nb, mask


@torch.no_grad()
def test_cca_changing_neighbours_of_chunk_u_changes_nothing_before_its_last_token():
    model = small_model()
    idx, nb, mask = inputs()
    base = model(idx, nb, mask)  # (b, T, vocab)
    g = torch.Generator().manual_seed(7)
    for u in range(L):
        nb2, mask2 = nb.clone(), mask.clone()
        nb2[:, u] = torch.randint(0, V, nb2[:, u].shape, generator=g)
        mask2[:, u] = True
        out = model(idx, nb2, mask2)
        last = (u + 1) * M - 1  # last token of chunk u: the first that may see them
        assert torch.equal(out[:, :last], base[:, :last]), f"chunk {u} leaked"
        assert not torch.allclose(out[:, last], base[:, last]), \
            f"the last token of chunk {u} must attend to its neighbours"
        # the neighbours of chunk u reach tokens of chunk u+1 directly
        if u + 1 < L:
            assert not torch.allclose(out[:, last + 1:last + M], base[:, last + 1:last + M])


@torch.no_grad()
def test_changing_a_token_changes_no_earlier_logit():
    # the encoder reads the decoder states of the query chunk: that must stay causal too
    model = small_model()
    idx, nb, mask = inputs()
    base = model(idx, nb, mask)
    for p in (0, M - 1, M, 2 * M + 3, L * M - 1):
        idx2 = idx.clone()
        idx2[:, p] = (idx2[:, p] + 1) % V
        out = model(idx2, nb, mask)
        assert torch.equal(out[:, :p], base[:, :p]), f"token {p} leaked backwards"
        assert not torch.allclose(out[:, p], base[:, p])


@torch.no_grad()
def test_no_neighbours_is_retrieval_disabled_and_stays_finite():
    model = small_model()
    idx, nb, mask = inputs()
    none = model(idx)
    empty = model(idx, nb, torch.zeros_like(mask))
    assert torch.isfinite(none).all() and torch.equal(none, empty)
    full = model(idx, nb, mask)
    partial = mask.clone()
    partial[:, 2] = False  # chunk 2 without neighbours: finite, and only later tokens change
    out = model(idx, nb, partial)
    first = 3 * M - 1  # the first token that attends to chunk 2's neighbours
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :first], full[:, :first])
    assert not torch.allclose(out[:, first], full[:, first])


def test_baseline_has_no_cca_and_presets_validate():
    c = preset_config("tiny", V, M, retrieval=False)
    m = Retro(c)
    assert m.encoder is None and all(l.cca is None for l in m.layers)
    assert preset_config("base", 30522, 64).cca_layers == (5, 8, 11)  # layers 6, 9, 12
    with pytest.raises(RetrodbError, match="--preset"):
        preset_config("huge", V, M)


@torch.no_grad()
def test_loss_ignores_padding_targets():
    """The loss counts exactly the targets that are not -100, whatever the others are."""
    import torch.nn.functional as F

    model = small_model()
    idx, nb, mask = inputs()
    t = idx.roll(-1, 1)
    t[:, 10:] = -100
    logits = model(idx, nb, mask)
    want = F.cross_entropy(logits[:, :10].reshape(-1, V), t[:, :10].reshape(-1),
                           reduction="sum")
    got = model(idx, nb, mask, targets=t, reduction="sum")
    assert torch.allclose(got, want, rtol=1e-5)
    mean = model(idx, nb, mask, targets=t)
    assert torch.allclose(mean, want / (2 * 10), rtol=1e-5)
    # the inputs after the last real target do not change the loss
    idx2 = idx.clone()
    idx2[:, 11:] = (idx2[:, 11:] + 1) % V
    assert torch.allclose(model(idx2, nb, mask, targets=t, reduction="sum"), got)


@torch.no_grad()
def test_untrained_retro_is_its_baseline():
    """Paired, neutral start: the same decoder weights from the seed, and CCA's output
    at zero, so an untrained RETRO gives its baseline's logits, whatever the neighbours."""
    from dataclasses import replace

    retro = small_model(trained_cca=False)
    base = Retro(replace(retro.config, retrieval=False), seed=0).eval()
    shared = base.state_dict()
    mine = retro.state_dict()
    assert shared and all(torch.equal(mine[k], v) for k, v in shared.items())
    idx, nb, mask = inputs()
    assert (retro(idx, nb, mask) - base(idx)).abs().max() < 1e-6
    # another seed gives another decoder; the retrieval weights do not move the decoder's
    other = Retro(retro.config, seed=1)
    assert not torch.equal(other.embed.weight, retro.embed.weight)
