"""Latent reward models (surrogates), named presets in a plain dict.

    from lrm.models import build
    model = build("image-cnn", in_channels=32)          # Tab. 10 of the DOLLAR supplementary
    model = build("image-cnn", in_channels=32, width=2)  # the same with twice the conv channels
    scores = model(latents)                              # (B, T, c, h, w) -> (B,) in reward units

`PRESETS` maps preset name -> its spec (lrm.models.presets.Preset: reward kind, backbone, widths);
`DEFAULT_PRESETS` names the recommended preset per reward kind.
"""

from __future__ import annotations

from lrm.models.presets import DEFAULT_PRESETS, PRESETS, REMOVED_PRESETS, Preset, build, check_preset
from lrm.models.surrogate import CodecMismatchError, LatentRewardModel, SurrogateInfo

__all__ = ["PRESETS", "DEFAULT_PRESETS", "REMOVED_PRESETS", "Preset", "build", "check_preset", "needs_text",
           "LatentRewardModel", "SurrogateInfo", "CodecMismatchError"]


def needs_text(preset: str) -> bool:
    """True when the preset reads text token embeddings (Tab. 11 cross-attention)."""
    return check_preset(preset).text
