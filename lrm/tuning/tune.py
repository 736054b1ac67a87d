"""Reward tuning of a few-step student with one hook, as a library call (what `lrm tune` runs).

    result = tune(student, TrueReward(codec, rewards.load("jpeg-compressibility")), prompts, encoder,
                  TuneConfig(method="lrm", concurrent=True, steps=200))
    result.records   # TuningMonitor records at fixed prompts and seeds: before, every eval_every steps, at the end

The student is tuned alone, or, from a teacher, distilled alongside with DISTILL_TERMS (VSD; CD, which needs
real data). One method:
- "lrm": LRM fine-tuning (Eq. 11) through `surrogate` (a fitted one, frozen), or, with `concurrent`, through
  a surrogate trained alongside on the true reward of the student's samples (the given one warm-starts it;
  none: a fresh DEFAULT_PRESETS one for the reward's kind); with `noise_aware` the surrogate scores the
  student's samples noised to x_t, t ~ U{0..0.5 T} (a noise-aware surrogate), instead of x0. With a `store`,
  its real latents join the student's samples in the merged batch x | x_hat the surrogate trains on (Alg. 1
  lines 15-17), each labelled by the true reward of its decoded pixels; without one it labels the student's
  samples only;
- "ddpo": DDPO-SF (Alg. 2) on the true reward;
- "direct": ReFL / DRaFT-K through the decoder and a differentiable reward.
Each step draws `batch_size` prompts (seeded by the step, so a run is reproducible); with a `store` (real
latents of the generator's latent space and text encoder), each step's batch is instead `batch_size` of its rows:
latents, text tokens and captions (Alg. 1 line 6: (x, c) from the data), and `prompts` serve the evaluations only.
With `run_dir`, the run checkpoints at every evaluation and resumes exactly when rerun (lrm.tuning.tune_run).
The result also holds the trainer's step logs, the mean seconds per step and the peak memory (CUDA: max
allocated, None on the CPU; on every device the process's peak resident set and, on Linux, its parts: what was
resident before the first step and what the steps added; lrm.tuning.memory).
Regularisers (DOLLAR Sec. 9.3's over-optimisation, lrm.studies): `kl_weight` > 0 adds the KL-to-initial penalty
(lrm.tuning.kl_penalty, against a frozen copy of the starting student); several surrogates (a list) form an
ensemble (lrm.tuning.ensemble): LRM fine-tuning follows their mean and `disagreement_weight` penalises their
spread; `concurrent` refreshes the surrogate on the student's current samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from lrm import distributed
from lrm.generators.sampling import Samples
from lrm.text.base import pad_rows
from lrm.tuning import tune_run
from lrm.tuning.cd import CD
from lrm.tuning.ddpo import DDPO
from lrm.tuning.denoise import Batch
from lrm.tuning.direct import DirectReward
from lrm.tuning.ensemble import Disagreement, SurrogateEnsemble
from lrm.tuning.kl_penalty import INITIAL, KLPenalty
from lrm.tuning.lrm_ft import LRM, LRMFineTune, check_gradient_weight, surrogate_role
from lrm.tuning.memory import TrainingMemory, peak_rss_mb
from lrm.tuning.monitor import TuningMonitor, TuningRecord
from lrm.tuning.roles import STUDENT, Role, Roles, adamw, build_roles, frozen_copy
from lrm.tuning.trainer import DistillConfig, Distiller, StepLog, check_autocast
from lrm.tuning.true_reward import TrueReward
from lrm.tuning.vsd import VSD

METHODS = ("lrm", "ddpo", "direct")
DISTILL_TERMS = {"vsd": VSD, "cd": CD}  # distilled alongside from a teacher (DOLLAR: VSD Eq. 8, CD Eq. 4 on real data)


@dataclass
class TuneConfig:
    method: str = "lrm"  # one of METHODS
    steps: int = 200  # generator updates
    student_steps: int = 4  # the student's sampling grid (DOLLAR: 4 steps [999, 749, 499, 249])
    batch_size: int = 8  # prompts per update
    lr: float = 1e-5  # the student's AdamW (build_roles' default student rate)
    concurrent: bool = False  # "lrm": train the surrogate alongside (Alg. 1 lines 15-17)
    noise_aware: bool = False  # "lrm": the surrogate scores x_t = alpha_t x0 + sigma_t eps, t ~ U{0..0.5 T}, not x0
    #                            (lrm.tuning.lrm_ft; a noise-aware surrogate, fitted so or built so when concurrent)
    surrogate_lr: float = 1e-4  # the concurrent surrogate's AdamW
    gradient_weight: float = 0.0  # "lrm", concurrent: its updates also match the reward's latent gradient (lrm_ft)
    grad_steps: int | None = None  # "ddpo": N (default 2); "direct": K (default 1)
    prompt_history: int = 0  # "ddpo": normalise by each prompt's last H rewards once it has H (ddpo-pytorch's
    #                          per-prompt stat tracker, 16 there); 0: by the batch's (lrm.tuning.ddpo)
    frames: int | None = None  # "direct" on video: latent frames decoded per sample (None: all)
    gradient_checkpointing: bool = True  # "ddpo", "direct": their student calls with gradient recompute their
    #                                      activations in backward (one step's held at a time, one more forward each)
    distill: tuple[str, ...] = ()  # start from a teacher and distil alongside: DISTILL_TERMS names (DOLLAR: VSD)
    eval_every: int = 20  # steps between monitor records
    per_prompt: int = 4  # monitor samples per prompt
    eval_prompts: int = 4  # monitor prompts (the first of `prompts`)
    seed: int = 0  # of the trainer's draws and the monitor's seeds
    kl_weight: float = 0.0  # lambda of the KL-to-initial penalty (lrm.tuning.kl_penalty); 0: no penalty
    disagreement_weight: float = 1.0  # with an ensemble of surrogates: weight of their disagreement (std) penalty
    gradient_alignment: bool = True  # monitor: record the surrogate's gradient alignment with a differentiable reward
    #                                  (a backward pass of the pixel reward per monitor sample and evaluation)
    autocast: str | None = None  # None (float32) or "bf16": the terms' forward passes under bf16 autocast (weights,
    #                              optimisers, samplers, the true reward and evaluations stay float32); a rerun may
    #                              change it

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_autocast(self.autocast)
        if self.frames is not None and self.method != "direct":
            raise ValueError(f"frames selects the frames that method 'direct' decodes (got {self.method!r})")
        self.distill = tuple(self.distill)
        unknown = [name for name in self.distill if name not in DISTILL_TERMS]
        if unknown:
            raise ValueError(f"distill terms {unknown} are not available here; choose from {list(DISTILL_TERMS)}")
        for name in ("concurrent", "noise_aware", "gradient_weight"):
            if getattr(self, name) and self.method != "lrm":
                raise ValueError(f"{name} is about the latent surrogate, which only method 'lrm' uses "
                                 f"(got {self.method!r})")
        if self.method == "lrm":
            check_gradient_weight(self.gradient_weight, self.concurrent, self.noise_aware)
        for name in ("lr", "surrogate_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.surrogate_lr != TuneConfig.surrogate_lr and not self.concurrent:
            raise ValueError(f"surrogate_lr {self.surrogate_lr!r} trains a concurrent surrogate: add concurrent "
                             "(--concurrent), or leave it out (a fitted surrogate stays frozen)")
        if self.prompt_history and self.method != "ddpo":
            raise ValueError(f"prompt_history sets DDPO-SF's per-prompt reward statistics; method {self.method!r} "
                             "has none")
        if not isinstance(self.prompt_history, int) or self.prompt_history < 0 or self.prompt_history == 1:
            raise ValueError(f"prompt_history must be 0 (off) or an integer >= 2 (one reward has no spread), got "
                             f"{self.prompt_history!r}")
        if self.grad_steps is not None:
            if self.method == "lrm":
                raise ValueError(f"grad_steps sets DDPO's N or direct's K (the sampling steps with gradient); method "
                                 f"'lrm' has none, got grad_steps={self.grad_steps!r}")
            if int(self.grad_steps) < 1:
                raise ValueError(f"grad_steps must be a positive integer, got {self.grad_steps!r}")
        if not self.gradient_checkpointing and self.method == "lrm":
            raise ValueError("gradient_checkpointing concerns the student calls DDPO-SF and direct backpropagate "
                             "through; method 'lrm' backpropagates through one, so there is nothing to turn off")
        if not self.kl_weight >= 0 or not self.disagreement_weight >= 0:
            raise ValueError(f"kl_weight and disagreement_weight must be >= 0, got {self.kl_weight!r} and "
                             f"{self.disagreement_weight!r}")
        for name in ("steps", "batch_size", "eval_every", "eval_prompts", "student_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.method == "ddpo" and self.batch_size < 2 and not self.prompt_history:
            raise ValueError("ddpo normalises each reward by its batch's (per prompt, else the whole batch's): with "
                             f"batch_size {self.batch_size} every advantage is 0 and nothing is learnt; use 2 or more")


@dataclass
class TuneResult:
    student: nn.Module  # the tuned student
    records: list[TuningRecord]
    logs: list[StepLog]
    seconds_per_step: float
    peak_memory_mb: float | None  # CUDA max allocated over the training steps; None on CPU
    peak_rss_mb: float  # the process's peak resident set after tuning (MiB; loading included)
    loaded_rss_mb: float | None  # resident set before the first step (lrm.tuning.memory.TrainingMemory; None: not
    #                              Linux, or no step run)
    added_rss_mb: float | None  # what the training steps added to it at their peak (evaluations left out)
    term: object  # the hook (its counters: nonfinite rewards, samples, surrogate fidelity)
    samples_before: Samples | None  # the monitor's samples before tuning (for grids; None on torchrun ranks but 0)
    samples_after: Samples | None  # and after


def build_term(config: TuneConfig, true_reward: TrueReward, latent_shape, real: bool = False):
    """The hook of config.method, checked against the reward and the latent shape before any work; real: the
    concurrent surrogate also trains on the batches' real latents."""
    if config.method == "ddpo":
        return DDPO(true_reward, latent_shape, steps=config.student_steps, grad_steps=config.grad_steps,
                    gradient_checkpointing=config.gradient_checkpointing, history=config.prompt_history)
    if config.method == "direct":
        return DirectReward(true_reward, latent_shape, steps=config.student_steps, grad_steps=config.grad_steps or 1,
                            frames=config.frames, gradient_checkpointing=config.gradient_checkpointing)
    return LRMFineTune(true_reward if config.concurrent else None, real=real, noise_aware=config.noise_aware,
                       latent_shape=latent_shape, gradient_weight=config.gradient_weight, sign=true_reward.sign)


