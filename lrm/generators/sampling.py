"""Generate samples from a denoiser: prompts -> latents -> decoded pixels, reproducible per sample seed.

    samples = generate(model, ["a small red circle over a blue plain background"] * 4, seeds=[0, 1, 2, 3],
                       latent_shape=(1, 32, 8, 8), steps=50, cfg=7.5)
    samples.latents   # (N, T, c, h, w)     samples.pixels   # (N, T', 3, H, W) in [0, 1]

- `generate`: the teacher's sampler: deterministic DDIM (lrm.diffusion.samplers.sample, eta = 0) on the
  schedule's trailing grid of `steps` steps; for 50 steps on VP-DDPM that is DOLLAR's teacher grid
  [999, 979, ..., 19] (`TEACHER_TIMESTEPS`).
- `generate_few_step`: a distilled student's sampler (lrm.diffusion.samplers.sample_few_step): predict x0, re-noise
  to the next timestep, on DOLLAR's student grids (1: [999]; 2: [999, 499]; 4: [999, 749, 499, 249]).
  Students carry the guidance they were distilled with, so its cfg defaults to 1 (no guidance).

Classifier-free guidance uses the denoiser's own null branch: the unconditional half of the batch
has an all-False text mask row (the DiT's null token alone), and cfg = 1 evaluates the conditional
branch only. Reproducibility: every sample owns a CPU torch.Generator seeded with its seed, which
draws its x_T and then any noise its sampler needs; so a sample depends only on (seed, prompt,
steps, cfg, the model) and not on the batch it is computed in nor on the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lrm.configs import DEFAULT_BATCH_SIZE, DEFAULT_CFG, DEFAULT_STEPS
from lrm.diffusion import samplers
from lrm.diffusion.schedules import schedule_from_config
from lrm.text.base import pad_rows



@dataclass(frozen=True)
class Samples:
    latents: torch.Tensor  # (N, T, c, h, w) float32 on the CPU, as the codec's latent space holds them
    pixels: torch.Tensor  # (N, T', 3, H, W) float32 in [0, 1] on the CPU: the latents decoded by the codec
    prompts: list[str]  # (N,) the prompt of each sample
    seeds: list[int]  # (N,) the seed of each sample
    timesteps: list[int | float]  # the sampling grid, noisiest first
    cfg: float  # guidance scale (1: conditional branch only)


def expand_requests(prompts: Sequence[str], per_prompt: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Prompt-major requests: each prompt `per_prompt` times with seeds seed, seed + 1, ... (the same seeds for
    every prompt, so the columns of a grid share their starting noise)."""
    if per_prompt < 1:
        raise ValueError(f"per_prompt must be >= 1, got {per_prompt}")
    return [p for p in prompts for _ in range(per_prompt)], [seed + k for _ in prompts for k in range(per_prompt)]


def generate(denoiser, prompts: Sequence[str], seeds: Sequence[int] | int = 0, *, latent_shape: Sequence[int],
             steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG, codec=None, text_encoder=None,
             batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Samples:
    """DDIM samples of `denoiser` for `prompts` (N,) at `seeds` ((N,), or an int s: s, s + 1, ..., s + N - 1),
    latents of `latent_shape` (T, c, h, w), decoded by `codec` (default: the codec the denoiser records).
    text_encoder: default lrm.text.load(denoiser.text_encoder_id)."""
    _check_steps_cfg(steps, cfg)
    schedule = schedule_from_config(denoiser.schedule_config)
    grid = schedule.timesteps(steps)

    def loop(denoise_fn, x_T, noise):
        return samplers.sample(denoise_fn, x_T, grid, schedule, denoiser.prediction, eta=0.0, noise=noise)

    return _generate(denoiser, loop, grid, prompts, seeds, latent_shape, cfg, codec, text_encoder, batch_size,
                     progress, desc="sample")


def generate_few_step(denoiser, prompts: Sequence[str], seeds: Sequence[int] | int = 0, *,
                      latent_shape: Sequence[int], steps: int = 4, cfg: float = 1.0, codec=None, text_encoder=None,
                      batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Samples:
    """A distilled student's samples (`samplers.sample_few_step` on its schedule's grid of `steps` steps: on VP the
    trailing grid, DOLLAR's `STUDENT_TIMESTEPS` for 1, 2 and 4; on flow `FlowSchedule.timesteps`); arguments as in
    `generate`."""
    _check_steps_cfg(steps, cfg)
    schedule = schedule_from_config(denoiser.schedule_config)
    grid = schedule.timesteps(steps)

    def loop(denoise_fn, x_T, noise):
        return samplers.sample_few_step(denoise_fn, x_T, grid, schedule, denoiser.prediction, noise=noise)

    return _generate(denoiser, loop, grid, prompts, seeds, latent_shape, cfg, codec, text_encoder, batch_size,
                     progress, desc="sample (few-step)")


# ---------------------------------------------------------------------------------------------------
# shared machinery
# ---------------------------------------------------------------------------------------------------

def _check_steps_cfg(steps: int, cfg: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not cfg >= 0:
        raise ValueError(f"cfg must be >= 0 (1: no guidance, 0: unconditional), got {cfg}")


def guided(denoiser, text: torch.Tensor, mask: torch.Tensor, cfg: float, on_call: Callable[[], None] | None = None):
    """denoise_fn(x_t (B, ...), t (B,)) -> the denoiser's output under classifier-free guidance with scale cfg:
    conditional on text (B, L, D) / mask (B, L), unconditional through all-False mask rows (the null branch).
    cfg = 1 evaluates the conditional branch alone."""

    def denoise_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if on_call is not None:
            on_call()
        if cfg == 1:
            return denoiser(x, t, text, mask)
        both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, text]),
                        torch.cat([mask, torch.zeros_like(mask)]))
        cond, uncond = both.chunk(2)
        return samplers.cfg(cond, uncond, cfg)

    return denoise_fn


