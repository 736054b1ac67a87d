"""Latent reward models (surrogates), named presets in a plain dict.

    from lrm.models import build
    model = build("image-cnn", in_channels=32)          # Tab. 10 of the DOLLAR supplementary
    scores = model(latents)                              # (B, T, c, h, w) -> (B,) in reward units

`SURROGATES` maps preset name -> factory(in_channels, text_dim=None, noise_aware=False, codec_settings=None).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from lrm.models.presets import ARCHITECTURES, Architecture, assemble
from lrm.models.surrogate import CodecMismatchError, LatentRewardModel, SurrogateInfo

SURROGATES: dict[str, Callable[..., LatentRewardModel]] = {name: partial(assemble, name) for name in ARCHITECTURES}

__all__ = ["SURROGATES", "ARCHITECTURES", "Architecture", "build", "needs_text", "needs_codec", "LatentRewardModel",
           "SurrogateInfo", "CodecMismatchError"]


def needs_text(preset: str) -> bool:
    """True when the preset reads text token embeddings (Tab. 11 cross-attention)."""
    return _architecture(preset).text


def build(preset: str, in_channels: int, text_dim: int | None = None, noise_aware: bool = False,
          codec_settings: dict | None = None) -> LatentRewardModel:
    """A freshly initialised surrogate of a named preset; `codec_settings` (Codec.settings() of the latent
    space) are needed by presets that run the codec's decoder (`needs_codec`)."""
    _architecture(preset)
    return SURROGATES[preset](in_channels, text_dim=text_dim, noise_aware=noise_aware, codec_settings=codec_settings)


def needs_codec(preset: str) -> bool:
    """True when the preset runs the codec's own decoder (build it with codec_settings)."""
    return _architecture(preset).codec_decoder


def _architecture(preset: str) -> Architecture:
    if preset not in ARCHITECTURES:
        raise KeyError(f"unknown surrogate preset {preset!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[preset]
