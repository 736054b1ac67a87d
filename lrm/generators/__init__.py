"""Denoisers behind one forward signature (docs/generators.md): lrm's own latent DiT and its
training, and diffusers denoisers (SD 1.x/2.x, SDXL, SD3, FLUX, Wan) through
lrm.generators.diffusers_adapters.

    from lrm.generators import build_dit, save_denoiser, load_denoiser
    model = build_dit("dit-s", in_channels=32, text_dim=384, frames=1)
    out = model(x_t, t, text, text_mask)      # (B, T, c, h, w) in model.prediction

    from lrm.generators import TeacherConfig, train_teacher
    train_teacher(store, TeacherConfig(), "runs/teacher")   # RUN/model, RUN/report.html, ...
    from lrm.generators.embedded import embedded_teacher
    model = load_denoiser(embedded_teacher() / "model")      # the cached embedded-default teacher

    denoiser, prompts = load_diffusers("/models/stable-diffusion-v1-5")   # local folder or HF cache
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it; imported on first use, so that `import lrm.generators.embedded`
# (the CLI's option defaults) does not import torch
_EXPORTS = {
    "DIT_PRESETS": "dit", "LatentDiT": "dit", "build_dit": "dit", "inflate": "dit",
    "DiffusersDenoiser": "diffusers_adapters", "DiffusersPromptEncoder": "diffusers_adapters",
    "load_diffusers": "diffusers_adapters", "load_diffusers_denoiser": "diffusers_adapters",
    "load_diffusers_prompt_encoder": "diffusers_adapters",
    "DenoiserMismatchError": "io", "load_denoiser": "io", "save_denoiser": "io",
    "TeacherConfig": "training", "TeacherResult": "training", "sample_latents": "training",
    "train_teacher": "training",
}
__all__ = [*_EXPORTS, "DIFFUSERS_FAMILIES"]


def __getattr__(name: str):
    if name == "DIFFUSERS_FAMILIES":
        return importlib.import_module("lrm.generators.diffusers_adapters").FAMILIES
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lrm.generators.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lrm.generators' has no attribute {name!r}")