def tuning_roles(generator: nn.Module, config: TuneConfig, latent_shape, surrogate,
                 true_reward: TrueReward) -> Roles:
    """The student (`generator` itself, trained in place; with config.distill a copy of the teacher `generator`,
    with a fake score for VSD and an EMA student for CD), its frozen initial copy for a KL penalty, and, for "lrm",
    the surrogate role (checked against the student; a list of surrogates: their ensemble)."""
    if config.distill:
        roles = build_roles(generator, student_lr=config.lr, fake_lr=config.lr, fake_score="vsd" in config.distill,
                            ema="cd" in config.distill)
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
    fitted = list(surrogate) if isinstance(surrogate, (list, tuple)) else [surrogate] if surrogate is not None else []
    if config.noise_aware and not all(member.noise_aware for member in fitted):
        raise ValueError("noise_aware scoring needs a noise-aware surrogate: fit it with `lrm fit REWARD "
                         "--noise-aware`, or leave out noise_aware")
    if isinstance(surrogate, (list, tuple)):
        if config.concurrent:
            raise ValueError("an ensemble of surrogates is frozen; leave out concurrent, or give one surrogate")
        if config.noise_aware:
            raise ValueError("an ensemble's disagreement penalty scores clean samples; leave out noise_aware, or give "
                             "one surrogate")
        for member in surrogate:
            surrogate_role(member, student, latent_shape, reward=true_reward.name)  # checks each member
        roles.add(Role(LRM, SurrogateEnsemble(list(surrogate))))
        return roles
    if surrogate is None:
        if not config.concurrent:
            raise ValueError("method 'lrm' needs a fitted surrogate (`lrm fit REWARD`), or concurrent=True to train "
                             "one alongside")
        from lrm.models import DEFAULT_PRESETS, build

        with torch.random.fork_rng(devices=[]):  # its initial weights from config.seed: a rerun builds the same one
            torch.manual_seed(config.seed)
            surrogate = build(DEFAULT_PRESETS[true_reward.spec.kind], int(latent_shape[1]),
                              text_dim=getattr(student, "text_dim", None) if true_reward.spec.needs_text else None,
                              noise_aware=config.noise_aware).to(next(student.parameters()).device)
    roles.add(surrogate_role(surrogate, student, latent_shape, concurrent=config.concurrent, lr=config.surrogate_lr,
                             reward=true_reward.name))
    return roles


