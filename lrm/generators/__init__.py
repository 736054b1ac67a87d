"""Denoisers behind one forward signature (DESIGN.md, "A denoiser"): lrm's own latent DiT and its
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

from lrm.generators.dit import DIT_PRESETS, LatentDiT, build_dit
from lrm.generators.diffusers_adapters import (
    FAMILIES as DIFFUSERS_FAMILIES,
    DiffusersDenoiser,
    DiffusersPromptEncoder,
    load_diffusers,
    load_diffusers_denoiser,
    load_diffusers_prompt_encoder,
)
from lrm.generators.io import DenoiserMismatchError, load_denoiser, save_denoiser
from lrm.generators.training import TeacherConfig, TeacherResult, sample_latents, train_teacher

__all__ = ["DIT_PRESETS", "LatentDiT", "build_dit", "save_denoiser", "load_denoiser", "DenoiserMismatchError",
           "DIFFUSERS_FAMILIES", "DiffusersDenoiser", "DiffusersPromptEncoder", "load_diffusers",
           "load_diffusers_denoiser", "load_diffusers_prompt_encoder",
           "TeacherConfig", "TeacherResult", "sample_latents", "train_teacher"]
