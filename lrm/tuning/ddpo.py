"""DDPO-SF: REINFORCE on the student's own sampling policy (DOLLAR Sec. 8.5, Alg. 2, Eq. 25-26).

Each call samples the student's trajectory on its grid (DOLLAR: [999, 749, 499, 249]) with the DDPM
posterior (Eq. 25): at each t_n the student's x0 prediction (Eq. 15 for conjugate-v) gives
N(mu_theta(x_{t_n}), std_n^2 I) and x_{t_{n+1}} is drawn from it; the last step goes to t = 0
(alpha_0, sigma_0 = sqrt(beta_1), std > 0), whose sample the reward reads as the clean image. Only the
last `grad_steps` (DOLLAR: N = 2, "log-probs at [249, 499]") steps are run with gradient; earlier ones
without (truncation). The true reward R of the decoded sample (any reward, differentiable or not,
read under no_grad) becomes an advantage per prompt:

    A_i = (R_i - mean_g) / (std_g + 1e-6)   over the samples g of the batch with sample i's prompt

(the prompt's text when the batch has `prompts`, else its text tokens; under torchrun the batch is the global one,
gathered from every rank: `advantages_over_ranks`), falling back to the batch's mean
and std for a prompt with a single finite-reward sample (ddpo-pytorch's per-prompt tracker likewise falls
back to global statistics below its minimum count). With `history` = H > 0 the statistics are instead
ddpo-pytorch's per-prompt stat tracker's: each prompt keeps its last H finite (signed) rewards across updates,
this batch's included, and its samples are normalised by that history's mean and std once it holds H rewards,
by the batch's before (ddpo-pytorch: buffer_size = min_count = 16). With many prompts and small batches a prompt
rarely repeats within a batch, so the batch fallback compares different prompts' rewards; the history compares
each sample with its own prompt's. It is checkpointed with the run (`reward_history`). Non-finite rewards are
counted (TrueReward.nonfinite) and those samples skipped. The per-sample loss is Alg. 2's

    L = -A * sum_n lp_n,    lp_n = log p_theta(x_{t_{n+1}} | x_{t_n}, c) / D

with Eq. 26's log-density divided by the D elements of a sample (ddpo-pytorch's per-element mean, which
only rescales the gradient and keeps ratios below finite).

Ratio clipping (PPO, ddpo-pytorch's `clip_range`, default 1e-4 there): with `reuse` = k > 1 a sampled
trajectory serves k consecutive calls (ddpo-pytorch's inner epochs); calls after the first recompute lp_n
under the current student on the stored (x_{t_n}, x_{t_{n+1}}) pairs and, with `clip_range` c, minimise
sum_n max(-A r_n, -A clip(r_n, 1 - c, 1 + c)), r_n = exp(lp_n - lp_n^old), lp^old at sampling. On the
first call r_n = 1 and the gradient is REINFORCE's. The stored trajectory is the last call's (meant for
accumulation 1) and is not checkpointed, so a resumed run with reuse > 1 re-samples.

Memory: by default (`gradient_checkpointing`) each student call with gradient is wrapped in
torch.utils.checkpoint, so the graph keeps each tracked step's input and output instead of its activations, and
backward recomputes one step at a time: the peak holds one step's activations, not N steps', for one more student
forward per tracked step (ddpo-pytorch gets the same by sampling without gradient and backpropagating each
timestep's log-prob on its own; the direct baseline checkpoints its K steps likewise).
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lrm import distributed
from lrm.diffusion.samplers import Posterior, ddpm_posterior, gaussian_log_prob
from lrm.diffusion.schedules import VPSchedule
from lrm.tuning.denoise import Batch, predict, randn, schedule_of
from lrm.tuning.roles import STUDENT
from lrm.tuning.terms import Step, no_auxiliary
from lrm.tuning.true_reward import TrueReward

GRAD_STEPS = 2  # DOLLAR Sec. 8.5: "gradient tracking for a maximum of N = 2 steps" (the default, capped at steps)
ADVANTAGE_EPS = 1e-6


class Trajectory(NamedTuple):
    sample: torch.Tensor  # (B, T', c, h, w) x at t = 0, detached
    inputs: list[torch.Tensor]  # x_{t_n} (B, ...) of the steps with gradient, detached
    outputs: list[torch.Tensor]  # x_{t_{n+1}} drawn at those steps, detached
    timesteps: list[tuple[int, int]]  # (t_n, t_{n+1}) of those steps
    posteriors: list[Posterior]  # their (mean, std), mean with gradient
    log_probs: torch.Tensor  # (B, N) Eq. 26 summed over elements, with gradient


def posterior(student: nn.Module, x_t: torch.Tensor, t: int, s: int, batch: Batch,
              checkpointed: bool = False) -> Posterior:
    """The student's policy at x_t: q(x_s | x_t, x0 = x0_theta(x_t, t)) (Eq. 25) on its schedule. checkpointed: the
    student call in torch.utils.checkpoint (its activations recomputed in backward; same values and gradients)."""
    schedule, b = schedule_of(student), x_t.shape[0]
    t_b, s_b = torch.full((b,), t, device=x_t.device), torch.full((b,), s, device=x_t.device)
    if checkpointed and torch.is_grad_enabled():
        x0 = checkpoint(lambda x: predict(student, x, t_b, batch.text, batch.text_mask).x0, x_t, use_reentrant=False)
    else:
        x0 = predict(student, x_t, t_b, batch.text, batch.text_mask).x0
    return ddpm_posterior(x_t, x0, *schedule.alpha_sigma(t_b, x_t), *schedule.alpha_sigma(s_b, x_t))


def sample_trajectory(student: nn.Module, batch: Batch, latent_shape, steps: int, grad_steps: int,
                      generator: torch.Generator, gradient_checkpointing: bool = False) -> Trajectory:
    """Alg. 2 lines 4-9: x_T ~ N(0, I), then `steps` posterior draws down the student's grid to t = 0, the
    last `grad_steps` with gradient on their means (the inputs x_{t_n} are always detached), each such student
    call checkpointed when `gradient_checkpointing`."""
    schedule = schedule_of(student)
    if not isinstance(schedule, VPSchedule):
        raise ValueError("DDPO-SF needs a VP (DDPM) student schedule: on a flow schedule the last step lands on "
                         "clean data (sigma = 0), which has no log-probability; use LRM fine-tuning or direct")
    if not 1 <= grad_steps <= steps:
        raise ValueError(f"DDPO-SF: grad_steps must be in 1..{steps} (the student's steps), got {grad_steps}")
    grid = [int(t) for t in schedule.timesteps(steps)] + [0]
    if grid[-2] == 0:
        raise ValueError(f"DDPO-SF: the student's grid {grid[:-1]} already ends at t = 0")
    like = next(student.parameters())
    x = randn((batch.size, *latent_shape), generator, like)
    inputs, outputs, timesteps, posteriors, log_probs = [], [], [], [], []
    for i in range(steps):
        tracked = i >= steps - grad_steps
        with torch.set_grad_enabled(tracked and torch.is_grad_enabled()):
            post = posterior(student, x, grid[i], grid[i + 1], batch, checkpointed=gradient_checkpointing)
        x_next = (post.mean + post.std * randn(x.shape, generator, x)).detach()
        if tracked:
            inputs.append(x)
            outputs.append(x_next)
            timesteps.append((grid[i], grid[i + 1]))
            posteriors.append(post)
            log_probs.append(gaussian_log_prob(x_next, post.mean, post.std))
        x = x_next
    return Trajectory(x, inputs, outputs, timesteps, posteriors, torch.stack(log_probs, dim=1))


def prompt_keys(batch: Batch) -> list:
    """(B,) what identifies each sample's prompt: its text, else its valid text tokens (bytes)."""
    if batch.prompts is not None:
        return list(batch.prompts)
    tokens = (batch.text * batch.text_mask[..., None]).detach().float().cpu()
    return [tokens[i].numpy().tobytes() + batch.text_mask[i].cpu().numpy().tobytes() for i in range(batch.size)]


