"""Latent reward model fine-tuning (DOLLAR Sec. 3.4, Eq. 11; Alg. 1 lines 15-18).

The student is pushed up a latent surrogate R^l of a pixel reward on its one-step x0 prediction x_hat,
in latent space, with no decoder and no pixel reward in the graph:

    L_FT = -beta_FT * s * z(x_hat, c)      (B,)

z is the surrogate's standardised output, an increasing affine map of R^l (z = (R^l - mean) / std with
the label statistics it was fitted on; for a surrogate fitted on log labels, of log(R^l - shift)), so
beta_FT (the trainer's weight of this term, DOLLAR's 1.0) is in standard deviations of the reward and not
in its units; s = +1 when higher rewards are better, -1 otherwise: the tuned reward's direction (`sign`, or the
true reward's), which may differ from the one the surrogate was fitted with (`-o higher_is_better=false` tunes
down a surrogate fitted with the default); only a surrogate used alone falls back to its own. The gradient reaches the student through
x_hat only; the surrogate's parameters never get one.

The surrogate (role "lrm") is either
- frozen: a fitted `lrm fit` run; `surrogate_role` refuses, before any work, one whose codec, channels,
  text encoder or reward kind does not fit the generator; or
- trained concurrently (pass `true_reward`): each of its updates labels the merged batch x | x_hat (real
  latents, when `real`, and detached student samples) with the true reward of the decoded latents and
  takes a step on the MSE between its standardised prediction and the standardised labels (Eq. 10), so it
  follows the student's moving distribution (`real_rows` counts the real latents it trained on). Non-finite
  labels are counted and masked out. Until it has taken a step on finite labels (a fresh one, before its first
  update, or one whose labels were all non-finite so far) the student learns nothing from it: the term's generator
  loss is empty, so an update with no other term is skipped and counted by the trainer. Its fidelity
  (Spearman of its predictions against the labels of each fresh batch, before its update) is kept in
  `fidelities`; `fidelity` is the mean of the last FIDELITY_WINDOW. A surrogate that was never fitted
  (label statistics mean 0, std 1) takes its label statistics from its first labelled batch. With
  `gradient_weight` > 0 (a differentiable reward) each update also matches the reward's latent gradient
  on the merged batch, as `lrm fit --gradient-weight` does (lrm.fitting, Sobolev training): + gradient_weight
  * the mean of 1 - cos(d z / d x, d R / d x) over the rows with a label and a reward gradient, the reward's
  gradient taken through the decoder in the same decode that labels the batch; the mean cosines before each
  update are kept in `gradient_cosines`. Value-only updates let the surrogate's gradient drift away from the
  reward's while the student follows it; matching holds it closer (docs/tuning.md).
With `noise_aware`, a noise-aware surrogate scores x_t = alpha_t x_hat + sigma_t eps, t ~ U{0..t_max T},
instead of x_hat (and is trained on noised merged batches likewise).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy import stats
from torch import nn

from lrm import distributed
from lrm.diffusion.schedules import VPSchedule
from lrm.fitting import gradient_cosines
from lrm.models.presets import check_preset
from lrm.models.surrogate import CodecMismatchError, LatentRewardModel
from lrm.tuning.denoise import no_param_grad, randn, timesteps_between
from lrm.tuning.roles import Role, adamw
from lrm.tuning.terms import Step, no_auxiliary
from lrm.tuning.true_reward import TrueReward

LRM = "lrm"  # the surrogate's role
FIDELITY_WINDOW = 10  # updates averaged in LRMFineTune.fidelity
NOISE_T_MAX = 0.5  # noise-aware scoring: t ~ U{0..0.5 T} (the range a noise-aware fit covers by default)


class LRMFTLoss(NamedTuple):
    generator: torch.Tensor  # (B,) -s z(x_hat)
    lrm: torch.Tensor | None  # (N,) the concurrent surrogate's squared errors on x | x_hat; None when frozen


def check_surrogate(surrogate: LatentRewardModel, student: nn.Module, latent_shape, reward: str | None = None) -> None:
    """Refuse a surrogate that cannot read the student's samples (T', c, h, w) or imitates another reward than
    `reward` (the tuned one's name, when given), with one line naming what differs: the reward, latent channels,
    codec settings, text encoder (width or id) or reward kind."""
    who = f"LRM fine-tuning: surrogate {surrogate.preset!r}"
    imitates = (surrogate.info.reward_spec or {}).get("name")
    if reward is not None and imitates is not None and same_reward_name(imitates) != same_reward_name(reward):
        raise ValueError(f"{who} imitates {imitates!r}, not the tuned reward {reward!r}: its gradient would tune "
                         f"toward {imitates!r}; fit a surrogate of {reward!r} (`lrm fit {reward} ...`)")
    channels = int(tuple(latent_shape)[1])
    if surrogate.in_channels != channels:
        raise CodecMismatchError(f"{who} reads {surrogate.in_channels}-channel latents and the generator makes "
                                 f"{channels}-channel latents; fit a surrogate in the generator's latent space")
    generator_codec = getattr(student, "codec_settings", None)
    if generator_codec is not None and surrogate.info.codec_settings is not None:
        try:
            surrogate.check_compatible(generator_codec)
        except CodecMismatchError as err:
            raise CodecMismatchError(f"{who} does not fit the generator: {err}") from None
    if surrogate.text_dim is not None:
        width = getattr(student, "text_dim", None)
        if width is not None and width != surrogate.text_dim:
            raise ValueError(f"{who} reads {surrogate.text_dim}-wide text tokens and the generator's text encoder "
                             f"makes {width}-wide ones; fit the surrogate with the generator's text encoder")
        theirs, ours = getattr(student, "text_encoder_id", None), surrogate.info.text_encoder_id
        if theirs is not None and ours is not None and theirs != ours:
            raise ValueError(f"{who} was fitted on text encoder {ours!r} tokens and the generator reads "
                             f"{theirs!r} tokens; fit the surrogate with {theirs!r}")
    kind = (surrogate.info.reward_spec or {}).get("kind") or check_preset(surrogate.preset).kind
    if kind.endswith("video") and int(tuple(latent_shape)[0]) == 1:
        raise ValueError(f"{who} imitates a {kind} reward and the generator makes images (1 latent frame); "
                         "use an image surrogate or tune a video generator")


def same_reward_name(name: str) -> str:
    """A reward name as compared across commands: a user's metric, named by its reference as typed (`m.py:fn`,
    `/abs/m.py:fn`), by its file's name and function; a registered reward as it is."""
    file, _, function = name.rpartition(":")
    return f"{Path(file).name}:{function}" if file.endswith(".py") else name


