"""The direct reward-gradient baseline: ReFL / DRaFT-K (Xu et al. 2023; Clark et al. 2024).

Each call samples the student from noise on its few-step grid (DOLLAR's sampler: predict x0, re-noise it
to the next timestep; the last prediction is the sample), with gradient through the last K steps only
(DRaFT-K; K = 1 is ReFL's last-step gradient, earlier steps run without gradient, so their output enters
the K-th last step detached). For video, `frames` latent frames per sample are drawn at random (sorted,
without replacement) and only they are decoded (VADER's frame subsampling). The sample is decoded by the
codec and scored by a differentiable pixel reward (lrm.pixel_path.PixelPathReward), and the loss is

    L = -s * R(Dec(x_0), c)      (B,), s = +1 when higher rewards are better, -1 otherwise

so the gradient runs through the reward, the decoder and K student calls. Each student call with gradient
is wrapped in torch.utils.checkpoint (its activations are recomputed in backward). A reward whose spec
says it is not differentiable is refused at construction, with the reason; non-finite rewards are counted
and those samples skipped.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from lrm import distributed
from lrm.tuning.denoise import predict, randn, schedule_of
from lrm.tuning.roles import STUDENT
from lrm.tuning.terms import Step, no_auxiliary
from lrm.tuning.true_reward import TrueReward


class DirectLoss(NamedTuple):
    generator: torch.Tensor  # (B',) the student's loss on the samples with a finite reward


class DirectReward:
    """DRaFT-K on a differentiable pixel reward; reads the student only."""

    name = "direct"
    needs_real = False
    needs_sample = False  # it samples its own trajectory
    reads = (STUDENT,)
    trains = ()

    def __init__(self, true_reward: TrueReward, latent_shape, steps: int = 4, grad_steps: int = 1,
                 frames: int | None = None, gradient_checkpointing: bool = True):
        if not true_reward.spec.differentiable:
            raise ValueError(f"direct reward gradients need a differentiable reward, and {true_reward.name!r} is "
                             "not (its spec says so: no gradient reaches the pixels); tune it through a latent "
                             "surrogate (LRM fine-tuning) or with DDPO")
        true_reward.check_generator(latent_shape, self.name)
        if not 1 <= grad_steps <= steps:
            raise ValueError(f"direct: grad_steps (K) must be in 1..{steps} (the student's steps), got {grad_steps}")
        latent_frames = int(tuple(latent_shape)[0])
        if frames is not None and not 1 <= frames <= latent_frames:
            raise ValueError(f"direct: frames must be in 1..{latent_frames} (the latent frames), got {frames}")
        self.true_reward, self.latent_shape = true_reward, tuple(int(v) for v in latent_shape)
        self.steps, self.grad_steps, self.frames = steps, grad_steps, frames
        self.gradient_checkpointing = gradient_checkpointing
        self.samples = 0  # decoded and scored samples so far, every rank's

    def sample(self, student, step: Step) -> torch.Tensor:
        """(B, T', c, h, w) the student's sample, with gradient through the last `grad_steps` calls."""
        batch, generator = step.batch, step.generator
        schedule = schedule_of(student)
        grid = schedule.timesteps(self.steps)
        like = next(student.parameters())
        x = randn((batch.size, *self.latent_shape), generator, like)
        for i in range(self.steps):
            t = grid[i].expand(batch.size).to(x.device)
            tracked = i >= self.steps - self.grad_steps and torch.is_grad_enabled()
            with torch.set_grad_enabled(tracked):
                if tracked and self.gradient_checkpointing:
                    x0 = checkpoint(lambda x_t, t=t: predict(student, x_t, t, batch.text, batch.text_mask).x0, x,
                                    use_reentrant=False)
                else:
                    x0 = predict(student, x, t, batch.text, batch.text_mask).x0
                if i + 1 < self.steps:
                    alpha, sigma = schedule.alpha_sigma(grid[i + 1].expand(batch.size).to(x.device), x)
                    x = alpha * x0 + sigma * randn(x.shape, generator, x)
                else:
                    x = x0
        return x

    def select_frames(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.frames is None or self.frames == x.shape[1]:
            return x
        picks = torch.randperm(x.shape[1], generator=generator)[: self.frames].sort().values
        return x[:, picks.to(x.device)]

    def generator_loss(self, step: Step) -> torch.Tensor:
        true = self.true_reward
        x0 = self.select_frames(self.sample(step.roles.module(STUDENT), step), step.generator)
        prompts = true.prompts(step.batch, self.name)
        scores = true(x0, prompts)  # (B,) with gradient
        self.samples += step.batch.size * distributed.group_size()  # every rank's equal share
        keep = true.finite(scores)
        if not bool(keep.any()):  # nothing to learn from: an empty loss (the update is skipped unless others learn)
            return x0.flatten(1).sum(1)[:0]
        if not bool(keep.all()):  # masking the scores would still backpropagate 0 x inf = NaN through the bad rows
            rows = keep.nonzero().squeeze(1)
            scores = true(x0[rows], None if prompts is None else [prompts[i] for i in rows.tolist()])
        return -true.sign * scores  # (B',) the samples with a finite reward

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        no_auxiliary(self, role)

    def __call__(self, step: Step) -> DirectLoss:
        return DirectLoss(self.generator_loss(step))
