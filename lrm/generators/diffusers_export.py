"""A diffusers denoiser (lrm's adapter, e.g. a distilled student) written back as diffusers files.

    save_diffusers_denoiser(student, "runs/student/model", extra={"student_steps": 4})
    unet = UNet2DConditionModel.from_pretrained("runs/student/model", subfolder="unet")   # plain diffusers
    pipe = StableDiffusionPipeline.from_pretrained("/models/sd-1-5", unet=unet)           # the teacher's pipeline
    denoiser = load_diffusers_denoiser("runs/student/model")                              # back into lrm

Layout, the denoiser's part of a pipeline folder (what save_pretrained writes for those components):

    <dir>/unet/ or <dir>/transformer/   config.json + diffusion_pytorch_model.safetensors (the model's save_pretrained)
    <dir>/scheduler/scheduler_config.json   the scheduler config the adapter was built with
    <dir>/lrm.json                          provenance and how to sample it (below)

lrm.json: {"format": "lrm-diffusers-denoiser", "lrm_version", "family", "prediction", "schedule_config",
"in_channels" (c of its latents), "options" (the weights' dtype and the adapter's family extras, e.g. FLUX latent_size),
"codec_settings" (the latent space its samples decode in: Codec.settings() of the teacher pipeline's VAE),
"text_encoder_id" (the lrm.text id of the prompt encoder it reads, "diffusers:<teacher pipeline>"),
"extra" (the trainer's: student_steps, timesteps, latent_shape, ...)}. codec_settings and text_encoder_id
are the denoiser's attributes (load_diffusers sets the text id; set `teacher.codec_settings =
codec.settings()` before build_roles); `lrm sample` / `lrm evaluate` need both (lrm.generators.runs).

A module carrying LoRA adapters (lrm.tuning.lora) is written with them merged into its weights, so the
folder holds the plain diffusers model. The text encoders, tokenizers and VAE are the teacher pipeline's,
unchanged: load them from there (the pipeline's from_pretrained with unet= / transformer= replaced).
"""

from __future__ import annotations

from pathlib import Path

from lrm.generators.diffusers_adapters import DiffusersDenoiser
from lrm.io import atomic_write_json

PROVENANCE = "lrm.json"
FORMAT = "lrm-diffusers-denoiser"  # lrm.json's "format"


def denoiser_folder_name(denoiser: DiffusersDenoiser) -> str:
    """unet for UNet2DConditionModel families, transformer for the others (the pipelines' attribute names)."""
    return "unet" if denoiser.model_class == "UNet2DConditionModel" else "transformer"


def save_diffusers_denoiser(denoiser: DiffusersDenoiser, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `denoiser` (its LoRA adapters merged) as diffusers files into `directory` (see the module doc);
    returns the directory."""
    from lrm import __version__
    from lrm.tuning.lora import has_lora, merged_copy

    if not isinstance(denoiser, DiffusersDenoiser):
        raise TypeError(f"save_diffusers_denoiser writes lrm's diffusers adapters, got a {type(denoiser).__name__}")
    if has_lora(denoiser):
        denoiser = merged_copy(denoiser)
    directory = Path(directory)
    denoiser.model.save_pretrained(directory / denoiser_folder_name(denoiser), safe_serialization=True)
    atomic_write_json(directory / "scheduler" / "scheduler_config.json", dict(denoiser.scheduler_config))
    atomic_write_json(directory / PROVENANCE, {"format": FORMAT, "lrm_version": __version__,
                                               "family": denoiser.family, "prediction": denoiser.prediction,
                                               "schedule_config": dict(denoiser.schedule_config),
                                               "in_channels": denoiser.in_channels, "options": denoiser.options(),
                                               "codec_settings": denoiser.codec_settings,
                                               "text_encoder_id": denoiser.text_encoder_id, "extra": extra or {}})
    return directory
