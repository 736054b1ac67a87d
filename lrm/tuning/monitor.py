"""What a reward-tuning run logs at fixed prompts and seeds (docs/tuning.md; DOLLAR Fig. 11-12).

    monitor = TuningMonitor(student, true_reward, prompts, encoder, latent_shape=(1, 32, 8, 8), steps=4,
                            surrogate=lrm)
    record = monitor(step)     # before tuning, then every few steps

Each call samples the student with its few-step sampler (lrm.generators.sampling.generate_few_step) for the
same prompts and seeds, decodes once, and records the gold reward (the true pixel reward of the decoded
samples), the proxy reward (the surrogate's score of the same latents, when there is one: the gap between
the two is over-optimisation), the diversity (DOLLAR Eq. 27: Vendi score of the pixels per prompt, averaged
over prompts) and the student's distance from its start, three ways: the relative L2 of all parameters; the
KL-like distance mean ||eps_theta - eps_init||^2 of the student against a frozen copy of its start on shared
noisy latents at a fixed seed (lrm.tuning.kl_penalty.eps_distance, DRaFT+); and, of the samples themselves, their
latent RMS distance from the first call's samples at the same seeds and the Frechet distance of their pooled
latent statistics to the first call's (lrm.evaluation.frechet). With an ensemble of surrogates it also records
the members' disagreement. With a surrogate and a differentiable reward it records the gradient alignment: the
cosine between the surrogate's latent gradient and the true reward's (through the decoder) at each sample,
averaged. A surrogate can rank samples well while its gradient is orthogonal to the reward's (near 0): LRM
fine-tuning then moves the proxy and not the gold. It costs one backward pass through the decoder and the
pixel reward per sample and evaluation (one sample's graph at a time; in the process's peak RSS, not in the
training steps' added memory or CUDA peak, which leave evaluations out);
`gradient_alignment=False` skips it (large pixel rewards, long clips). The samples of the first and the latest
call stay in `first` and `last` for grids (a caller that keeps every call's, as lrm.tuning.tune's on_evaluation,
reads `last` after each). Non-finite gold rewards are left out of the mean (and the proxy's, so that both
average the same samples) and counted; non-finite latents leave the Frechet distance NaN. The frozen copy of the
start costs one more copy of the student's weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from lrm.evaluation.frechet import latent_frechet_distance
from lrm.evaluation.vendi import pixel_diversity
from lrm.configs import DEFAULT_PER_PROMPT
from lrm.generators.sampling import Samples, expand_requests, generate_few_step
from lrm.tuning.denoise import evaluating
from lrm.tuning.ensemble import SurrogateEnsemble
from lrm.tuning.kl_penalty import eps_distance
from lrm.tuning.lrm_ft import spearman
from lrm.tuning.roles import frozen_copy
from lrm.tuning.true_reward import TrueReward


@dataclass(frozen=True)
class TuningRecord:
    step: int
    gold: float  # mean true reward of the fixed-seed samples, in the reward's units
    proxy: float  # mean surrogate score of the same latents (reward units); NaN without a surrogate
    diversity: float  # DOLLAR Eq. 27: mean over prompts of the Vendi score of that prompt's decoded samples (NaN: a
    # sample is all black)
    distance: float  # ||theta - theta_0|| / ||theta_0|| over the student's parameters
    nonfinite: int  # samples whose gold reward was NaN or Inf (left out of `gold`)
    fidelity: float = float("nan")  # Spearman of the surrogate's scores vs the gold of the same samples; NaN without one
    eps_distance: float = float("nan")  # KL-like: mean ||eps_theta - eps_init||^2 on shared noisy latents (DRaFT+)
    latent_l2: float = float("nan")  # mean over samples of the RMS latent difference from the first call's samples
    frechet: float = float("nan")  # Frechet distance of pooled latent statistics to the first call's samples
    disagreement: float = float("nan")  # mean std over an ensemble's members of their scores (reward units); NaN
    #                                     without an ensemble
    gradient_alignment: float = float("nan")  # mean over samples of cos(d surrogate / dx, d gold / dx) at the
    # samples' latents x, leaving out samples where either gradient is 0 (e.g. a flat sample); NaN without a
    # surrogate, with a non-differentiable reward, when switched off, or when no sample has both gradients


def relative_distance(module: nn.Module, start: dict[str, torch.Tensor]) -> float:
    """||theta - theta_0|| / ||theta_0|| over the floating-point entries of `start` (a state_dict copy)."""
    state = module.state_dict()
    moved = sum(float((state[k].float() - v.float()).pow(2).sum()) for k, v in start.items() if v.is_floating_point())
    norm = sum(float(v.float().pow(2).sum()) for v in start.values() if v.is_floating_point())
    return math.sqrt(moved / norm) if norm > 0 else float("nan")


class TuningMonitor:
    """Gold and proxy reward, diversity and distance of a student at fixed prompts and seeds."""

    def __init__(self, student: nn.Module, true_reward: TrueReward, prompts: Sequence[str], text_encoder, *,
                 latent_shape: Sequence[int], steps: int = 4, per_prompt: int = DEFAULT_PER_PROMPT, seed: int = 0,
                 surrogate: nn.Module | None = None, initial: nn.Module | None = None,
                 gradient_alignment: bool = True):
        """initial: a frozen copy of the student at its start (made here when not given), for the KL-like
        distance; a run with a KL penalty passes the copy the penalty reads. gradient_alignment: record it
        (with a surrogate and a differentiable reward)."""
        if per_prompt < 2:
            raise ValueError(f"TuningMonitor: per_prompt must be >= 2 (diversity compares a prompt's samples), "
                             f"got {per_prompt}")
        true_reward.check_generator(latent_shape, "TuningMonitor")
        self.student, self.true_reward, self.surrogate = student, true_reward, surrogate
        self.gradient_alignment = gradient_alignment
        self.text_encoder = text_encoder
        self.latent_shape, self.steps = tuple(int(v) for v in latent_shape), steps
        self.prompts, self.seeds = expand_requests(list(prompts), per_prompt, seed)
        self.initial = initial if initial is not None else frozen_copy(student)
        self.seed = seed
        self.records: list[TuningRecord] = []
        self.first: Samples | None = None  # the samples of the first call (before tuning)
        self.last: Samples | None = None  # the samples of the latest call

    @torch.no_grad()
    def samples(self) -> Samples:
        """The student's samples at the fixed prompts and seeds, decoded (what each record scores)."""
        with evaluating(self.student):
            return generate_few_step(self.student, self.prompts, self.seeds, latent_shape=self.latent_shape,
                                     steps=self.steps, codec=self.true_reward.path.codec,
                                     text_encoder=self.text_encoder)

    @torch.no_grad()
    def __call__(self, step: int) -> TuningRecord:
        samples = self.samples()
        spec = self.true_reward.spec
        gold = self.true_reward.path.reward(samples.pixels, self.prompts if spec.needs_text else None)  # (N,)
        finite = torch.isfinite(gold)
        scores, members = self._scores(samples)  # (N,) or None; (K, N) with an ensemble, else None
        first = self.first if self.first is not None else samples
        record = TuningRecord(
            step=step,
            gold=float(gold[finite].mean()) if bool(finite.any()) else float("nan"),
            # the samples gold averages (finite rewards), so the proxy - gold gap compares the same samples
            proxy=float(scores.float()[finite.to(scores.device)].mean()) if scores is not None and bool(finite.any())
            else float("nan"),
            diversity=sample_diversity(samples.pixels, samples.prompts),
            distance=relative_distance(self.student, self.initial.state_dict()),
            nonfinite=int((~finite).sum()),
            fidelity=spearman(scores[finite.to(scores.device)], gold[finite]) if scores is not None else float("nan"),
            eps_distance=self._eps_distance(),
            latent_l2=float((samples.latents - first.latents).flatten(1).pow(2).mean(1).sqrt().mean()),
            frechet=(latent_frechet_distance(samples.latents, first.latents)
                     if bool(torch.isfinite(samples.latents).all()) else float("nan")),  # recorded, not raised
            disagreement=float(members.float().std(0, correction=0).mean()) if members is not None else float("nan"),
            gradient_alignment=self._gradient_alignment(samples),
        )
        self.first = first
        self.last = samples
        self.records.append(record)
        return record

    def _scores(self, samples: Samples) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The surrogate's scores (N,) of the samples' latents and, for an ensemble, each member's (K, N);
        None without a surrogate."""
        if self.surrogate is None:
            return None, None
        device = next(self.surrogate.parameters()).device
        text = self.text_encoder.encode(samples.prompts)
        latents, emb, mask = samples.latents.to(device), text.emb.to(device), text.mask.to(device)
        with evaluating(self.surrogate):
            if isinstance(self.surrogate, SurrogateEnsemble):
                members = self.surrogate.member_scores(latents, emb, mask)  # (K, N)
                return members.mean(0), members
            return self.surrogate(latents, emb, mask), None  # (N,)

    def _gradient_alignment(self, samples: Samples) -> float:
        """Mean over the samples of the cosine between the surrogate's gradient and the true reward's (decoded,
        then scored) with respect to the sample's latents, one sample at a time (one pixel graph in memory); NaN
        when switched off, without a surrogate, with a reward whose spec says it is not differentiable, or where
        no sample has two nonzero gradients. Neither model's parameters get a gradient."""
        if not self.gradient_alignment or self.surrogate is None or not self.true_reward.path.differentiable:
            return float("nan")
        device = next(self.surrogate.parameters()).device
        text = self.text_encoder.encode(samples.prompts)
        cosines = []
        for i, prompt in enumerate(samples.prompts):
            x = samples.latents[i : i + 1].detach().to(device)  # (1, T', c, h, w): a new leaf below
            surrogate_grad = _input_gradient(
                lambda v: self.surrogate(v, text.emb[i : i + 1].to(device), text.mask[i : i + 1].to(device)), x,
                self.surrogate)
            gold_grad = self.true_reward.path.latent_gradient(x, [prompt] if self.true_reward.spec.needs_text
                                                              else None)
            if surrogate_grad is None or gold_grad is None:
                continue
            a, b = surrogate_grad.flatten().float(), gold_grad.flatten().float()
            if bool(a.any()) and bool(b.any()):
                cosines.append(float(torch.dot(a / a.norm(), b / b.norm())))
        return sum(cosines) / len(cosines) if cosines else float("nan")

    def _eps_distance(self) -> float:
        """lrm.tuning.kl_penalty.eps_distance of the student from its initial copy, one shared noisy latent per
        monitor sample, from the monitor's seed (the same latents at every call)."""
        text = self.text_encoder.encode(self.prompts)
        return eps_distance(self.student, self.initial, text.emb, text.mask, latent_shape=self.latent_shape,
                            samples_per_text=1, seed=self.seed)


def _input_gradient(score, x: torch.Tensor, module: nn.Module) -> torch.Tensor | None:
    """d score(x).sum() / dx for x (1, ...), evaluating `module` in eval mode; None when the score does not depend
    on x through autograd (a constant)."""
    with torch.enable_grad():
        x = x.requires_grad_(True)
        with evaluating(module):
            value = score(x)
        if not value.requires_grad:
            return None
        (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
    return grad


def sample_diversity(pixels: torch.Tensor, prompts: Sequence[str]) -> float:
    """DOLLAR Eq. 27 on (N, T, 3, H, W) pixels; NaN when a sample is all black (a student collapsed to black has no
    defined cosine similarity, and a tuning run records that instead of stopping)."""
    measured = pixel_diversity(pixels, prompts)
    return float("nan") if measured is None else measured.mean
