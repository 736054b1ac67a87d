"""The distillation trainer: DOLLAR Alg. 1 (and AVDM2 Alg. 1) as one loop over roles and loss terms.

Each generator step:
  1. the student's update (Alg. 1 lines 8-10): per micro-batch, x_hat = G_theta(c, eps) by backward
     simulation on the student's grid (lrm.tuning.denoise.student_sample), L_G = sum_k w_k mean(L_k), with
     w = beta_CD = 0.5 for CD (DOLLAR Sec. 3.3) and 1 otherwise unless given; accumulate, clip, step;
     then the EMA student follows;
  2. each auxiliary role a term trains (fake score, discriminator head, 2D fake score, later the LRM)
     takes `updates_per_step` updates (Alg. 1 line 13; DOLLAR 5:1, AVDM2 2:1), each on fresh detached
     student samples with the sum of the losses of the terms that train it.
A non-finite loss or gradient norm skips that role's update (no optimiser step, gradients dropped) and
is counted; so does an update in which no term had a sample to learn from (a reward hook whose rewards were all
non-finite returns an empty loss: alone, it would still move the weights along Adam's momentum).
Compute may run under bf16 autocast (never fp16: its range overflows in distillation).
Randomness (sampler noise, timesteps, frames) comes from one CPU torch.Generator saved in checkpoints,
so with a deterministic data function `batches(step)` a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from lrm import distributed
from lrm.tuning.checkpoint import latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from lrm.tuning.denoise import Batch, student_sample
from lrm.tuning.roles import EMA, STUDENT, Roles
from lrm.tuning.terms import Step, Term

DEFAULT_WEIGHTS = {"cd": 0.5}  # beta_CD (DOLLAR Sec. 7.3); every other term 1.0 (AVDM2 Eq. 9 lambdas)
AUTOCAST = {None: None, "bf16": torch.bfloat16}


def check_autocast(autocast: str | None) -> None:
    """ValueError unless `autocast` is a key of AUTOCAST (fp16 is refused with the reason)."""
    if autocast not in AUTOCAST:
        raise ValueError(f"autocast must be one of {list(AUTOCAST)}, got {autocast!r} (fp16 is not supported: its "
                         "range overflows in distillation; use bf16)")


@dataclass
class DistillConfig:
    """How the loop runs (the terms carry their own hyper-parameters)."""

    latent_shape: tuple[int, ...]  # (T, c, h, w) of one student sample
    student_steps: int = 4  # the student's sampling grid: 1 [999], 2 [999, 499], 4 [999, 749, 499, 249]
    accumulation: int = 1  # micro-batches per optimiser step
    clip_norm: float | None = 1.0  # gradient-norm clip per role; None: no clipping
    ema_decay: float = 0.95  # EMA student (CD's target network; LCM's 0.95)
    autocast: str | None = None  # None (float32) or "bf16"
    seed: int = 0  # of the trainer's generator (noise, timesteps, frames)

    def __post_init__(self) -> None:
        self.latent_shape = tuple(int(v) for v in self.latent_shape)
        check_autocast(self.autocast)
        if not isinstance(self.student_steps, int) or self.student_steps < 1:
            raise ValueError(f"student_steps must be a positive integer (DOLLAR: 1, 2 or 4), "
                             f"got {self.student_steps!r}")
        if not isinstance(self.accumulation, int) or self.accumulation < 1:
            raise ValueError(f"accumulation must be a positive integer, got {self.accumulation!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")


@dataclass
class StepLog:
    step: int
    losses: dict[str, float] = field(default_factory=dict)  # "vsd", "cd", ... and "<role>" for auxiliary roles
    skipped: list[str] = field(default_factory=list)  # roles whose update was skipped (non-finite, or nothing to learn)
    seconds: float = 0.0
    peak_memory_mb: float | None = None  # CUDA peak allocated during the step (None on the CPU)


class Distiller:
    """Runs the loop above over `roles` with `terms` (any subset of vsd, cd, adm, sdm2d, reward hooks)."""

    def __init__(self, roles: Roles, terms: Sequence[Term], config: DistillConfig,
                 weights: dict[str, float] | None = None):
        if not terms:
            raise ValueError("the distiller needs at least one loss term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss terms must have distinct names, got {names}")
        unknown = sorted(set(weights or {}) - set(names))
        if unknown:
            raise ValueError(f"weights given for terms {unknown} that are not in this run ({names})")
        roles.require([STUDENT], "the distiller")
        if not roles[STUDENT].trainable:
            raise ValueError("the student role needs an optimiser")
        for term in terms:
            roles.require([*term.reads, *term.trains], f"loss term {term.name!r}")
            frozen = [r for r in term.trains if not roles[r].trainable]
            if frozen:
                raise ValueError(f"loss term {term.name!r} trains {frozen}, which have no optimiser")
        self.roles, self.terms, self.config = roles, list(terms), config
        self.weights = {t.name: (weights or {}).get(t.name, DEFAULT_WEIGHTS.get(t.name, 1.0)) for t in terms}
        self.auxiliary = list(dict.fromkeys(r for t in terms for r in t.trains))  # in term order, unique
        self.generator = torch.Generator().manual_seed(config.seed + distributed.rank())  # other draws per rank
        self.step = 0
        self.updates = {r.name: 0 for r in roles.trainable()}  # optimiser steps taken per role
        self.skipped = {r.name: 0 for r in roles.trainable()}  # updates skipped: non-finite, or nothing to learn

    # ---------------------------------------------------------------- one generator step

    def train_step(self, batches: Sequence[Batch]) -> StepLog:
        """One generator step on `accumulation` micro-batches, then the auxiliary roles' updates."""
        if len(batches) != self.config.accumulation:
            raise ValueError(f"train_step needs {self.config.accumulation} micro-batches, got {len(batches)}")
        start = time.perf_counter()
        device = next(self.roles.module(STUDENT).parameters()).device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        log = StepLog(self.step)
        if self._update(STUDENT, batches, self._generator_losses, log) and EMA in self.roles:
            self._update_ema()
        for role in self.auxiliary:
            for _ in range(self.roles[role].updates_per_step):
                self._update(role, batches, lambda batch, r=role: self._auxiliary_losses(r, batch), log)
        self.step += 1
        log.seconds = time.perf_counter() - start
        if device.type == "cuda":
            log.peak_memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
        return log

    def _step_for(self, batch: Batch, grad: bool) -> Step:
        needs_sample = any(t.needs_sample for t in self.terms)
        x_hat = (student_sample(self.roles.module(STUDENT), batch, self.config.latent_shape,
                                self.config.student_steps, self.generator, grad=grad)
                 if needs_sample else torch.empty(0))
        return Step(self.roles, batch, x_hat, self.generator)

    def _generator_losses(self, batch: Batch) -> dict[str, tuple[float, torch.Tensor, bool]]:
        step = self._step_for(batch, grad=True)
        return {t.name: (self.weights[t.name], *term_mean(t.generator_loss(step))) for t in self.terms}

    def _auxiliary_losses(self, role: str, batch: Batch) -> dict[str, tuple[float, torch.Tensor, bool]]:
        step = self._step_for(batch, grad=False)
        means = [term_mean(t.auxiliary_loss(role, step)) for t in self.terms if role in t.trains]
        return {role: (1.0, sum(mean for mean, _ in means), all(empty for _, empty in means))}

    def _autocast(self):
        dtype = AUTOCAST[self.config.autocast]
        if dtype is None:
            return contextlib.nullcontext()
        device = next(self.roles.module(STUDENT).parameters()).device
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _update(self, role_name: str, batches: Sequence[Batch], losses_of: Callable, log: StepLog) -> bool:
        """Accumulate the role's loss over the micro-batches (and, under torchrun, average the gradient over
        the ranks) and take one optimiser step; False when skipped (on every rank alike)."""
        role = self.roles[role_name]
        optimizer = role.optimizer
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        finite_loss, empty = True, True
        for batch in batches:
            with self._autocast():
                losses = losses_of(batch)  # name -> (weight, mean loss, no sample carried a loss)
            total = sum(weight * loss for weight, loss, _ in losses.values())
            empty = empty and all(nothing for _, _, nothing in losses.values())
            # every rank stops at the same micro-batch: the terms of the next one may hold collectives (DDPO's
            # gathered advantages), which a rank that stopped alone would never join
            if not all_ranks_agree(bool(torch.isfinite(total))):
                finite_loss = False
                break
            (total / len(batches)).backward()
            for name, (_, loss, _) in losses.items():  # logged unweighted
                totals[name] = totals.get(name, 0.0) + float(loss.detach()) / len(batches)
        if not finite_loss or all_ranks_agree(empty):  # every rank had nothing to learn from: skip alike
            return self._skip(role_name, log)
        totals = mean_over_ranks(totals)  # the losses of the global batch
        average_gradients(role.parameters())
        max_norm = self.config.clip_norm if self.config.clip_norm is not None else float("inf")  # inf: measure only
        norm = torch.nn.utils.clip_grad_norm_(role.parameters(), max_norm)
        if not torch.isfinite(norm):  # a finite loss whose backward overflowed (the same on every rank)
            return self._skip(role_name, log)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.updates[role_name] += 1
        log.losses.update(totals)  # an auxiliary role updated several times logs its last update
        return True

    def _skip(self, role_name: str, log: StepLog) -> bool:
        self.roles[role_name].optimizer.zero_grad(set_to_none=True)
        self.skipped[role_name] += 1
        log.skipped.append(role_name)
        return False

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.config.ema_decay
        student, ema = self.roles.module(STUDENT), self.roles.module(EMA)
        for p_ema, p in zip(ema.parameters(), student.parameters()):
            if p.requires_grad:  # the rest (a LoRA student's frozen base) never moves
                p_ema.lerp_(p.to(p_ema.dtype), 1.0 - decay)
        for b_ema, b in zip(ema.buffers(), student.buffers()):
            b_ema.copy_(b)

    # ---------------------------------------------------------------- the loop and checkpoints

    def fit(self, batches: Callable[[int], Sequence[Batch]], num_steps: int, run_dir: str | Path | None = None,
            checkpoint_every: int = 0, on_step: Callable[[StepLog], None] | None = None) -> list[StepLog]:
        """Train from the current step up to `num_steps`; batches(step) gives that step's micro-batches, this
        rank's share under torchrun (deterministic in step for exact resume). With run_dir, checkpoints
        every `checkpoint_every` steps and at the end."""
        logs, saved = [], None  # saved: the step of the last checkpoint written here
        while self.step < num_steps:
            log = self.train_step(batches(self.step))
            logs.append(log)
            if on_step is not None:
                on_step(log)
            if run_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                self.save(run_dir)
                saved = self.step
        # the end: unless that step was just saved, or nothing was trained on a resumed (finished) run
        if run_dir is not None and saved != self.step and (logs or self.step == 0):
            self.save(run_dir)
        return logs

    def export_student(self, run_dir: str | Path) -> Path:
        """Write the student to RUN/model, with the settings its few-step sampler needs (student_steps,
        latent_shape) in its "extra". lrm's DiT: a generator run in lrm.generators.io's format, so `lrm sample` /
        `lrm evaluate` and lrm.generators.runs open it as a student. A diffusers denoiser: diffusers files
        (lrm.generators.diffusers_export: unet/ or transformer/, scheduler/), which diffusers' from_pretrained
        and lrm's load_diffusers_denoiser read. The student itself is exported (DMD2 samples from the
        generator, not an EMA); a LoRA student with its adapters merged into the weights. Rank 0 writes."""
        from lrm.generators.diffusers_adapters import DiffusersDenoiser
        from lrm.generators.diffusers_export import save_diffusers_denoiser
        from lrm.generators.io import save_denoiser
        from lrm.tuning.lora import has_lora, merged_copy

        student = self.roles.module(STUDENT)
        if has_lora(student):
            student = merged_copy(student)
        if isinstance(student, DiffusersDenoiser):
            save = save_diffusers_denoiser
        elif hasattr(student, "dimensions"):
            save = save_denoiser
        else:
            raise ValueError(f"exporting a {type(student).__name__} student is not supported (lrm's LatentDiT or a "
                             "diffusers denoiser); save its weights from the checkpoint instead")
        timesteps = student.schedule.timesteps(self.config.student_steps).tolist()  # the few-step sampler's grid
        extra = {"student_steps": self.config.student_steps, "timesteps": timesteps,
                 "latent_shape": list(self.config.latent_shape), "distilled_with": self.weights, "step": self.step}
        folder = Path(run_dir) / "model"
        if distributed.is_main():
            save(student, folder, extra=extra)
        distributed.barrier()
        return folder

    def _state(self) -> dict:
        return {"step": self.step, "updates": self.updates, "skipped": self.skipped,
                "config": asdict(self.config), "weights": self.weights, "terms": [t.name for t in self.terms]}

    def _checkpointed(self) -> dict:
        """The modules a checkpoint keeps: those training changes (trainable roles, the EMA). Frozen roles (the
        teachers) are rebuilt from their runs, so a checkpoint does not copy them."""
        return {name: self.roles.module(name) for name in self.roles.names()
                if self.roles[name].trainable or name == EMA}

    def save(self, run_dir: str | Path, extra: Callable[[Path], None] | None = None) -> Path | None:
        """Checkpoint into run_dir (rank 0 writes; every rank's RNG streams are gathered into it); extra(folder)
        adds the caller's files to the checkpoint atomically (lrm.tuning.checkpoint.save_checkpoint)."""
        rng = {"trainer": self.generator.get_state(), "torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        ranks = gather_to_main(rng)
        folder = None
        if distributed.is_main():
            rng_all = {f"{name}.rank{r}": state for r, states in enumerate(ranks) for name, state in states.items()}
            modules = self._checkpointed()
            optimizers = {r.name: r.optimizer for r in self.roles.trainable()}
            state = {**self._state(), "world_size": distributed.world_size()}
            folder = save_checkpoint(run_dir, self.step, modules, optimizers, rng_all, state, extra)
        distributed.barrier()
        return folder

    def resume(self, run_dir: str | Path) -> bool:
        """Load the run's latest checkpoint if it has one (True), after checking it was written by a run with
        the same terms and number of processes; otherwise leave everything as is (False)."""
        folder = latest_checkpoint(run_dir)
        if folder is None:
            return False
        saved = read_trainer_state(folder)
        if saved["terms"] != [t.name for t in self.terms]:
            raise ValueError(f"checkpoint {folder} was written with terms {saved['terms']}, this run has "
                             f"{[t.name for t in self.terms]}; use another run folder")
        if saved["world_size"] != distributed.world_size():
            raise ValueError(f"checkpoint {folder} was written by {saved['world_size']} processes, this run has "
                             f"{distributed.world_size()}; resume with the same torchrun --nproc_per_node")
        modules = self._checkpointed()
        optimizers = {r.name: r.optimizer for r in self.roles.trainable()}
        rng, state = load_checkpoint(folder, modules, optimizers)
        suffix = f".rank{distributed.rank()}"
        self.generator.set_state(rng["trainer" + suffix])
        torch.set_rng_state(rng["torch_cpu" + suffix])
        devices = sorted((k for k in rng if k.startswith("cuda_") and k.endswith(suffix)),
                         key=lambda k: int(k[len("cuda_"):-len(suffix)]))  # cuda_2 before cuda_10
        cuda = [rng[k] for k in devices]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.step, self.updates, self.skipped = state["step"], state["updates"], state["skipped"]
        return True


# ---------------------------------------------------------------- data parallel (torchrun)
# Gradients are averaged by hand after accumulation rather than through a DistributedDataParallel wrapper,
# so every role stays the plain module the loss terms call (its prediction type, schedule and features).


def term_mean(loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A term's per-sample loss (B',) -> (its mean, False); an empty one (no sample carried a loss, e.g. every reward
    non-finite) -> (a zero that keeps the graph, so the other terms of the update still backpropagate, True)."""
    return (loss.mean(), False) if loss.numel() else (loss.sum(), True)


def all_ranks_agree(ok: bool) -> bool:
    """True when `ok` holds on every rank (one process: ok itself)."""
    if distributed.world_size() <= 1 or not distributed.is_initialized():
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=distributed.collective_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (the same keys on every rank; one process: values itself)."""
    if distributed.world_size() <= 1 or not distributed.is_initialized() or not values:
        return values
    names = sorted(values)
    total = torch.tensor([values[n] for n in names], dtype=torch.float64, device=distributed.collective_device())
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return {n: float(v) / distributed.world_size() for n, v in zip(names, total.tolist())}


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average .grad over the ranks (a parameter without a gradient counts as zeros)."""
    world = distributed.world_size()
    if world <= 1 or not distributed.is_initialized():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad.div_(world)


def gather_to_main(states: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Every rank's `states` (on rank 0; other ranks get their own only)."""
    if distributed.world_size() <= 1 or not distributed.is_initialized():
        return [states]
    gathered: list = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, {k: v.cpu() for k, v in states.items()})
    return gathered