def group_ids(keys: list) -> list[int]:
    """(B,) group ids: equal keys share one."""
    ids: dict = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


def normalised_by_group(rewards: torch.Tensor, groups: list, keep: torch.Tensor, statistics) -> torch.Tensor:
    """(B,) (r - mean) / (std + eps) within each group (`groups`: one label per sample), with the (mean, std) that
    statistics(group, its kept rewards, (the batch's mean, std)) gives; 0 where `keep` is False."""
    out = torch.zeros_like(rewards)
    finite = rewards[keep]
    if finite.numel() == 0:
        return out
    batch = (finite.mean(), finite.std(unbiased=False))
    for group in dict.fromkeys(groups):
        members = torch.tensor([g == group for g in groups], device=rewards.device) & keep
        r = rewards[members]
        if r.numel():
            mean, std = statistics(group, r, batch)
            out[members] = (r - mean) / (std + ADVANTAGE_EPS)
    return out


def advantages(rewards: torch.Tensor, groups: list[int], keep: torch.Tensor) -> torch.Tensor:
    """(B,) per-prompt normalised rewards (module docstring); 0 where `keep` is False."""
    def within_batch(group, r, batch):
        return (r.mean(), r.std(unbiased=False)) if r.numel() >= 2 else batch

    return normalised_by_group(rewards, groups, keep, within_batch)