def surrogate_role(surrogate: LatentRewardModel, student: nn.Module, latent_shape, concurrent: bool = False,
                   lr: float = 1e-4, reward: str | None = None) -> Role:
    """The "lrm" role: frozen (a fitted surrogate) or with its own AdamW (trained concurrently), after
    `check_surrogate` (against the tuned reward's name, when given)."""
    check_surrogate(surrogate, student, latent_shape, reward)
    optimizer = adamw(lr)(list(surrogate.parameters())) if concurrent else None
    return Role(LRM, surrogate, optimizer)


def spearman(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Rank correlation of two (N,) tensors; NaN with fewer than 3 values or a constant one."""
    a, b = pred.detach().double().cpu().numpy(), true.detach().double().cpu().numpy()
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


class LRMFineTune:
    """DOLLAR's L_FT (Eq. 11): reads the "lrm" role; trains it too when given a true reward (concurrent)."""

    name = "lrm_ft"
    needs_sample = True

    def __init__(self, true_reward: TrueReward | None = None, real: bool = True, noise_aware: bool = False,
                 t_max: float = NOISE_T_MAX, role: str = LRM, latent_shape=None, gradient_weight: float = 0.0,
                 sign: float | None = None):
        """latent_shape: the student's (T', c, h, w); with a true reward, one of the wrong kind for it (a video
        reward for an image generator) is refused here, and so is gradient matching without one. sign: +1 / -1,
        the tuned reward's direction for a frozen surrogate (default: the true reward's when given, else the
        surrogate's own reward_spec)."""
        if sign is not None and sign not in (1.0, -1.0):
            raise ValueError(f"{self.name}: sign must be +1 (higher is better) or -1, got {sign!r}")
        if sign is not None and true_reward is not None and sign != true_reward.sign:
            raise ValueError(f"{self.name}: sign {sign:+.0f} contradicts the true reward's ({true_reward.sign:+.0f})")
        self.sign = sign
        if true_reward is not None and latent_shape is not None:
            true_reward.check_generator(latent_shape, self.name)
        check_gradient_weight(gradient_weight, true_reward is not None, noise_aware,
                              true_reward.spec if true_reward is not None else None)
        self.gradient_weight = float(gradient_weight)
        self.gradient_cosines: list[float] = []  # mean cosine per update, before it (NaN: no row had a gradient)
        self.true_reward, self.noise_aware, self.t_max, self.role = true_reward, noise_aware, t_max, role
        self.concurrent = true_reward is not None
        self.needs_real = self.concurrent and real
        self.reads = (role,)
        self.trains = (role,) if self.concurrent else ()
        self.fidelities: list[float] = []  # Spearman per labelled batch, before the surrogate's update
        self.true_mean = float("nan")  # mean true reward of the student samples of the last labelled batch
        self.real_rows = 0  # real latents (finite labels) the concurrent surrogate trained on so far, every rank's
        self._warm: bool | None = None  # the concurrent surrogate was fitted when first read (None: not read yet)

    @property
    def fidelity(self) -> float:
        return _recent_mean(self.fidelities)

    @property
    def gradient_cosine(self) -> float:
        """Mean of the last FIDELITY_WINDOW updates' gradient cosines (NaN without gradient matching)."""
        return _recent_mean(self.gradient_cosines)

    def _sign(self, surrogate: LatentRewardModel) -> float:
        if self.sign is not None:
            return self.sign
        if self.true_reward is not None:
            return self.true_reward.sign
        return 1.0 if (surrogate.info.reward_spec or {}).get("higher_is_better", True) else -1.0

    def _noised(self, surrogate: LatentRewardModel, x: torch.Tensor, generator: torch.Generator):
        """(x_t, t) with t ~ U{0..t_max T} on the surrogate's noise schedule, or (x, None) without noise_aware."""
        if not self.noise_aware:
            return x, None
        if not surrogate.noise_aware:
            raise ValueError(f"{self.name}: noise_aware scoring needs a noise-aware surrogate (fit it with "
                             f"noise_aware=True); {surrogate.preset!r} reads clean latents only")
        schedule = VPSchedule(surrogate.info.noise_schedule or "linear")
        t = timesteps_between(schedule, 0.0, self.t_max, x.shape[0], generator).to(x.device)
        alpha, sigma = schedule.alpha_sigma(t, x)
        return alpha * x + sigma * randn(x.shape, generator, x), t

    def generator_loss(self, step: Step) -> torch.Tensor:
        """(B,) -s z(x_hat); empty (the student learns nothing from this term, and alone its update is skipped
        and counted) while a concurrent surrogate has never been trained on a finite label (`surrogate_trained`):
        its gradient would be that of its random initialisation."""
        surrogate = step.roles.module(self.role)
        x, t = self._noised(surrogate, step.x_hat, step.generator)
        with no_param_grad(surrogate):
            z = surrogate(x, step.batch.text, step.batch.text_mask, t=t, standardised=True)  # (B,)
        loss = -self._sign(surrogate) * z.float()
        if self.concurrent and not self.surrogate_trained(step.roles[self.role]):
            return loss[:0]  # empty, keeping the graph so that the other terms of the update still backpropagate
        return loss

    def surrogate_trained(self, role: Role) -> bool:
        """Whether the concurrent surrogate has learnt from at least one finite label: it had been fitted when this
        term first read it (warm-started from `lrm fit`, or resumed with label statistics) or its optimiser has
        taken a step (the trainer steps only on a loss of finite-labelled rows)."""
        if self._warm is None:
            self._warm = not _unfitted(role.module)
        return self._warm or bool(role.optimizer is not None and role.optimizer.state)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        """(N,) squared errors on the finite-labelled samples of the merged batch x | x_hat (Alg. 1 line 16)."""
        if role not in self.trains:
            no_auxiliary(self, role)
        surrogate, batch, true = step.roles.module(role), step.batch, self.true_reward
        x_hat = step.x_hat.detach()
        parts = [batch.real(self.name), x_hat] if self.needs_real else [x_hat]
        merged = torch.cat(parts)  # (k B, T', c, h, w)
        prompts = true.prompts(batch, self.name)
        prompts = prompts * len(parts) if prompts is not None else None
        matching = self.gradient_weight > 0
        if matching:  # labels and the reward's latent gradient from one decode
            labels, reference = true.scored_gradient(merged, prompts)
            if reference is None:
                raise ValueError(f"reward {true.name!r} says it is differentiable but its scores carry no gradient; "
                                 "leave out gradient_weight")
        else:
            with torch.no_grad():
                labels = true(merged, prompts)
        labels = labels.float()  # (k B,)
        keep = true.finite(labels)
        student_labels = labels[-x_hat.shape[0]:][keep[-x_hat.shape[0]:]]
        self.true_mean = float(student_labels.mean()) if student_labels.numel() else float("nan")
        if _unfitted(surrogate):
            initial_label_stats(surrogate, labels[keep])
        target = surrogate.standardise(labels)
        keep = keep & torch.isfinite(target)
        if self.needs_real:
            self.real_rows += distributed.sum_over_ranks(int(keep[: parts[0].shape[0]].sum()))  # every rank's
        repeat = len(parts)
        text, mask = batch.text.repeat(repeat, 1, 1), batch.text_mask.repeat(repeat, 1)
        x, t = self._noised(surrogate, merged, step.generator)
        x = x.detach().requires_grad_(True) if matching else x
        z = surrogate(x, text, mask, t=t, standardised=True).float()  # (k B,)
        self.fidelities.append(spearman(z[keep], labels[keep]))
        loss = (z[keep] - target[keep]) ** 2  # rows with a finite label only: a NaN one would reach the backward
        if matching:
            (grad,) = torch.autograd.grad(z.sum(), x, create_graph=True)  # (k B, T', c, h, w)
            cosine, kept = gradient_cosines(grad, reference)  # (k B,) each
            matched = kept & keep  # rows with a label and a reward gradient
            count = int(matched.sum())
            self.gradient_cosines.append(float(cosine.detach()[matched].mean()) if count else float("nan"))
            # the trainer averages over the labelled rows; scaled so that the term is the weight times the mean
            # 1 - cos over the matched rows, as in lrm.fitting
            scale = int(keep.sum()) / max(count, 1)
            loss = loss + self.gradient_weight * scale * (1 - cosine).masked_fill(~matched, 0.0)[keep]
        return loss

    def __call__(self, step: Step) -> LRMFTLoss:
        return LRMFTLoss(self.generator_loss(step), self.auxiliary_loss(self.role, step) if self.concurrent else None)


def check_gradient_weight(weight: float, concurrent: bool, noise_aware: bool, reward_spec=None) -> None:
    """Refuse gradient matching that cannot run, before any work: it needs a concurrent surrogate (a fitted one
    is matched by `lrm fit --gradient-weight`), clean latents and a differentiable reward (checked when
    `reward_spec` is given)."""
    if not 0 <= weight < math.inf:
        raise ValueError(f"gradient_weight must be >= 0 and finite, got {weight!r}")
    if weight == 0:
        return
    if not concurrent:
        raise ValueError("gradient_weight (--gradient-weight) matches the reward's gradient in the concurrent "
                         "surrogate's updates; add concurrent (--concurrent), or fit the surrogate with `lrm fit "
                         "--gradient-weight`")
    if reward_spec is not None and not reward_spec.differentiable:
        raise ValueError(f"gradient_weight: reward {reward_spec.name!r} is not differentiable, so it has no latent "
                         "gradient to match; leave out gradient_weight")
    if noise_aware:
        raise ValueError("gradient matching compares gradients at clean latents; leave out gradient_weight or "
                         "noise_aware")


def _recent_mean(values: list[float]) -> float:
    recent = [v for v in values[-FIDELITY_WINDOW:] if math.isfinite(v)]
    return sum(recent) / len(recent) if recent else float("nan")


def initial_label_stats(surrogate: LatentRewardModel, finite: torch.Tensor) -> None:
    """Set a fresh surrogate's label mean and std from the finite labels (n,) of its first batch, gathered over the
    ranks under torchrun so that every rank standardises alike; left unset below 2 labels or with no spread."""
    labels = torch.tensor([v for part in distributed.gather_objects(finite.tolist()) for v in part], dtype=finite.dtype)
    if labels.numel() >= 2 and float(labels.std()) > 0:
        surrogate.set_label_stats(float(labels.mean()), float(labels.std()))


def _unfitted(surrogate: LatentRewardModel) -> bool:
    """True for a surrogate still at its initial label statistics (mean 0, std 1): never fitted."""
    return float(surrogate.label_mean) == 0.0 and float(surrogate.label_std) == 1.0
