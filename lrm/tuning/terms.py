"""The interface between the trainer and its loss terms (DOLLAR Alg. 1, AVDM2 Alg. 1).

A term is a small class: hyper-parameters in __init__, `reads` (the roles it runs) and `trains` (the
auxiliary roles it optimises; the student is trained through `generator_loss`), and two methods that
return unreduced per-sample losses (B,) -- the trainer weights, reduces and steps:

    generator_loss(step)          the student's loss; gradient reaches only the student (through x_hat or
                                  its own forward pass), never the other roles' parameters
    auxiliary_loss(role, step)    the loss of one auxiliary role in `trains` on detached student samples

`__call__(step)` returns both in the term's own NamedTuple (for tests and logging). The reward hooks
(LRM fine-tuning, DDPO, direct) are terms of the same shape: e.g. LRM-FT reads "lrm" and trains it
concurrently on the merged batch x | x_hat through auxiliary_loss("lrm", step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn, Protocol

import torch

from lrm.tuning.denoise import Batch
from lrm.tuning.roles import Roles


@dataclass
class Step:
    """What a term sees in one forward pass."""

    roles: Roles
    batch: Batch
    x_hat: torch.Tensor  # (B, T, c, h, w) the student's x0 (with gradient in the generator phase, detached otherwise)
    generator: torch.Generator  # CPU stream for the term's timesteps and noise (saved in checkpoints)


class Term(Protocol):
    name: str
    reads: tuple[str, ...]
    trains: tuple[str, ...]
    needs_real: bool  # whether it reads Batch.x0
    needs_sample: bool  # whether it reads Step.x_hat (the trainer skips the student's sampler otherwise)

    def generator_loss(self, step: Step) -> torch.Tensor: ...

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor: ...


def no_auxiliary(term: Term, role: str) -> NoReturn:
    raise ValueError(f"loss term {term.name!r} trains no {role!r} role (it trains {list(term.trains)})")
