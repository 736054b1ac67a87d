"""KL-to-initial penalty: keeps the tuned student near the model it started from (DRaFT+, Clark et al. 2024;
DPOK, Fan et al. 2023, Eq. 7-8).

For Gaussian reverse steps with a shared variance, the per-step KL between the student and its initial copy
is proportional to the squared gap of their noise predictions, so the penalty is

    L_KL = lambda * mean_elements || eps_theta(x_t, t, c) - eps_init(x_t, t, c) ||^2      (B,)

on the student's own samples noised, x_t = alpha_t stopgrad(x_hat) + sigma_t eps, t ~ U[0.02T, 0.98T] (the
range of VSD). lambda is the trainer's weight of this term (TuneConfig.kl_weight). The gradient reaches the
student through eps_theta only: x_hat is detached and the initial copy is frozen (role "initial"). At the
initial model the penalty and its gradient are zero. `eps_distance` is the same measure on shared noisy latents
drawn from a seed, without gradient: the KL-like distance from the start that the tuning monitor records at every
evaluation and lrm.studies.distance measures between saved runs.
"""

from __future__ import annotations

import torch
from torch import nn

from lrm.tuning.denoise import evaluating, mean_per_sample, predict, randn, schedule_of, timesteps_between
from lrm.tuning.roles import STUDENT
from lrm.tuning.terms import Step, no_auxiliary

INITIAL = "initial"  # the frozen copy of the student at the start of tuning
T_LOW, T_HIGH = 0.02, 0.98  # noise levels the penalty is measured at (as VSD's range)


def eps_gap(model: nn.Module, initial: nn.Module, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
            text_mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean_elements ||eps_model - eps_initial||^2 at shared x_t (B, T, c, h, w), t (B,); each output is
    converted to eps_hat through its own prediction type. Gradient flows into `model` only."""
    with torch.no_grad():
        eps_init = predict(initial, x_t, t, text, text_mask).eps.float()
    eps_model = predict(model, x_t, t, text, text_mask).eps.float()
    return mean_per_sample((eps_model - eps_init) ** 2)


@torch.no_grad()
def eps_distance(model: nn.Module, initial: nn.Module, text: torch.Tensor, text_mask: torch.Tensor, *,
                 latent_shape, samples_per_text: int = 4, seed: int = 0) -> float:
    """mean ||eps_model - eps_initial||^2 (DRaFT+'s KL-like distance) for `model` against `initial` (each output
    converted to eps_hat through its own prediction type), averaged over `samples_per_text` shared noisy latents
    per text row.

    text: (B, L, D) text tokens, text_mask: (B, L) bool; latent_shape: (T', c, h, w)."""
    if samples_per_text < 1:
        raise ValueError(f"eps_distance: samples_per_text must be >= 1, got {samples_per_text}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    text = text.repeat_interleave(samples_per_text, 0).to(device)  # (N, L, D)
    text_mask = text_mask.repeat_interleave(samples_per_text, 0).to(device)  # (N, L)
    n = text.shape[0]
    like = torch.empty(0, device=device)
    x0 = randn((n, *latent_shape), generator, like)  # (N, T', c, h, w)
    eps = randn((n, *latent_shape), generator, like)
    schedule = schedule_of(initial)
    t = schedule.sample_timesteps(n, generator=generator).to(device)  # (N,)
    alpha, sigma = schedule.alpha_sigma(t, x0)
    x_t = alpha * x0 + sigma * eps
    with evaluating(model), evaluating(initial):
        return float(eps_gap(model, initial, x_t, t, text, text_mask).mean())  # every sample has the same size


class KLPenalty:
    """L_KL above: reads the student and its frozen initial copy; trains no auxiliary role."""

    name = "kl"
    needs_real = False
    needs_sample = True
    reads = (STUDENT, INITIAL)
    trains = ()

    def __init__(self, t_low: float = T_LOW, t_high: float = T_HIGH):
        self.t_low, self.t_high = t_low, t_high

    def generator_loss(self, step: Step) -> torch.Tensor:
        student, initial, batch = step.roles.module(STUDENT), step.roles.module(INITIAL), step.batch
        x0 = step.x_hat.detach()  # (B, T, c, h, w)
        t = timesteps_between(schedule_of(initial), self.t_low, self.t_high, x0.shape[0], step.generator)
        t = t.to(x0.device)
        alpha, sigma = schedule_of(initial).alpha_sigma(t, x0)
        x_t = alpha * x0 + sigma * randn(x0.shape, step.generator, x0)
        return eps_gap(student, initial, x_t, t, batch.text, batch.text_mask)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        no_auxiliary(self, role)

    def __call__(self, step: Step) -> torch.Tensor:
        return self.generator_loss(step)
