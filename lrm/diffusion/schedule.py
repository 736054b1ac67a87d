"""The DDPM forward process (DOLLAR supplementary, Sec. 3: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps).

Two beta schedules with T = 1000 steps, as plain named entries:
- "linear": DDPM's linear betas 1e-4 .. 0.02 (Ho et al. 2020), the default here because the
  paper states "DDPM schedule, T = 1000";
- "scaled-linear": Stable Diffusion's latent schedule, betas linear in sqrt from 0.00085 to 0.012.
Timesteps are integers 0 .. T-1; t = 0 is the least noisy (abar_0 = 1 - beta_0).
lrm.diffusion.schedules wraps these as VPSchedule, next to rectified flow, behind one (alpha, sigma) interface.
"""

from __future__ import annotations

import torch

# name -> (beta_start, beta_end, spacing): spacing "linear" interpolates betas, "sqrt" their roots
SCHEDULES: dict[str, tuple[float, float, str]] = {
    "linear": (1e-4, 0.02, "linear"),
    "scaled-linear": (0.00085, 0.012, "sqrt"),
}
NUM_TIMESTEPS = 1000  # T of the DDPM schedule


def betas(schedule: str = "linear", num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """(T,) float64 betas of a named schedule."""
    if schedule not in SCHEDULES:
        raise KeyError(f"unknown noise schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    start, end, spacing = SCHEDULES[schedule]
    if spacing == "sqrt":
        return torch.linspace(start**0.5, end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def alphas_cumprod(schedule: str = "linear", num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """(T,) float64 abar_t = prod_{s <= t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas(schedule, num_timesteps), dim=0)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for integer timesteps t (B,) and x0 (B, ...)."""
    if t.ndim != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"add_noise: t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if x0.shape != eps.shape:
        raise ValueError(f"add_noise: x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape")
    a = abar.cpu()[t.long().cpu()]  # (B,) in abar's precision (1 - abar at small t needs it), on the CPU (MPS has
    a = a.reshape(-1, *([1] * (x0.ndim - 1)))  # no float64)
    return a.sqrt().to(x0.device, x0.dtype) * x0 + (1 - a).sqrt().to(x0.device, x0.dtype) * eps
