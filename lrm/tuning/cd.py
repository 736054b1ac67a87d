"""Multi-step consistency distillation (DOLLAR main paper Eq. 4; LCM, Luo et al. 2023; m = 1 is plain CD,
Song et al. 2023).

On the teacher's 50-step DDIM grid t_1 < ... < t_50 ([19, 39, ..., 999], DOLLAR Sec. 7.3), per sample an
index n is drawn uniformly with n + m <= 50; real data is noised to x_{t_{n+m}} (Alg. 1 line 9), the
frozen teacher takes m DDIM steps (Eq. 14) with CFG 7.5 down to x_{t_n}, and the EMA student's x0
prediction there is the target:

    L_CD = mean_elements || x0_student(x_{t_{n+m}}, t_{n+m}) - stopgrad(x0_ema(x_hat_{t_n}, t_n)) ||^2

(squared L2 averaged over elements; LCM uses a Huber loss, DOLLAR writes an L2 distance). Gradient reaches
the student only; teacher and EMA run without gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lrm.diffusion import samplers
from lrm.tuning.denoise import mean_per_sample, predict, randn, schedule_of
from lrm.tuning.roles import EMA, STUDENT, TEACHER
from lrm.tuning.terms import Step, no_auxiliary

GUIDANCE = 7.5  # DOLLAR Sec. 7.3: "CFG augmentation with a weight of w = 7.5 in CD"
GRID_STEPS = 50  # the teacher's DDIM grid ("CD follows a DDIM schedule with N = 50 steps, as in LCM")
PAPER_TEACHER_STEPS = 5  # DOLLAR's multi-step CD: m = 5 teacher steps per target


class CDLoss(NamedTuple):
    generator: torch.Tensor  # (B,)


def teacher_solve(teacher, x: torch.Tensor, path: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                  guidance: float) -> torch.Tensor:
    """DDIM (eta = 0) with CFG from path[:, 0] through path[:, 1:], per sample; path (B, m + 1) timesteps,
    decreasing along dim 1. Returns x at path[:, -1]."""
    schedule = schedule_of(teacher)
    for j in range(path.shape[1] - 1):
        t, s = path[:, j].to(x.device), path[:, j + 1].to(x.device)
        x0_hat, eps_hat = predict(teacher, x, t, text, text_mask, guidance)
        x = samplers.ddim_step(x0_hat, eps_hat, *schedule.alpha_sigma(t, x), *schedule.alpha_sigma(s, x))
    return x


class CD:
    """L_CD (Eq. 4): reads teacher, student, EMA student; trains only the student."""

    name = "cd"
    needs_real = True
    needs_sample = False
    trains: tuple[str, ...] = ()

    def __init__(self, teacher_steps: int = 1, guidance: float = GUIDANCE, grid_steps: int = GRID_STEPS):
        if not isinstance(teacher_steps, int) or not 1 <= teacher_steps < grid_steps:
            raise ValueError(f"CD teacher_steps m must be an integer in 1..{grid_steps - 1}, got {teacher_steps!r}")
        self.teacher_steps, self.guidance, self.grid_steps = teacher_steps, guidance, grid_steps
        self.reads = (TEACHER, STUDENT, EMA)

    def draw(self, teacher, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, m + 1) timesteps [t_{n+m}, ..., t_n] on the grid, n uniform with n + m within the grid."""
        ascending = schedule_of(teacher).timesteps(self.grid_steps).flip(0)  # t_1 < ... < t_N
        n = torch.randint(0, self.grid_steps - self.teacher_steps, (batch_size,), generator=generator)
        offsets = torch.arange(self.teacher_steps, -1, -1)  # m, m-1, ..., 0
        return ascending[n[:, None] + offsets[None]]

    def generator_loss(self, step: Step) -> torch.Tensor:
        roles, batch = step.roles, step.batch
        teacher, student, ema = roles.module(TEACHER), roles.module(STUDENT), roles.module(EMA)
        x0 = batch.real("loss term 'cd'")
        path = self.draw(teacher, x0.shape[0], step.generator)
        eps = randn(x0.shape, step.generator, x0)
        alpha, sigma = schedule_of(teacher).alpha_sigma(path[:, 0].to(x0.device), x0)
        x_start = alpha * x0 + sigma * eps  # x_{t_{n+m}} = F(x, t_{n+m})
        with torch.no_grad():
            x_end = teacher_solve(teacher, x_start, path, batch.text, batch.text_mask, self.guidance)
            target = predict(ema, x_end, path[:, -1].to(x0.device), batch.text, batch.text_mask).x0.float()
        x0_student = predict(student, x_start, path[:, 0].to(x0.device), batch.text, batch.text_mask).x0
        return mean_per_sample((x0_student.float() - target) ** 2)

    def auxiliary_loss(self, role: str, step: Step) -> torch.Tensor:
        no_auxiliary(self, role)

    def __call__(self, step: Step) -> CDLoss:
        return CDLoss(self.generator_loss(step))