def per_sample_noise(generators: list[torch.Generator]) -> Callable[[torch.Tensor], torch.Tensor]:
    """randn_like(x (B, ...)) drawing row i from generators[i] (on the CPU), in x's dtype and device."""

    def randn_like(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(generators):
            raise ValueError(f"noise for a batch of {x.shape[0]} but {len(generators)} generators")
        rows = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(rows).to(device=x.device, dtype=x.dtype)

    return randn_like


def text_windows(prompts: Sequence[str], batch_size: int, per_pass: int) -> list[range]:
    """Split the requests into consecutive ranges of whole batches whose distinct prompts fit one forward pass of
    the text encoder (`per_pass` prompts; always at least one batch), so the prompts of many small batches are
    embedded together: e.g. 16 prompts x 4 seeds in batches of 16 make one pass of 16 prompts, not 4 of 4."""
    windows, start, seen = [], 0, set()
    for first in range(0, len(prompts), batch_size):
        batch = set(prompts[first : first + batch_size])
        if seen and len(seen | batch) > per_pass:
            windows.append(range(start, first))
            start, seen = first, set()
        seen |= batch
    windows.append(range(start, len(prompts)))
    return windows


def _check_requests(prompts: Sequence[str], seeds: Sequence[int] | int, latent_shape: Sequence[int],
                    denoiser) -> tuple[list[str], list[int], tuple[int, ...]]:
    if isinstance(prompts, str):
        raise TypeError("generate takes a list of prompts, not a single string; use [prompt]")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("generate got no prompts")
    seeds = [seeds + i for i in range(len(prompts))] if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"generate got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    shape = tuple(int(n) for n in latent_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"latent_shape must be (T, c, h, w) of positive sizes, got {tuple(latent_shape)}")
    if shape[1] != denoiser.in_channels:
        raise ValueError(f"latent_shape {shape} has {shape[1]} channels but the denoiser takes {denoiser.in_channels}")
    return prompts, seeds, shape


def _resolve_codec(codec, denoiser):
    if codec is not None:
        if denoiser.codec_settings is not None and codec.settings() != denoiser.codec_settings:
            raise ValueError(f"codec {codec.codec_id} is not the latent space the denoiser was trained in "
                             f"({denoiser.codec_settings}); pass that codec, or codec=None to rebuild it")
        return codec
    if denoiser.codec_settings is None:
        raise ValueError("the denoiser records no codec settings, so its samples cannot be decoded; pass codec=")
    from lrm.codecs import from_settings

    return from_settings(denoiser.codec_settings)


def _resolve_text_encoder(text_encoder, denoiser):
    if text_encoder is not None:
        if denoiser.text_encoder_id is not None and text_encoder.id != denoiser.text_encoder_id:
            raise ValueError(f"text encoder {text_encoder.id!r} is not the one the denoiser was trained on "
                             f"({denoiser.text_encoder_id!r}); pass that encoder, or text_encoder=None to load it")
        return text_encoder
    if denoiser.text_encoder_id is None:
        raise ValueError("the denoiser records no text encoder id, so prompts cannot be encoded; pass text_encoder=")
    from lrm.text import load

    return load(denoiser.text_encoder_id)


def _generate(denoiser, loop, grid: torch.Tensor, prompts, seeds, latent_shape, cfg: float, codec, text_encoder,
              batch_size: int, progress: bool, desc: str) -> Samples:
    prompts, seeds, shape = _check_requests(prompts, seeds, latent_shape, denoiser)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    codec = _resolve_codec(codec, denoiser)
    text_encoder = _resolve_text_encoder(text_encoder, denoiser)
    device = next(denoiser.parameters()).device
    codec = codec.to(device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts) * len(grid), desc=desc, unit="step", leave=False)
    latents, pixels = [], []
    try:
        with torch.no_grad():
            for window in text_windows(prompts, batch_size, text_encoder.batch_size):
                rows = text_encoder.token_rows(prompts[window.start : window.stop])  # prompt -> (L_i, D)
                for start in range(window.start, window.stop, batch_size):
                    part_prompts, part_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
                    generators = [torch.Generator().manual_seed(s) for s in part_seeds]
                    x_T = torch.stack([torch.randn(shape, generator=g) for g in generators])  # (b, T, c, h, w)
                    x_T = x_T.to(device)
                    text, mask = pad_rows([rows[p] for p in part_prompts])  # (b, L, D), (b, L); L: longest here
                    on_call = (lambda n=len(part_prompts): bar.update(n)) if bar is not None else None
                    denoise_fn = guided(denoiser, text.to(device), mask.to(device), cfg, on_call)
                    x0 = loop(denoise_fn, x_T, per_sample_noise(generators)).float()
                    latents.append(x0.cpu())
                    pixels.append(codec.decode(x0).clamp(0, 1).float().cpu())
    finally:
        if bar is not None:
            bar.close()
    return Samples(torch.cat(latents), torch.cat(pixels), prompts, seeds, grid.tolist(), float(cfg))
