"""An ensemble of K frozen latent surrogates and its disagreement penalty (uncertainty-penalised reward
optimisation, after Coste et al. 2024 and Eisenstein et al. 2023 for language-model reward ensembles).

`SurrogateEnsemble` stands in for one surrogate in the "lrm" role: its output is the mean of its members'
(in reward units, or of their standardised z with standardised=True), so LRM fine-tuning (Eq. 11) pushes
the student up the members' mean. `Disagreement` is the term that penalises where they disagree:

    L_dis = lambda * std_k z_k(x_hat, c)      (B,)  (population std over the K members' standardised outputs)

so lambda (TuneConfig.disagreement_weight) is in standard deviations of the reward, like beta_FT. The std is
written sqrt(var + EPS) - sqrt(EPS): exactly 0 with a zero gradient where all members agree (a plain sqrt
has an infinite derivative there). The gradient reaches the student through x_hat only; no member gets one.
The tuning monitor records the members' disagreement on its fixed-seed samples (TuningRecord.disagreement),
which a stopping rule can read.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lrm.tuning.denoise import no_param_grad
from lrm.tuning.lrm_ft import LRM
from lrm.tuning.terms import Step, no_auxiliary

EPS = 1e-12  # inside the square root of the std (see the module docstring)


class SurrogateEnsemble(nn.Module):
    """K >= 2 surrogates of the same reward read as one (the "lrm" role of a frozen LRM fine-tuning run)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a surrogate ensemble needs at least 2 surrogates, got {len(members)}; give one "
                             "surrogate alone without an ensemble")
        self.members = nn.ModuleList(members)

    @property
    def info(self):  # the reward's spec and codec: the first member's (all imitate the same reward)
        return self.members[0].info

    @property
    def noise_aware(self) -> bool:
        return all(m.noise_aware for m in self.members)

    def member_scores(self, latents: torch.Tensor, text: torch.Tensor | None = None,
                      text_mask: torch.Tensor | None = None, t: torch.Tensor | None = None,
                      standardised: bool = False) -> torch.Tensor:
        """(K, B) each member's score of latents (B, T, c, h, w)."""
        return torch.stack([m(latents, text, text_mask, t=t, standardised=standardised) for m in self.members])

    def forward(self, latents: torch.Tensor, text: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                t: torch.Tensor | None = None, standardised: bool = False) -> torch.Tensor:
        """(B,) the members' mean score."""
        return self.member_scores(latents, text, text_mask, t, standardised).mean(0)


def spread(scores: torch.Tensor) -> torch.Tensor:
    """(K, B) -> (B,) population std over the members, 0 with a zero gradient where they agree."""
    variance = scores.float().var(0, correction=0)
    return (variance + EPS).sqrt() - EPS ** 0.5


class Disagreement:
    """L_dis above: reads the ensemble in the "lrm" role; trains nothing."""

    name = "disagreement"
    needs_real = False
    needs_sample = True
    trains = ()

    def __init__(self, role: str = LRM):
        self.role = role
        self.reads = (role,)

    def generator_loss(self, step: Step) -> torch.Tensor:
        ensemble = step.roles.module(self.role)
        if not isinstance(ensemble, SurrogateEnsemble):
            raise ValueError(f"the disagreement penalty reads an ensemble of surrogates in role {self.role!r}, "
                             f"found a {type(ensemble).__name__}; pass two or more surrogates")
        with no_param_grad(ensemble):
            scores = ensemble.member_scores(step.x_hat, step.batch.text, step.batch.text_mask, standardised=True)
        return spread(scores)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        no_auxiliary(self, role)

    def __call__(self, step: Step) -> torch.Tensor:
        return self.generator_loss(step)