def tracked_advantages(rewards: torch.Tensor, keys: list, keep: torch.Tensor, history: dict[str, list[float]],
                       size: int) -> torch.Tensor:
    """(B,) advantages from per-prompt reward histories (ddpo-pytorch's stat tracker; module docstring): each
    prompt's finite rewards join `history` (updated in place, its last `size` kept), then its samples are normalised
    by that history's mean and std when it holds `size` rewards, else by the batch's; 0 where `keep` is False."""
    def from_history(name, r, batch):
        past = (history.get(name, []) + r.tolist())[-size:]
        history[name] = past
        if len(past) < size:
            return batch
        seen = torch.tensor(past, dtype=rewards.dtype, device=rewards.device)
        return seen.mean(), seen.std(unbiased=False)

    names = [key if isinstance(key, str) else hashlib.sha1(key).hexdigest() for key in keys]  # JSON keys
    return normalised_by_group(rewards, names, keep, from_history)


def advantages_over_ranks(rewards: torch.Tensor, keys: list, keep: torch.Tensor,
                          history: dict[str, list[float]] | None = None, size: int = 0) -> torch.Tensor:
    """`advantages` of this rank's samples (B,) computed over the global batch under torchrun: the rewards, prompt
    keys and keep masks of every rank gathered first, as ddpo-pytorch gathers rewards and prompts across
    processes, so a prompt's statistics count its samples on every rank. One process: advantages of the batch.
    With `history` and size > 0: `tracked_advantages`, every rank updating its (identical) history alike."""
    parts = distributed.gather_objects((rewards.tolist(), keys, keep.tolist()))

    def normalised(r, k, m):
        return tracked_advantages(r, k, m, history, size) if history is not None and size > 0 else \
            advantages(r, group_ids(k), m)

    if len(parts) == 1:
        return normalised(rewards, keys, keep)
    every = normalised(torch.tensor([r for part in parts for r in part[0]], dtype=rewards.dtype),
                       [k for part in parts for k in part[1]],
                       torch.tensor([k for part in parts for k in part[2]], dtype=torch.bool))
    start = sum(len(part[0]) for part in parts[:distributed.rank()])
    return every[start:start + len(rewards)].to(rewards.device)


class DDPOLoss(NamedTuple):
    generator: torch.Tensor  # (B',) the student's loss on the samples with a finite reward


