"""Denoisers behind one forward signature (DESIGN.md, "A denoiser"): lrm's own latent DiT.

    from lrm.generators import build_dit, save_denoiser, load_denoiser
    model = build_dit("dit-s", in_channels=32, text_dim=384, frames=1)
    out = model(x_t, t, text, text_mask)      # (B, T, c, h, w) in model.prediction
"""

from lrm.generators.dit import DIT_PRESETS, LatentDiT, build_dit
from lrm.generators.io import DenoiserMismatchError, load_denoiser, save_denoiser

__all__ = ["DIT_PRESETS", "LatentDiT", "build_dit", "save_denoiser", "load_denoiser", "DenoiserMismatchError"]
