"""Adversarial distribution matching: AVDM2's denoising GAN (Sec. 4.1, Eq. 5-7; Alg. 1 lines 6-8).

Real latents x and student samples x_hat are noised at t ~ U[0, 0.5T] (AVDM2 Sec. 5.1, t in [t_gmin,
t_gmax]) and scored by D(x_t, t, c) = head(frozen encoder features). The encoder is the teacher's (AVDM2
adopts "the UNet encoder from the video teacher") or the fake score's network, seen through
`forward_features` (a list of per-block tokens (B, T, N, W)); only the head trains. The loss is the
non-saturating GAN of AVDM2 Eq. 7 (on logits l = D(.), "for training stability the discriminator outputs
logits"):

    generator:      softplus(-l(x_hat_t))                              = -log sigmoid(l)
    discriminator:  softplus(-l(x_t)) + softplus(l(stopgrad(x_hat)_t))  (Eq. 6, binary cross-entropy)

The discriminator takes 2 steps per generator step (its role's update ratio, AVDM2 Sec. 4.2).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lrm.tuning.denoise import diffuse, no_param_grad, randn, schedule_of, timesteps_between
from lrm.tuning.roles import DISCRIMINATOR, TEACHER
from lrm.tuning.terms import Step, no_auxiliary

T_LOW, T_HIGH = 0.0, 0.5  # AVDM2 Sec. 5.1: "t ~ U[0, 0.5T] in ADM loss"


class ADMLoss(NamedTuple):
    generator: torch.Tensor  # (B,)
    discriminator: torch.Tensor  # (B,)


class DiscriminatorHead(nn.Module):
    """AVDM2's multi-scale head on a frozen encoder: each chosen level's tokens (B, T, N, W) go through
    their own small MLP (AVDM2: independent convolutions per scale), the results are concatenated per token
    and a last Linear gives a logit per token; the logit of a sample is the mean over its tokens."""

    def __init__(self, width: int, levels: int, hidden: int = 128):
        super().__init__()
        self.levels = levels
        self.branches = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.SiLU()) for _ in range(levels))
        self.out = nn.Linear(levels * hidden, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[(B, T, N, W)] * levels (the last `levels` of the encoder's blocks) -> (B,) logits."""
        if len(features) < self.levels:
            raise ValueError(f"discriminator head needs {self.levels} feature levels, "
                             f"the encoder gives {len(features)}")
        chosen = features[-self.levels:]
        dtype = self.out.weight.dtype
        h = torch.cat([branch(f.to(dtype)) for branch, f in zip(self.branches, chosen)], dim=-1)  # (B, T, N, L*H)
        return self.out(h).flatten(1).mean(1)  # (B,)


def discriminator_for(encoder: nn.Module, levels: int = 3, hidden: int = 128) -> DiscriminatorHead:
    """A head sized for a LatentDiT encoder: its width, min(levels, depth) feature levels."""
    if not hasattr(encoder, "forward_features"):
        raise ValueError(f"{type(encoder).__name__} has no forward_features; the ADM discriminator needs an "
                         "encoder that exposes its features (lrm's LatentDiT does)")
    return DiscriminatorHead(encoder.width, min(levels, encoder.depth), hidden)


class ADM:
    """L_ADM (AVDM2 Eq. 7): reads the encoder (teacher or fake score) and the head; trains the head."""

    name = "adm"
    needs_real = True
    needs_sample = True

    def __init__(self, encoder: str = TEACHER, t_low: float = T_LOW, t_high: float = T_HIGH):
        self.encoder, self.t_low, self.t_high = encoder, t_low, t_high
        self.reads = (encoder, DISCRIMINATOR)
        self.trains = (DISCRIMINATOR,)

    def logits(self, step: Step, x0: torch.Tensor) -> torch.Tensor:
        """(B,) D(x_t, t, c) for clean latents x0 (B, T, c, h, w) noised at t ~ U[t_low T, t_high T]."""
        encoder, head = step.roles.module(self.encoder), step.roles.module(DISCRIMINATOR)
        if not hasattr(encoder, "forward_features"):
            raise ValueError(f"ADM encoder role {self.encoder!r} ({type(encoder).__name__}) has no forward_features")
        t = timesteps_between(schedule_of(encoder), self.t_low, self.t_high, x0.shape[0], step.generator)
        t = t.to(x0.device)
        x_t = diffuse(encoder, x0, t, randn(x0.shape, step.generator, x0))
        return head(encoder.forward_features(x_t, t, step.batch.text, step.batch.text_mask)).float()

    def generator_loss(self, step: Step) -> torch.Tensor:
        roles = step.roles
        with no_param_grad(roles.module(self.encoder), roles.module(DISCRIMINATOR)):
            return F.softplus(-self.logits(step, step.x_hat))

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        if role != DISCRIMINATOR:
            no_auxiliary(self, role)
        real = step.batch.real("loss term 'adm'")
        with no_param_grad(step.roles.module(self.encoder)):
            return F.softplus(-self.logits(step, real)) + F.softplus(self.logits(step, step.x_hat.detach()))

    def __call__(self, step: Step) -> ADMLoss:
        return ADMLoss(self.generator_loss(step), self.auxiliary_loss(DISCRIMINATOR, step))
