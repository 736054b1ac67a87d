"""Reward tuning of a few-step student with one hook, as a library call (what `lrm tune` runs).

    result = tune(student, TrueReward(codec, rewards.load("jpeg-compressibility")), prompts, encoder,
                  TuneConfig(method="lrm", concurrent=True, steps=200))
    result.records   # TuningMonitor records at fixed prompts and seeds: before, every eval_every steps, at the end

The student is tuned alone, or, from a teacher, distilled alongside with the DISTILL_TERMS that need no data
(VSD; combine hooks with CD through Distiller and a data function). One method:
- "lrm": LRM fine-tuning (Eq. 11) through `surrogate` (a fitted one, frozen), or, with `concurrent`, through
  a surrogate trained alongside on the true reward of the student's samples (the given one warm-starts it;
  none: a fresh DEFAULT_PRESETS one for the reward's kind). Batches carry no real latents here, so the
  concurrent surrogate labels the student's samples only;
- "ddpo": DDPO-SF (Alg. 2) on the true reward;
- "direct": ReFL / DRaFT-K through the decoder and a differentiable reward.
Regularisers (DOLLAR Sec. 9.3's over-optimisation, lrm.studies): `kl_weight` > 0 adds the KL-to-initial penalty
(lrm.tuning.kl_penalty, against a frozen copy of the starting student); several surrogates (a list) form an
ensemble (lrm.tuning.ensemble): LRM fine-tuning follows their mean and `disagreement_weight` penalises their
spread; `concurrent` refreshes the surrogate on the student's current samples.
Each step draws `batch_size` prompts (seeded by the step, so a run is reproducible). The result also holds
the trainer's step logs, the mean seconds per step and the peak memory (CUDA: max allocated; CPU: None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from lrm.generators.sampling import Samples
from lrm.tuning.ddpo import DDPO
from lrm.tuning.denoise import Batch
from lrm.tuning.direct import DirectReward
from lrm.tuning.ensemble import Disagreement, SurrogateEnsemble
from lrm.tuning.kl_penalty import INITIAL, KLPenalty
from lrm.tuning.lrm_ft import LRM, LRMFineTune, surrogate_role
from lrm.tuning.monitor import TuningMonitor, TuningRecord
from lrm.tuning.roles import STUDENT, Role, Roles, adamw, build_roles, frozen_copy
from lrm.tuning.trainer import DistillConfig, Distiller, StepLog
from lrm.tuning.true_reward import TrueReward
from lrm.tuning.vsd import VSD

METHODS = ("lrm", "ddpo", "direct")
DISTILL_TERMS = {"vsd": VSD}  # distillation terms that need no real data (VSD: DOLLAR Eq. 8)


@dataclass
class TuneConfig:
    method: str = "lrm"  # one of METHODS
    steps: int = 200  # generator updates
    student_steps: int = 4  # the student's sampling grid (DOLLAR: 4 steps [999, 749, 499, 249])
    batch_size: int = 8  # prompts per update
    lr: float = 1e-5  # the student's AdamW (build_roles' default student rate)
    concurrent: bool = False  # "lrm": train the surrogate alongside (Alg. 1 lines 15-17)
    surrogate_lr: float = 1e-4  # the concurrent surrogate's AdamW
    grad_steps: int | None = None  # "ddpo": N (default 2); "direct": K (default 1)
    frames: int | None = None  # "direct" on video: latent frames decoded per sample (None: all)
    distill: tuple[str, ...] = ()  # start from a teacher and distil alongside: DISTILL_TERMS names (DOLLAR: VSD)
    eval_every: int = 20  # steps between monitor records
    per_prompt: int = 4  # monitor samples per prompt
    eval_prompts: int = 4  # monitor prompts (the first of `prompts`)
    seed: int = 0  # of the trainer's draws and the monitor's seeds
    kl_weight: float = 0.0  # lambda of the KL-to-initial penalty (lrm.tuning.kl_penalty); 0: no penalty
    disagreement_weight: float = 1.0  # with an ensemble of surrogates: weight of their disagreement (std) penalty

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.frames is not None and self.method != "direct":
            raise ValueError(f"frames selects the frames that method 'direct' decodes (got {self.method!r})")
        self.distill = tuple(self.distill)
        unknown = [name for name in self.distill if name not in DISTILL_TERMS]
        if unknown:
            hint = (" (CD needs real latents, which tune does not draw: distil with lrm.tuning.Distiller and a data "
                    "function)") if "cd" in unknown else ""
            raise ValueError(f"distill terms {unknown} are not available here; choose from {list(DISTILL_TERMS)}{hint}")
        if self.concurrent and self.method != "lrm":
            raise ValueError(f"concurrent trains a latent surrogate, which only method 'lrm' uses "
                             f"(got {self.method!r})")
        if not self.kl_weight >= 0 or not self.disagreement_weight >= 0:
            raise ValueError(f"kl_weight and disagreement_weight must be >= 0, got {self.kl_weight!r} and "
                             f"{self.disagreement_weight!r}")
        for name in ("steps", "batch_size", "eval_every", "eval_prompts", "student_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")


@dataclass
class TuneResult:
    student: nn.Module  # the tuned student
    records: list[TuningRecord]
    logs: list[StepLog]
    seconds_per_step: float
    peak_memory_mb: float | None  # CUDA max allocated over the training steps; None on CPU
    term: object  # the hook (its counters: nonfinite rewards, samples, surrogate fidelity)
    samples_before: Samples  # the monitor's samples before tuning (for grids)
    samples_after: Samples  # and after


def build_term(config: TuneConfig, true_reward: TrueReward, latent_shape):
    """The hook of config.method, checked against the reward and the latent shape before any work."""
    if config.method == "ddpo":
        return DDPO(true_reward, latent_shape, steps=config.student_steps, grad_steps=config.grad_steps)
    if config.method == "direct":
        return DirectReward(true_reward, latent_shape, steps=config.student_steps, grad_steps=config.grad_steps or 1,
                            frames=config.frames)
    return LRMFineTune(true_reward if config.concurrent else None, real=False, latent_shape=latent_shape)


def tuning_roles(generator: nn.Module, config: TuneConfig, latent_shape, surrogate,
                 true_reward: TrueReward) -> Roles:
    """The student (`generator` itself, trained in place; with config.distill a copy of the teacher `generator`,
    with a fake score for VSD), its frozen initial copy for a KL penalty, and, for "lrm", the surrogate role
    (checked against the student; a list of surrogates: their ensemble)."""
    if config.distill:
        roles = build_roles(generator, student_lr=config.lr, fake_lr=config.lr, ema=False)
    else:
        roles = Roles()
        roles.add(Role(STUDENT, generator, adamw(config.lr)(list(generator.parameters()))))
    student = roles.module(STUDENT)
    if config.kl_weight > 0:
        roles.add(Role(INITIAL, frozen_copy(student)))
    if config.method != "lrm":
        if isinstance(surrogate, (list, tuple)):
            raise ValueError(f"an ensemble of surrogates belongs to method 'lrm', not {config.method!r}")
        return roles
    if isinstance(surrogate, (list, tuple)):
        if config.concurrent:
            raise ValueError("an ensemble of surrogates is frozen; leave out concurrent, or give one surrogate")
        for member in surrogate:
            surrogate_role(member, student, latent_shape)  # checks each member against the student
        roles.add(Role(LRM, SurrogateEnsemble(list(surrogate))))
        return roles
    if surrogate is None:
        if not config.concurrent:
            raise ValueError("method 'lrm' needs a fitted surrogate (`lrm fit REWARD`), or concurrent=True to train "
                             "one alongside")
        from lrm.models import DEFAULT_PRESETS, build

        surrogate = build(DEFAULT_PRESETS[true_reward.spec.kind], int(latent_shape[1]),
                          text_dim=getattr(student, "text_dim", None) if true_reward.spec.needs_text else None)
    roles.add(surrogate_role(surrogate, student, latent_shape, concurrent=config.concurrent, lr=config.surrogate_lr))
    return roles


def tune(generator: nn.Module, true_reward: TrueReward, prompts: Sequence[str], text_encoder, config: TuneConfig,
         *, latent_shape: Sequence[int], surrogate: nn.Module | Sequence[nn.Module] | None = None,
         on_evaluation: Callable[[int, Samples], None] | None = None) -> TuneResult:
    """Tune the student `generator` in place toward `true_reward` (module docstring); with config.distill,
    `generator` is a teacher, left unchanged, and the student is its copy (DOLLAR's VSD + LRM from the start).
    `surrogate`: one fitted surrogate, or a list of two or more (an ensemble). `on_evaluation(step, samples)`
    is called after each monitor evaluation with its samples (to write them; none are kept beyond the first and
    the last, which a video run could not hold).
    Every check runs before any work; the tuned student is result.student."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("tune needs at least one prompt")
    latent_shape = tuple(int(v) for v in latent_shape)
    term = build_term(config, true_reward, latent_shape)
    roles = tuning_roles(generator, config, latent_shape, surrogate, true_reward)
    student = roles.module(STUDENT)
    lrm = roles.module(LRM) if LRM in roles else None
    monitor = TuningMonitor(student, true_reward, prompts[: config.eval_prompts], text_encoder,
                            latent_shape=latent_shape, steps=config.student_steps, per_prompt=config.per_prompt,
                            seed=config.seed, surrogate=lrm,
                            initial=roles.module(INITIAL) if INITIAL in roles else None)
    terms = [DISTILL_TERMS[name]() for name in config.distill] + [term] + regularisers(config, lrm)
    weights = {KLPenalty.name: config.kl_weight, Disagreement.name: config.disagreement_weight}
    distiller = Distiller(roles, terms, DistillConfig(latent_shape=latent_shape, student_steps=config.student_steps,
                                                      seed=config.seed),
                          weights={t.name: weights[t.name] for t in terms if t.name in weights})

    def batches(step: int) -> list[Batch]:
        pick = torch.randint(len(prompts), (config.batch_size,), generator=torch.Generator().manual_seed(step))
        chosen = [prompts[i] for i in pick.tolist()]
        text = text_encoder.encode(chosen)
        return [Batch(text.emb.to(device), text.mask.to(device), prompts=chosen)]

    device = next(student.parameters()).device
    peak = 0.0  # max over the training steps of CUDA's peak allocation (reset before each step)
    def evaluate(step: int) -> None:
        monitor(step)
        if on_evaluation is not None:
            on_evaluation(step, monitor.last)

    evaluate(0)
    logs: list[StepLog] = []
    while distiller.step < config.steps:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        logs.append(distiller.train_step(batches(distiller.step)))
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
        if distiller.step % config.eval_every == 0 or distiller.step == config.steps:
            evaluate(distiller.step)
    seconds = sum(log.seconds for log in logs) / len(logs)
    return TuneResult(student, monitor.records, logs, seconds, peak if device.type == "cuda" else None, term,
                      monitor.first, monitor.last)


def regularisers(config: TuneConfig, lrm: nn.Module | None) -> list:
    """The regularising terms of the run: the KL penalty when kl_weight > 0, the disagreement penalty with an
    ensemble of surrogates."""
    terms = [KLPenalty()] if config.kl_weight > 0 else []
    return terms + ([Disagreement()] if isinstance(lrm, SurrogateEnsemble) else [])
