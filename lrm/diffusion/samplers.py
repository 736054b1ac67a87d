"""Samplers as small pure functions on (x0_hat, eps_hat) and (alpha, sigma), with injectable noise.

A step goes from timestep t (alpha_t, sigma_t) to a less noisy s (alpha_s, sigma_s); the last step of a
grid goes to clean data, `CLEAN` = (1, 0). Noise comes from `noise`: None (torch's global RNG), a
torch.Generator (drawn on the generator's device, then moved to x's, so a CPU generator reproduces the
same samples on any device), or a callable randn_like(x) -> tensor (e.g. a fixed tensor for tests).

- `ddim_step`: DDIM (Song et al. 2021; DOLLAR Eq. 14) with any eta; eta = 0 is deterministic, eta = 1
  samples the DDPM posterior. On the flow schedule, eta = 0 is exactly the Euler step.
- `ddpm_posterior` (DOLLAR Eq. 25) and `gaussian_log_prob` (Eq. 26): the policy of DDPO.
- `euler_step`: the rectified-flow ODE step with velocity eps - x0 (diffusers' FlowMatchEulerDiscrete).
- `cfg`: classifier-free guidance.
- `sample`: the teacher's loop (DDIM on a grid, e.g. `TEACHER_TIMESTEPS`); `sample_few_step`: the
  distilled student's loop on `STUDENT_TIMESTEPS` (predict x0, re-noise it to the next timestep).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from lrm.diffusion.parameterisations import check_prediction, to_x0_eps
from lrm.diffusion.schedules import CLEAN, Schedule, trailing_timesteps

Noise = torch.Generator | Callable[[torch.Tensor], torch.Tensor] | None
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t (B,)) -> model output
Coef = torch.Tensor | float  # alpha or sigma: a scalar or (B, 1, ..., 1) from `Schedule.alpha_sigma(t, x)`

# DOLLAR supplementary Sec. 7.3, in sampling order (noisiest first), T = 1000:
TEACHER_TIMESTEPS = tuple(trailing_timesteps(50).tolist())  # DDIM 50 steps: 999, 979, ..., 19
# steps -> grid: 1 [999]; 2 [999, 499]; 4 [999, 749, 499, 249]
STUDENT_TIMESTEPS = {n: tuple(trailing_timesteps(n).tolist()) for n in (1, 2, 4)}


def randn_like(x: torch.Tensor, noise: Noise = None) -> torch.Tensor:
    """Standard normal noise shaped like x, in x's dtype and device, from the injected source."""
    if noise is None:
        return torch.randn_like(x)
    if isinstance(noise, torch.Generator):
        return torch.randn(x.shape, generator=noise, device=noise.device, dtype=x.dtype).to(x.device)
    out = noise(x)
    if out.shape != x.shape:
        raise ValueError(f"the noise callable returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    return out


# ---------------------------------------------------------------------------------------------------
# DDPM posterior q(x_s | x_t, x0) and its log-density
# ---------------------------------------------------------------------------------------------------

class Posterior(NamedTuple):
    mean: torch.Tensor  # (B, ...)
    std: torch.Tensor  # broadcastable to mean


def posterior_std(alpha_t: Coef, sigma_t: Coef, alpha_s: Coef, sigma_s: Coef) -> torch.Tensor:
    """Std of q(x_s | x_t, x0) for s < t: sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2) with
    alpha_{t|s} = alpha_t / alpha_s, sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (Kingma et al.
    2021, VDM Eq. 8). On VP with s = t - 1 it is DOLLAR's sigma_t = sqrt((1 - a_t)(1 - abar_{t-1}) /
    (1 - abar_t)), Eq. 25 (a_t = abar_t / abar_{t-1}; on a coarser grid a_t is that ratio too)."""
    alpha_ts = alpha_t / alpha_s
    var_ts = torch.as_tensor(sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)
    return (var_ts * sigma_s**2 / sigma_t**2).sqrt()


def ddpm_posterior(x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_t: Coef, sigma_t: Coef, alpha_s: Coef,
                   sigma_s: Coef) -> Posterior:
    """q(x_s | x_t, x0 = x0_hat): mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t +
    (alpha_s sigma_{t|s}^2 / sigma_t^2) x0_hat, std = `posterior_std`. On VP with s = t - 1 this is
    DDPM's posterior (Ho et al. 2020, Eq. 7) and DOLLAR's Eq. 25, whose x0 coefficient should read
    sqrt(abar_{t-1}) (1 - a_t) / (1 - abar_t): the supplementary prints sqrt(abar_t), a typo (with it the
    mean of a noiseless x_t = x0 would not be x0)."""
    alpha_ts = alpha_t / alpha_s
    var_ts = torch.as_tensor(sigma_t**2 - alpha_ts**2 * sigma_s**2).clamp(min=0)
    mean = (alpha_ts * sigma_s**2 / sigma_t**2) * x_t + (alpha_s * var_ts / sigma_t**2) * x0_hat
    return Posterior(mean, posterior_std(alpha_t, sigma_t, alpha_s, sigma_s))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) log N(x; mean, std^2 I) (DOLLAR Eq. 26), summed over all non-batch dims: the exact
    log-density of x (B, ...). ddpo-pytorch averages the same per-element terms instead (sum / D, D =
    x[0].numel()), which only rescales the policy gradient. std must be > 0 (a step to clean data is
    deterministic and has no density). Computed in at least float32: a bf16 sum over a latent rounds away the
    differences DDPO's likelihood ratios are made of."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, mean = x.to(dtype), torch.as_tensor(mean).to(dtype)
    std = torch.as_tensor(std, device=x.device).to(dtype)
    if bool((std <= 0).any()):
        raise ValueError("gaussian_log_prob needs std > 0; a step to clean data (sigma_s = 0) has no density")
    per_element = -0.5 * ((x - mean) ** 2 / std**2 + torch.log(2 * math.pi * std**2))
    return per_element.reshape(x.shape[0], -1).sum(dim=1)


