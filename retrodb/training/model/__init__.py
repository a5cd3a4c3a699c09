"""The bundled RETRO model (decoder, chunked cross-attention, neighbour encoder)."""

from .config import PRESETS, RetroConfig, config_from_dict, preset_config
from .retro import Retro, is_retrieval

__all__ = ["PRESETS", "Retro", "RetroConfig", "config_from_dict", "is_retrieval",
           "preset_config"]
