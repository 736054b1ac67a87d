"""Variational score distillation / distribution matching distillation.

DOLLAR Eq. 8 (after DMD, Yin et al. 2024, Eq. 7-8 and Alg. 1; DMD2): the student's samples x_hat are
noised, x_t = alpha_t x_hat + sigma_t eps with t ~ U[0.02T, 0.98T], and the KL gradient
E[w(t) (s_fake(x_t) - s_real(x_t)) d x_hat / d theta] is written on x0 predictions:

    grad = (x0_fake - x0_real) / mean_elements |x_hat - x0_real|      (DMD's per-sample normalisation)
    loss = 0.5 * mean_elements (x_hat - stopgrad(x_hat - grad))^2       (the stop-gradient surrogate)

so d loss / d x_hat = grad / D per sample (D elements; DMD2's 0.5 * F.mse_loss averages the same way,
also over the batch). The real score is the teacher under CFG 3.5, the fake score is conditional without
CFG (DOLLAR Sec. 7.3). The fake score is trained on detached student samples with the teacher's own
diffusion objective (Alg. 1 line 13, Eq. 13), 5 updates per generator update (the role's update ratio).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from lrm.tuning.denoise import denoising_loss, mean_per_sample, predict, randn, schedule_of, timesteps_between
from lrm.tuning.roles import FAKE_SCORE, TEACHER
from lrm.tuning.terms import Step, no_auxiliary

REAL_GUIDANCE = 3.5  # DOLLAR Sec. 7.3: "w = 3.5 for the real score network in VSD"
T_LOW, T_HIGH = 0.02, 0.98  # DMD / DMD2's range of t for the distribution-matching gradient


class VSDLoss(NamedTuple):
    generator: torch.Tensor  # (B,)
    fake_score: torch.Tensor  # (B,) the fake score's denoising loss on detached student samples


def score_distillation(x_hat: torch.Tensor, real: nn.Module, fake: nn.Module, text: torch.Tensor,
                       text_mask: torch.Tensor, generator: torch.Generator, guidance: float = REAL_GUIDANCE,
                       t_low: float = T_LOW, t_high: float = T_HIGH) -> torch.Tensor:
    """(B,) the DMD surrogate loss above for samples x_hat (B, ...); real and fake share real's schedule.
    Zero gradient exactly when the two x0 predictions agree."""
    t = timesteps_between(schedule_of(real), t_low, t_high, x_hat.shape[0], generator).to(x_hat.device)
    eps = randn(x_hat.shape, generator, x_hat)
    with torch.no_grad():
        alpha, sigma = schedule_of(real).alpha_sigma(t, x_hat)
        x_t = alpha * x_hat + sigma * eps
        x0_real = predict(real, x_t, t, text, text_mask, guidance).x0.float()
        x0_fake = predict(fake, x_t, t, text, text_mask).x0.float()
        dims = tuple(range(1, x_hat.ndim))
        scale = (x_hat.float() - x0_real).abs().mean(dims, keepdim=True).clamp_min(1e-6)
        target = x_hat.float() - (x0_fake - x0_real) / scale
    return 0.5 * mean_per_sample((x_hat.float() - target) ** 2)


class VSD:
    """DOLLAR's L_VSD (Eq. 8): reads the teacher (real score) and the fake score; trains the fake score."""

    name = "vsd"
    needs_real = False
    needs_sample = True

    def __init__(self, guidance: float = REAL_GUIDANCE, t_low: float = T_LOW, t_high: float = T_HIGH,
                 real: str = TEACHER, fake: str = FAKE_SCORE):
        self.guidance, self.t_low, self.t_high = guidance, t_low, t_high
        self.real, self.fake = real, fake
        self.reads = (real, fake)
        self.trains = (fake,)

    def generator_loss(self, step: Step) -> torch.Tensor:
        roles, batch = step.roles, step.batch
        return score_distillation(step.x_hat, roles.module(self.real), roles.module(self.fake), batch.text,
                                  batch.text_mask, step.generator, self.guidance, self.t_low, self.t_high)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        if role != self.fake:
            no_auxiliary(self, role)
        batch = step.batch
        return denoising_loss(step.roles.module(self.fake), step.x_hat.detach(), batch.text, batch.text_mask,
                              step.generator)

    def __call__(self, step: Step) -> VSDLoss:
        return VSDLoss(self.generator_loss(step), self.auxiliary_loss(self.fake, step))