# ---------------------------------------------------------------------------------------------------
# single steps
# ---------------------------------------------------------------------------------------------------

def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_t: Coef, sigma_t: Coef, alpha_s: Coef, sigma_s: Coef,
              eta: float = 0.0, noise: Noise = None) -> torch.Tensor:
    """DDIM from t to s (DOLLAR Eq. 14): x_s = alpha_s x0_hat + sqrt(sigma_s^2 - std^2) eps_hat + std z,
    std = eta * `posterior_std`. With eps_hat = (x_t - alpha_t x0_hat) / sigma_t (any prediction type
    via `to_x0_eps`) this is Eq. 14's ((sqrt(abar_s) - sqrt(1 - abar_s - std^2) sqrt(abar_t) /
    sqrt(1 - abar_t)) x0_hat + sqrt(1 - abar_s - std^2) / sqrt(1 - abar_t) x_t + std z) on VP."""
    if not 0 <= eta <= 1:  # above 1 the noise exceeds sigma_s and eps_hat's share would be clamped to 0
        raise ValueError(f"DDIM eta must be in [0, 1] (0: deterministic, 1: DDPM), got {eta}")
    std = eta * posterior_std(alpha_t, sigma_t, alpha_s, sigma_s)
    x_s = alpha_s * x0_hat + (sigma_s**2 - std**2).clamp(min=0).sqrt() * eps_hat
    if eta > 0:
        x_s = x_s + std * randn_like(x0_hat, noise)
    return x_s


def euler_step(x_t: torch.Tensor, velocity: torch.Tensor, sigma_t: Coef, sigma_s: Coef) -> torch.Tensor:
    """Rectified-flow Euler step: x_s = x_t + (sigma_s - sigma_t) velocity, velocity = eps - x0 (the
    "flow" prediction, d x / d sigma on alpha = 1 - sigma)."""
    return x_t + (sigma_s - sigma_t) * velocity