def check_store(store, generator: nn.Module, latent_shape) -> None:
    """Refuse real data the student cannot be trained beside, with one line naming what differs."""
    if tuple(store.latent_shape) != tuple(latent_shape):
        raise ValueError(f"store {store.path} holds latents of shape {tuple(store.latent_shape)} and the generator "
                         f"makes {tuple(latent_shape)}; use a store of the generator's latent space and size")
    codec = getattr(generator, "codec_settings", None)
    if codec is not None and dict(store.codec_settings) != dict(codec):
        raise ValueError(f"store {store.path} was encoded with codec {store.codec_settings}, the generator works in "
                         f"{codec}; use a store of the generator's codec")
    text_id = getattr(generator, "text_encoder_id", None)
    if text_id is not None and store.text_encoder_id != text_id:
        raise ValueError(f"store {store.path} holds {store.text_encoder_id!r} text tokens and the generator reads "
                         f"{text_id!r}; use a store encoded with {text_id!r}")


def tune(generator: nn.Module, true_reward: TrueReward, prompts: Sequence[str], text_encoder, config: TuneConfig,
         *, latent_shape: Sequence[int], surrogate: nn.Module | Sequence[nn.Module] | None = None, store=None,
         run_dir: str | Path | None = None, settings: dict | None = None,
         on_evaluation: Callable[[int, Samples], None] | None = None, progress: bool = False) -> TuneResult:
    """Tune the student `generator` in place toward `true_reward` (module docstring); with config.distill,
    `generator` is a teacher, left unchanged, and the student is its copy (DOLLAR's VSD + LRM from the start).
    `surrogate`: one fitted surrogate, or a list of two or more (an ensemble). store: a LatentStore of real
    latents (needed by CD; joins the concurrent surrogate's batches). run_dir: checkpoint there at every
    evaluation and resume from its newest checkpoint; settings: what else identifies the run beside `config`
    (reward, start run, prompts), which a rerun must keep (lrm.tuning.tune_run). `on_evaluation(step, samples)`
    is called after each monitor evaluation with its samples (to write them; none are kept beyond the first and
    the last, which a video run could not hold). progress: a bar over the steps with the losses and the last gold.
    Every check runs before any work; the tuned student is result.student.

    With a torchrun process group open (lrm.distributed.init_from_env) the ranks split each step's batch
    (batch_size a multiple of their number) and average their gradients; rank 0 alone evaluates, calls
    on_evaluation, shows the bar and writes (config.json and the checkpoints, into which every rank's RNG streams
    are gathered), so result.records and the samples are rank 0's; the other ranks return the same student with
    no records. They wait for rank 0's evaluations at the next collective (the process group's timeout: gloo's
    30 minutes, nccl's 10 by default)."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("tune needs at least one prompt")
    latent_shape = tuple(int(v) for v in latent_shape)
    if "cd" in config.distill and store is None:
        raise ValueError("distill term 'cd': CD needs real latents; give a store of the teacher's latent space "
                         "(--store STORE, or a teacher whose config.json records its store)")
    if store is not None:
        check_store(store, generator, latent_shape)
    term = build_term(config, true_reward, latent_shape, real=store is not None)
    roles = tuning_roles(generator, config, latent_shape, surrogate, true_reward)
    student = roles.module(STUDENT)
    lrm = roles.module(LRM) if LRM in roles else None
    world = distributed.group_size()
    rank = distributed.rank() if world > 1 else 0
    main = rank == 0
    monitor = TuningMonitor(student, true_reward, prompts[: config.eval_prompts], text_encoder,
                            latent_shape=latent_shape, steps=config.student_steps, per_prompt=config.per_prompt,
                            seed=config.seed, surrogate=lrm,
                            initial=roles.module(INITIAL) if INITIAL in roles else None,
                            gradient_alignment=config.gradient_alignment) if main else None
    terms = [DISTILL_TERMS[name]() for name in config.distill] + [term] + regularisers(config, lrm)
    weights = {KLPenalty.name: config.kl_weight, Disagreement.name: config.disagreement_weight}
    distiller = Distiller(roles, terms, DistillConfig(latent_shape=latent_shape, student_steps=config.student_steps,
                                                      seed=config.seed, autocast=config.autocast),
                          weights={t.name: weights[t.name] for t in terms if t.name in weights})
    device = next(student.parameters()).device
    if store is not None:
        from lrm.tuning.run import store_batches

        # DDPO-SF groups its rewards by caption (its tokens' bytes would differ with the padding of each batch)
        batches = store_batches(store, config.batch_size, config.seed, device,
                                with_prompts=true_reward.spec.needs_text or config.method == "ddpo", rank=rank,
                                world=world)
    else:
        # every prompt embedded once, here: a resumed run conditions on the same embeddings (a prompt's embedding
        # moves by ~1e-6 with the prompts it is padded with, so embedding each step's batch would not resume exactly)
        batches = prompt_batches(prompts, text_encoder.token_rows(prompts), config.batch_size, device, rank, world)
    if run_dir is not None:
        run_dir = Path(run_dir)
        tune_run.check_settings(run_dir, {"tune": asdict(config), **(settings or {})}, asdict(TuneConfig()),
                                write=main, world_size=distributed.world_size())  # as the trainer records it
        distributed.barrier()  # the folder and its config.json exist before any rank checkpoints
    student_extra = {"student_steps": config.student_steps, "latent_shape": list(latent_shape)}
    peak = 0.0  # max over the training steps of CUDA's peak allocation (reset before each step)

    def evaluate(step: int) -> None:
        if not main:  # rank 0 evaluates; the others meet it at the next step's gradient average
            return
        monitor(step)
        if on_evaluation is not None:
            on_evaluation(step, monitor.last)

    evaluate(0)  # the starting student's samples (the "before" grid); a resumed run's records come from its checkpoint
    logs: list[StepLog] = []
    resumed = tune_run.resume(run_dir, distiller, term, true_reward) if run_dir is not None else None
    records = monitor.records if main else []  # rank 0's evaluations (the same list the monitor appends to)
    if resumed is not None:
        records[:], logs = resumed
    elif run_dir is not None:
        tune_run.save(run_dir, distiller, records, logs, term, true_reward, student_extra)
    memory = TrainingMemory()
    memory.start()
    bar = tqdm(total=config.steps, initial=min(distiller.step, config.steps), desc="tune", unit="step", leave=False,
               dynamic_ncols=True, disable=not progress or not main)
    gold = {"gold": f"{records[-1].gold:.4g}"} if records else {}
    while distiller.step < config.steps:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        logs.append(distiller.train_step(batches(distiller.step)))
        memory.update()
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20)
        if distiller.step % config.eval_every == 0 or distiller.step == config.steps:
            memory.pause()
            evaluate(distiller.step)
            gold = {"gold": f"{records[-1].gold:.4g}"} if records else {}
            if run_dir is not None:
                tune_run.save(run_dir, distiller, records, logs, term, true_reward, student_extra)
            memory.resume()
        bar.update()
        bar.set_postfix({**{k: f"{v:.3g}" for k, v in logs[-1].losses.items()}, **gold}, refresh=False)
    bar.close()
    if main and monitor.last is monitor.first and distiller.step > 0:  # resumed at the end: the final samples again
        monitor.last = monitor.samples()
    seconds = sum(log.seconds for log in logs) / len(logs) if logs else float("nan")
    return TuneResult(student, records, logs, seconds, peak if device.type == "cuda" else None,
                      peak_rss_mb(), memory.loaded_mb if memory.added_mb is not None else None, memory.added_mb,
                      term, monitor.first if main else None, monitor.last if main else None)


def prompt_batches(prompts: list[str], rows: dict, batch_size: int, device, rank: int | None = None,
                   world: int | None = None) -> Callable[[int], list[Batch]]:
    """batches(step) -> [Batch] of this rank's share of the step's batch_size prompts, drawn with replacement by a
    generator seeded with the step (the same draw on every rank; torchrun rank r of `world` takes the r-th of
    `world` equal slices). rows: each prompt's token rows (text_encoder.token_rows(prompts))."""
    share = distributed.local_slice(batch_size, rank, world)  # ValueError unless batch_size splits evenly

    def batches(step: int) -> list[Batch]:
        pick = torch.randint(len(prompts), (batch_size,), generator=torch.Generator().manual_seed(step))
        chosen = [prompts[i] for i in pick.tolist()[share]]
        text = pad_rows([rows[p] for p in chosen])
        return [Batch(text.emb.to(device), text.mask.to(device), prompts=chosen)]

    return batches


def regularisers(config: TuneConfig, lrm: nn.Module | None) -> list:
    """The regularising terms of the run: the KL penalty when kl_weight > 0, the disagreement penalty with an
    ensemble of surrogates."""
    terms = [KLPenalty()] if config.kl_weight > 0 else []
    return terms + ([Disagreement()] if isinstance(lrm, SurrogateEnsemble) else [])