class DDPO:
    """DDPO-SF (Alg. 2) as a loss term on the student; reads the student only and trains no other role."""

    name = "ddpo"
    needs_real = False
    needs_sample = False  # it samples its own trajectory
    reads = (STUDENT,)
    trains = ()

    def __init__(self, true_reward: TrueReward, latent_shape, steps: int = 4, grad_steps: int | None = None,
                 clip_range: float | None = None, reuse: int = 1, gradient_checkpointing: bool = True,
                 history: int = 0):
        true_reward.check_generator(latent_shape, self.name)
        grad_steps = min(GRAD_STEPS, steps) if grad_steps is None else grad_steps
        if not 1 <= grad_steps <= steps:
            raise ValueError(f"DDPO-SF: grad_steps must be in 1..{steps} (the student's steps), got {grad_steps}")
        if clip_range is not None and not clip_range > 0:
            raise ValueError(f"DDPO-SF: clip_range must be > 0 or None, got {clip_range}")
        if not isinstance(reuse, int) or reuse < 1:
            raise ValueError(f"DDPO-SF: reuse must be a positive integer, got {reuse!r}")
        if not isinstance(history, int) or history < 0 or history == 1:
            raise ValueError(f"DDPO-SF: history must be 0 (the batch's statistics) or an integer >= 2 (one reward has "
                             f"no spread), got {history!r}")
        self.true_reward, self.latent_shape = true_reward, tuple(int(v) for v in latent_shape)
        self.steps, self.grad_steps, self.clip_range, self.reuse = steps, grad_steps, clip_range, reuse
        self.gradient_checkpointing = gradient_checkpointing
        self.elements = math.prod(self.latent_shape)  # D: Eq. 26's log-density is divided by it
        self.samples = 0  # decoded and scored samples so far, every rank's (the cost DDPO pays in rewards)
        self.rewards: list[float] = []  # mean finite true reward of each fresh batch
        self.history = history  # per-prompt reward history length (0: off)
        self.reward_history: dict[str, list[float]] = {}  # prompt -> its last `history` finite signed rewards
        self._stored: tuple | None = None  # (trajectory pieces, batch, advantages, keep, old lp) for reuse
        self._uses = 0

    def generator_loss(self, step: Step) -> torch.Tensor:
        student = step.roles.module(STUDENT)
        if self._stored is None or self._uses >= self.reuse:
            trajectory, batch, adv, keep, old = self._sample(student, step)
            lp = trajectory.log_probs / self.elements  # (B, N)
            # kept for reuse without its graph (the means are recomputed under the then current student)
            stored = trajectory._replace(posteriors=[], log_probs=trajectory.log_probs.detach())
            self._stored, self._uses = ((stored, batch, adv, keep, old) if self.reuse > 1 else None), 0
        else:
            trajectory, batch, adv, keep, old = self._stored
            lp = self._log_probs(student, trajectory, batch)
        self._uses += 1
        a = adv[:, None]  # (B, 1)
        if self.clip_range is None:
            loss = (-a * lp).sum(1)
        else:
            ratio = torch.exp(lp - old)
            clipped = ratio.clamp(1 - self.clip_range, 1 + self.clip_range)
            loss = torch.maximum(-a * ratio, -a * clipped).sum(1)
        return loss[keep]  # empty when no reward was finite: the trainer then skips the update unless other terms learn

    def _log_probs(self, student: nn.Module, trajectory: Trajectory, batch: Batch) -> torch.Tensor:
        """(B, N) lp_n of the stored steps under the current student (a reused trajectory)."""
        steps = zip(trajectory.inputs, trajectory.outputs, trajectory.timesteps)
        lp = [gaussian_log_prob(x_s, *posterior(student, x_t, t, s, batch, checkpointed=self.gradient_checkpointing))
              for x_t, x_s, (t, s) in steps]
        return torch.stack(lp, dim=1) / self.elements

    def _sample(self, student: nn.Module, step: Step):
        batch, true = step.batch, self.true_reward
        trajectory = sample_trajectory(student, batch, self.latent_shape, self.steps, self.grad_steps,
                                       step.generator, self.gradient_checkpointing)
        with torch.no_grad():
            rewards = true(trajectory.sample, true.prompts(batch, self.name)).float()  # (B,)
        keep = true.finite(rewards)
        self.samples += batch.size * distributed.group_size()  # every rank's equal share
        if bool(keep.any()):
            self.rewards.append(float(rewards[keep].mean()))
        signed = true.sign * torch.where(keep, rewards, torch.zeros_like(rewards))
        adv = advantages_over_ranks(signed, prompt_keys(batch), keep, self.reward_history, self.history)
        old = (trajectory.log_probs / self.elements).detach()
        return trajectory, batch, adv.detach(), keep, old

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        no_auxiliary(self, role)

    def __call__(self, step: Step) -> DDPOLoss:
        return DDPOLoss(self.generator_loss(step))
