"""The model's one config, and the presets `--preset` names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ...core.errors import RetrodbError


@dataclass(frozen=True)
class RetroConfig:
    """Shape of a RETRO model (decoder + chunked cross-attention + neighbour encoder)."""

    vocab_size: int  # the database tokenizer's vocabulary (retrodb.json)
    chunk_size: int = 64  # m: tokens per chunk, the database's (paper: 64)
    d_model: int = 896  # width of decoder and encoder (paper 172M model: 896)
    n_layer: int = 12  # decoder layers (paper 172M: 12)
    n_head: int = 14  # attention heads; head size d_model / n_head = 64
    ff_mult: int = 4  # feed-forward width = ff_mult × d_model (paper: 4)
    enc_layers: int = 2  # bidirectional encoder layers over each neighbour (paper: 2)
    cca_start: int = 6  # first decoder layer (1-based) with CCA (paper: 6)
    cca_every: int = 3  # then every cca_every-th layer: 6, 9, 12, … (paper: 3)
    retrieval: bool = True  # False: the same decoder without CCA or encoder (baseline)
    dropout: float = 0.0  # off: the paper's models see each token about once
    rope_base: float = 10000.0  # rotary position base (RoFormer default)

    @property
    def cca_layers(self) -> tuple[int, ...]:
        """0-based indices of the decoder layers that hold a CCA module."""
        if not self.retrieval:
            return ()
        return tuple(range(self.cca_start - 1, self.n_layer, self.cca_every))

    def validate(self) -> None:
        if self.d_model % self.n_head:
            raise RetrodbError(f"model: d_model {self.d_model} is not a multiple of "
                               f"n_head {self.n_head}")
        if self.retrieval and not self.cca_layers:
            raise RetrodbError(f"model: no CCA layer (cca_start {self.cca_start} > "
                               f"n_layer {self.n_layer}); use --no-retrieval or a "
                               "larger preset")

    def to_dict(self) -> dict:
        return asdict(self)


# Presets fix the shape; vocab_size and chunk_size come from the database.
PRESETS: dict[str, dict] = {
    # seconds on a CPU: for tests
    "tiny": dict(d_model=64, n_layer=4, n_head=4, enc_layers=2, cca_start=2, cca_every=2),
    # ~6M parameters with a 16k vocabulary (3M of them the tied embedding): shows
    # retrieval's effect in about an hour on 2 CPU cores (BENCHMARKS.md, "RETRO vs its
    # baseline"); CCA in layers 3 and 6, one encoder layer
    "cpu": dict(d_model=192, n_layer=6, n_head=3, enc_layers=1, cca_start=3, cca_every=3),
    # ~25M parameters with a 30k vocabulary (10M of them the tied embedding): CPU-trainable
    "small": dict(d_model=320, n_layer=9, n_head=5, enc_layers=2, cca_start=6, cca_every=3),
    # the paper's 172M shape (Borgeaud et al., Table 8)
    "base": dict(d_model=896, n_layer=12, n_head=14, enc_layers=2, cca_start=6,
                 cca_every=3),
}


def preset_config(name: str, vocab_size: int, chunk_size: int,
                  retrieval: bool = True) -> RetroConfig:
    if name not in PRESETS:
        raise RetrodbError(f"--preset {name}: unknown; use one of {', '.join(PRESETS)}")
    cfg = RetroConfig(vocab_size=vocab_size, chunk_size=chunk_size, retrieval=retrieval,
                      **PRESETS[name])
    cfg.validate()
    return cfg


def config_from_dict(d: dict) -> RetroConfig:
    return replace(RetroConfig(vocab_size=d["vocab_size"]), **d)
