"""The networks of a distillation run and how each is trained (DOLLAR Alg. 1; AVDM2 Alg. 1).

A `Role` is a module with its optimiser (None: frozen), how many optimiser steps it takes per generator
step (DOLLAR: fake score 5; AVDM2: discriminator and 2D fake score 2) and its dtype. `Roles` names them:

  teacher      frozen; the real score of VSD, the ODE solver of CD, the encoder of the discriminator
  student      the few-step generator, a deep copy of the teacher (homogeneous parameterisation,
               DOLLAR Sec. 7.4: it keeps the teacher's prediction type and x0 comes from Eq. 15)
  ema          exponential moving average of the student (no optimiser; the trainer updates it): CD's target
  fake_score   a copy of the teacher trained on student samples with the teacher's objective (VSD)
  discriminator  a trainable head on a frozen encoder's features (AVDM2's denoising GAN)
  teacher_2d   frozen image teacher for a video student (SDM-2D)
  fake_2d      a copy of teacher_2d trained on frames of student samples (SDM-2D)

The reward hooks add more roles under their own names (e.g. "lrm"); loss terms declare by name the roles
they read and train, and `Roles.require` checks them before any work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

TEACHER, STUDENT, EMA, FAKE_SCORE, DISCRIMINATOR = "teacher", "student", "ema", "fake_score", "discriminator"
TEACHER_2D, FAKE_2D = "teacher_2d", "fake_2d"

# DOLLAR Sec. 7.3 ("update ratio as 5 for the fake score", after DMD2); AVDM2 Sec. 4.2 ("we train the
# discriminator and 2D fake model twice as often as the generator").
FAKE_SCORE_UPDATES = 5
DISCRIMINATOR_UPDATES = 2
FAKE_2D_UPDATES = 2

Optimiser = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def adamw(lr: float = 1e-5, weight_decay: float = 0.01) -> Optimiser:
    """AdamW factory (AVDM2 Sec. 5.1: AdamW, betas (0.9, 0.999), weight decay 0.01 for every network)."""
    return lambda params: torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)


@dataclass
class Role:
    """One network of the run. updates_per_step: optimiser steps per generator step (the student: 1)."""

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer | None = None  # None: frozen (or updated by the trainer, as the EMA)
    updates_per_step: int = 1
    dtype: torch.dtype = torch.float32  # of its frozen weights and buffers (the ones it trains stay float32: the
    # optimiser's master copy); autocast decides the compute dtype

    def __post_init__(self) -> None:
        if not isinstance(self.updates_per_step, int) or self.updates_per_step < 1:
            raise ValueError(f"role {self.name}: updates_per_step must be a positive integer, "
                             f"got {self.updates_per_step!r}")
        if self.dtype == torch.float16:
            raise ValueError(f"role {self.name}: float16 weights are not supported (they overflow in "
                             "distillation); use torch.bfloat16 or torch.float32")
        self.module.to(self.dtype)
        if self.trainable:  # the weights AdamW updates stay float32: in bfloat16 most updates at lr 1e-5 round away
            keep_trained_float32(self.module)
        if not self.trainable:  # a trainable module keeps its own requires_grad flags (e.g. a frozen LoRA base)
            self.module.requires_grad_(False)
        self.module.train(self.trainable)

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


@dataclass
class Roles:
    """The roles of a run by name; see the module docstring for the standard names."""

    roles: dict[str, Role] = field(default_factory=dict)

    def add(self, role: Role) -> Role:
        if role.name in self.roles:
            raise ValueError(f"role {role.name!r} is already set")
        self.roles[role.name] = role
        return role

    def __contains__(self, name: str) -> bool:
        return name in self.roles

    def __getitem__(self, name: str) -> Role:
        if name not in self.roles:
            raise KeyError(f"no {name!r} role in this run (have {sorted(self.roles)}); add it with Roles.add "
                           f"or build_roles")
        return self.roles[name]

    def module(self, name: str) -> nn.Module:
        return self[name].module

    def names(self) -> list[str]:
        return list(self.roles)

    def trainable(self) -> list[Role]:
        return [r for r in self.roles.values() if r.trainable]

    def require(self, names, who: str) -> None:
        """A one-line error naming the missing roles that `who` (a loss term) needs."""
        missing = list(dict.fromkeys(n for n in names if n not in self.roles))
        if missing:
            raise ValueError(f"{who} needs the roles {missing}, which this run lacks (have {sorted(self.roles)})")


def frozen_copy(module: nn.Module, shared=()) -> nn.Module:
    """A deep copy with requires_grad False everywhere, in eval mode; the parameters in `shared` are not
    copied: the copy holds those very tensors."""
    twin = copy.deepcopy(module, memo={id(p): p for p in shared})
    twin.requires_grad_(False)
    return twin.eval()


def keep_trained_float32(module: nn.Module, like: nn.Module | None = None) -> None:
    """Cast to float32 the parameters of `module` that are trained (requires_grad), or, with `like`, those whose
    counterpart in `like` (the same architecture, e.g. the student of an EMA copy) is trained."""
    flags = [p.requires_grad for p in (like or module).parameters()]
    for p, trained in zip(module.parameters(), flags, strict=True):
        if trained:
            p.data = p.data.float()


def build_roles(teacher: nn.Module, *, student_lr: float = 1e-5, fake_lr: float = 1e-5,
                fake_score: bool = True, ema: bool = True, discriminator: nn.Module | None = None,
                discriminator_lr: float = 2e-5, teacher_2d: nn.Module | None = None,
                fake_2d_lr: float = 2e-5, dtype: torch.dtype = torch.float32,
                teacher_dtype: torch.dtype | None = None, lora_rank: int | None = None) -> Roles:
    """The roles of DOLLAR Alg. 1 line 4 (student and fake score initialised from the teacher) and, when
    given, AVDM2's discriminator head and 2D teacher (whose copy becomes the 2D fake score). The teacher
    and the 2D teacher are deep-copied and frozen, so the caller's modules are never changed. lora_rank:
    the student, fake score and 2D fake score train LoRA adapters of that rank on their attention
    projections (lrm.tuning.lora), their base weights frozen at the teacher's and shared with the frozen
    teacher (one copy in memory, when dtype == teacher_dtype); None trains every weight."""
    teacher_dtype = teacher_dtype or dtype
    lora = lora_rank is not None

    def copy_of(original: nn.Module, frozen: nn.Module, seed: int) -> nn.Module:  # initialised from a teacher
        if not lora:
            return copy.deepcopy(original)
        from lrm.tuning.lora import add_lora

        # the base weights stay the teacher's: shared with the frozen teacher role, not copied, where the
        # dtypes agree; else a copy of the caller's module (in its own precision)
        shared = base_of(frozen)
        twin = copy.deepcopy(frozen if shared else original, memo={id(p): p for p in shared})
        return add_lora(twin, lora_rank, seed=seed)

    def base_of(frozen: nn.Module) -> list[nn.Parameter]:
        return list(frozen.parameters()) if lora and dtype == teacher_dtype else []

    def trained(module: nn.Module) -> list[nn.Parameter]:
        return [p for p in module.parameters() if p.requires_grad]

    roles = Roles()
    frozen = roles.add(Role(TEACHER, frozen_copy(teacher), dtype=teacher_dtype)).module
    student = copy_of(teacher, frozen, seed=0)  # homogeneous parameterisation: same network, same prediction type
    roles.add(Role(STUDENT, student, adamw(student_lr)(trained(student)), dtype=dtype))
    if ema:  # it follows the student's trained weights in float32 as well
        keep_trained_float32(roles.add(Role(EMA, frozen_copy(student, shared=base_of(frozen)), dtype=dtype)).module,
                             like=student)
    if fake_score:
        fake = copy_of(teacher, frozen, seed=1)
        roles.add(Role(FAKE_SCORE, fake, adamw(fake_lr)(trained(fake)), FAKE_SCORE_UPDATES, dtype))
    if discriminator is not None:
        roles.add(Role(DISCRIMINATOR, discriminator, adamw(discriminator_lr)(list(discriminator.parameters())),
                       DISCRIMINATOR_UPDATES, dtype))
    if teacher_2d is not None:
        frozen_2d = roles.add(Role(TEACHER_2D, frozen_copy(teacher_2d), dtype=teacher_dtype)).module
        fake_2d = copy_of(teacher_2d, frozen_2d, seed=2)
        roles.add(Role(FAKE_2D, fake_2d, adamw(fake_2d_lr)(trained(fake_2d)), FAKE_2D_UPDATES, dtype))
    return roles
