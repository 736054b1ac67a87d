"""What every loss term does with a denoiser, on (alpha, sigma) and (x0_hat, eps_hat) only (docs/distill.md):
predict under classifier-free guidance, noise a clean latent, draw timesteps from a
fraction of the schedule, and sample the few-step student. Any model with the denoiser signature
model(x_t, t, text, text_mask) and `prediction` / `schedule_config` attributes works.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
from torch import nn

from lrm.diffusion import samplers
from lrm.diffusion.parameterisations import to_x0_eps, training_target
from lrm.diffusion.schedules import Schedule, VPSchedule, schedule_from_config


@dataclass
class Batch:
    """One micro-batch: prompts as text tokens and, for terms on real data (CD, ADM), real latents."""

    text: torch.Tensor  # (B, L, D) text-encoder tokens
    text_mask: torch.Tensor  # (B, L) bool
    x0: torch.Tensor | None = None  # (B, T, c, h, w) real latents, or None when no term needs data
    prompts: list[str] | None = None  # (B,) the prompts as text, for rewards that read them (reward hooks)

    @property
    def size(self) -> int:
        return self.text.shape[0]

    def real(self, who: str) -> torch.Tensor:
        if self.x0 is None:
            raise ValueError(f"{who} needs real latents (Batch.x0) and this batch has none")
        return self.x0


class Prediction(NamedTuple):
    x0: torch.Tensor  # (B, ...) x0_hat
    eps: torch.Tensor  # (B, ...) eps_hat


def schedule_of(model: nn.Module) -> Schedule:
    return schedule_from_config(model.schedule_config)


def predict(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
            guidance: float = 1.0) -> Prediction:
    """(x0_hat, eps_hat) of `model` at x_t (B, ...), t (B,), with classifier-free guidance `guidance` (1: the
    conditional branch alone; the unconditional branch is an all-False mask row, lrm's null token)."""
    if guidance == 1.0:
        out = model(x_t, t, text, text_mask)
    else:
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text, text]),
                     torch.cat([text_mask, torch.zeros_like(text_mask)]))
        cond, uncond = both.chunk(2)
        out = samplers.cfg(cond, uncond, guidance)
    alpha, sigma = schedule_of(model).alpha_sigma(t, x_t)
    return Prediction(*to_x0_eps(model.prediction, out.to(x_t.dtype), x_t, alpha, sigma))


def diffuse(model: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_t = alpha_t x0 + sigma_t eps on `model`'s schedule; x0, eps (B, ...), t (B,)."""
    alpha, sigma = schedule_of(model).alpha_sigma(t, x0)
    return alpha * x0 + sigma * eps


def timesteps_between(schedule: Schedule, low: float, high: float, batch_size: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(B,) timesteps uniform on [low T, high T] in the schedule's own units: integers on VP (e.g. AVDM2's
    t ~ U[0.2T, 0.98T] -> 200..980), floats on flow."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"timestep fractions must satisfy 0 <= low < high <= 1, got [{low}, {high}]")
    T = schedule.num_timesteps
    if isinstance(schedule, VPSchedule):
        lo, hi = round(low * T), min(round(high * T), T - 1)
        return torch.randint(lo, hi + 1, (batch_size,), generator=generator)
    return (low + (high - low) * torch.rand(batch_size, generator=generator, dtype=torch.float64)).float() * T


def randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal (drawn on the generator's CPU stream) in like's dtype and device."""
    return torch.randn(tuple(shape), generator=generator).to(device=like.device, dtype=like.dtype)


def denoising_loss(model: nn.Module, x0: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """(B,) the model's own diffusion objective on x0 (B, ...): || model(x_t, t) - target ||^2 averaged
    over elements, t from the schedule's training draw, target per its prediction type (DOLLAR Eq. 13 for
    "conjugate-v"). A fake score trained on student samples with it tracks the student's score."""
    schedule = schedule_of(model)
    t = schedule.sample_timesteps(x0.shape[0], generator=generator).to(x0.device)
    eps = randn(x0.shape, generator, x0)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    out = model(alpha * x0 + sigma * eps, t, text, text_mask)
    target = training_target(model.prediction, x0, eps, alpha, sigma)
    return mean_per_sample((out.float() - target.float()).pow(2))


def mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,) mean over all but the batch dimension, in float32."""
    return x.float().flatten(1).mean(1)


@contextlib.contextmanager
def no_param_grad(*modules: nn.Module) -> Iterator[None]:
    """Let gradients flow through `modules` to their inputs without reaching their parameters (a
    generator loss through the discriminator): requires_grad is switched off and restored."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def student_sample(student: nn.Module, batch: Batch, latent_shape, steps: int, generator: torch.Generator,
                   grad: bool = True) -> torch.Tensor:
    """x_hat = G_theta(c, eps) (DOLLAR Alg. 1 line 8) by backward simulation (DMD2, AVDM2 Sec. 4): draw a
    step i of the student's `steps`-step grid (`samplers.STUDENT_TIMESTEPS` for 1, 2, 4) uniformly, run the
    few-step sampler without gradient down to the input of step i, and predict x0 there (with gradient when
    `grad`). So the student is trained on the inputs it meets at inference. Returns (B, T, c, h, w)."""
    schedule = schedule_of(student)
    grid = schedule.timesteps(steps)  # noisiest first
    stop = int(torch.randint(0, steps, (1,), generator=generator))
    device = next(student.parameters()).device
    x = torch.randn((batch.size, *latent_shape), generator=generator).to(device)
    with torch.no_grad():
        for i in range(stop):
            t = grid[i].expand(batch.size).to(device)
            x0_hat = predict(student, x, t, batch.text, batch.text_mask).x0
            alpha, sigma = schedule.alpha_sigma(grid[i + 1].expand(batch.size).to(device), x)
            x = samplers.renoise(x0_hat, alpha, sigma, noise=generator)
    t = grid[stop].expand(batch.size).to(device)
    with torch.set_grad_enabled(grad):
        return predict(student, x, t, batch.text, batch.text_mask).x0


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout or norm-statistics updates), then the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