def renoise(x0_hat: torch.Tensor, alpha_s: Coef, sigma_s: Coef, noise: Noise = None) -> torch.Tensor:
    """x_s = alpha_s x0_hat + sigma_s z with fresh z: forward diffusion of a prediction (few-step
    students, DMD2 / consistency models)."""
    return alpha_s * x0_hat + sigma_s * randn_like(x0_hat, noise)


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022; DOLLAR main paper Eq. 6): uncond + scale (cond - uncond);
    scale = 1 is the conditional output alone (DOLLAR: 7.5 in CD, 3.5 for VSD's real score)."""
    return uncond + scale * (cond - uncond)


# ---------------------------------------------------------------------------------------------------
# loops
# ---------------------------------------------------------------------------------------------------

def _check_grid(timesteps) -> torch.Tensor:
    grid = torch.as_tensor(timesteps)
    if grid.ndim != 1 or grid.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(grid.shape)}")
    if grid.numel() > 1 and not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("timesteps must be strictly decreasing (noisiest first)")
    return grid


def _steps(grid: torch.Tensor, schedule: Schedule, x: torch.Tensor):
    """Yield (t (B,), (alpha_t, sigma_t), (alpha_s, sigma_s)) for consecutive grid entries, last to CLEAN."""
    for i in range(grid.numel()):
        t = grid[i].expand(x.shape[0]).to(x.device)  # (B,)
        here = schedule.alpha_sigma(t, x)
        if i + 1 < grid.numel():
            there = schedule.alpha_sigma(grid[i + 1].expand(x.shape[0]).to(x.device), x)
        else:
            there = tuple(torch.full_like(here[0], v) for v in CLEAN)
        yield t, here, there


def sample(denoise_fn: DenoiseFn, x_T: torch.Tensor, timesteps, schedule: Schedule, prediction: str,
           eta: float = 0.0, noise: Noise = None) -> torch.Tensor:
    """DDIM sampling (`ddim_step`) from x_T (B, ...) through `timesteps` (noisiest first, e.g.
    `TEACHER_TIMESTEPS` or `schedule.timesteps(n)`) to clean data; returns x0 (B, ...).
    denoise_fn(x_t, t (B,) in the schedule's own timesteps: int64 on VP, float32 on flow) -> output in
    `prediction`'s parameterisation (wrap it with `cfg` for guidance). eta = 0: deterministic DDIM (Euler
    on flow); eta = 1: DDPM ancestral sampling (the posterior of Eq. 25 at every step)."""
    check_prediction(prediction)
    x = x_T
    for t, (a_t, s_t), (a_s, s_s) in _steps(_check_grid(timesteps), schedule, x_T):
        x0_hat, eps_hat = to_x0_eps(prediction, denoise_fn(x, t), x, a_t, s_t)
        x = ddim_step(x0_hat, eps_hat, a_t, s_t, a_s, s_s, eta=eta, noise=noise)
    return x


def sample_few_step(denoise_fn: DenoiseFn, x_T: torch.Tensor, timesteps, schedule: Schedule, prediction: str,
                    noise: Noise = None) -> torch.Tensor:
    """The distilled student's sampler on DOLLAR's grids (`STUDENT_TIMESTEPS`; supplementary Sec. 7.3,
    "as in previous work [74]", DMD2): at each t predict x0_hat, then forward-diffuse it with fresh
    noise to the next timestep (`renoise`); the last prediction is the sample. Returns x0 (B, ...).
    (diffusers' FlowMatchEulerDiscreteScheduler calls this stochastic_sampling.)"""
    check_prediction(prediction)
    x = x_T
    grid = _check_grid(timesteps)
    for i, (t, (a_t, s_t), (a_s, s_s)) in enumerate(_steps(grid, schedule, x_T)):
        x0_hat, _ = to_x0_eps(prediction, denoise_fn(x, t), x, a_t, s_t)
        x = renoise(x0_hat, a_s, s_s, noise) if i + 1 < grid.numel() else x0_hat
    return x
