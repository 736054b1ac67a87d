"""Noise schedules as (alpha_t, sigma_t) for a model's own timesteps: x_t = alpha_t x0 + sigma_t eps.

Two families behind one interface (`Schedule`):
- `VPSchedule`: the DDPM variance-preserving process of DOLLAR (supplementary Eq. 17, T = 1000):
  alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) for integer timesteps t = 0 .. T-1 (t = 0 the least
  noisy), with the named beta schedules of lrm.diffusion.schedule ("linear", "scaled-linear").
- `FlowSchedule`: rectified flow (SD3, FLUX, Wan): alpha = 1 - sigma. The model's timestep is the
  (already shifted) sigma times T, a float in (0, T], exactly what diffusers'
  FlowMatchEulerDiscreteScheduler feeds its transformer (`timesteps = sigmas * num_train_timesteps`).
  So alpha_sigma(t) is linear in t, and the shift sigma' = shift sigma / (1 + (shift - 1) sigma) acts
  where timesteps are chosen: the sampling grid (`timesteps`) and training draws (`sample_timesteps`).
  Its `grid` names the reference the sampling grid equals (FLOW_GRIDS): "scheduler" (the default) is
  diffusers' FlowMatchEulerDiscreteScheduler(shift=...).set_timesteps(n), what StableDiffusion3Pipeline
  samples on; "flux" is FluxPipeline's: sigmas linspace(1, 1/n, n) shifted once.

Every schedule round-trips through a JSON-able dict (`config()` / `schedule_from_config`), e.g.
{"type": "vp", "betas": "linear", "num_timesteps": 1000} or {"type": "flow", "shift": 3.0,
"num_timesteps": 1000, "grid": "scheduler"}; model checkpoints store that dict (a flow config saved
without "grid" reads as "scheduler", the grid it was sampled on).

Sampling grids run from the noisiest timestep down; the step after the last one goes to clean data
(alpha = 1, sigma = 0, `CLEAN`), as diffusers' DDIMScheduler with set_alpha_to_one=True does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol

import torch

from lrm.diffusion.schedule import NUM_TIMESTEPS, SCHEDULES, alphas_cumprod

CLEAN = (1.0, 0.0)  # (alpha, sigma) of x0 itself: where every sampler's last step lands


class Schedule(Protocol):
    """What samplers, losses and denoisers need from a noise schedule."""

    num_timesteps: int

    def alpha_sigma(self, t: torch.Tensor | int | float,
                    x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...

    def timesteps(self, num_steps: int) -> torch.Tensor: ...

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor: ...

    def config(self) -> dict: ...


def _shaped(values: torch.Tensor, x: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """values with t's shape (float64, computed on the CPU: MPS has no float64) -> on t's `device` (float32 on
    MPS), or (B, 1, ..., 1) / scalar in x's dtype and device."""
    if x is None:
        return values.to(device, torch.float32 if device.type == "mps" else values.dtype)
    if values.ndim == 1:
        if values.shape[0] != x.shape[0]:
            raise ValueError(f"timesteps have batch {values.shape[0]} but x has batch {x.shape[0]}")
        values = values.reshape(-1, *([1] * (x.ndim - 1)))
    elif values.ndim != 0:
        raise ValueError(f"timesteps must be a scalar or (B,), got shape {tuple(values.shape)}")
    return values.to(device=x.device, dtype=x.dtype)


def trailing_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """(num_steps,) int64 grid, noisiest first, ending at T/num_steps - 1 ("trailing" spacing of
    Lin et al. 2024, Table 2; diffusers' timestep_spacing="trailing"). For T = 1000 it gives DOLLAR's
    grids: 50 -> [999, 979, ..., 19]; 4 -> [999, 749, 499, 249]; 2 -> [999, 499]; 1 -> [999]. For 62 values of
    num_steps (61, 103, 121, ...) the float stride makes arange yield one entry too many, ending at -1; diffusers
    returns that grid, here it is cut to num_steps."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"sampling steps must be in 1..{num_timesteps} (the schedule's timesteps), got {num_steps}")
    grid = torch.arange(num_timesteps, 0, -num_timesteps / num_steps, dtype=torch.float64).round() - 1
    return grid[:num_steps].to(torch.int64)


@dataclass(frozen=True)
class VPSchedule:
    """DDPM (variance preserving): alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), t integer."""

    betas: str = "linear"  # named beta schedule of lrm.diffusion.schedule; DOLLAR: "DDPM schedule"
    num_timesteps: int = NUM_TIMESTEPS  # T; DOLLAR: 1000
    _abar: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.betas not in SCHEDULES:
            raise ValueError(f"unknown beta schedule {self.betas!r}; choose one of {sorted(SCHEDULES)}")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}")
        object.__setattr__(self, "_abar", alphas_cumprod(self.betas, self.num_timesteps))  # (T,) float64

    def alpha_sigma(self, t: torch.Tensor | int | float,
                    x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t: int or (B,) integer timesteps in 0..T-1 -> (alpha, sigma), float64 shaped like t; with x
        (B, ...) given, shaped (B, 1, ..., 1) in x's dtype and device, ready to multiply x."""
        t = torch.as_tensor(t)
        device, t = t.device, t.cpu()
        if t.is_floating_point() and not torch.equal(t, t.round()):
            raise ValueError("VP timesteps must be integers 0..T-1; got fractional values")
        t = t.long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(f"VP timesteps must lie in 0..{self.num_timesteps - 1}, "
                             f"got {int(t.min())}..{int(t.max())}")
        abar = self._abar[t]
        return _shaped(abar.sqrt(), x, device), _shaped((1 - abar).sqrt(), x, device)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """(num_steps,) int64 sampling grid, noisiest first (trailing spacing: DOLLAR's grids)."""
        return trailing_timesteps(num_steps, self.num_timesteps)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) int64 training timesteps, uniform on 0..T-1 (DDPM training, DOLLAR Eq. 13)."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch_size,), generator=generator,
                             device=gen_device).to(device)

    def config(self) -> dict:
        return {"type": "vp", "betas": self.betas, "num_timesteps": self.num_timesteps}


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 / FLUX / Wan timestep shift: sigma' = shift sigma / (1 + (shift - 1) sigma); shift > 1
    spends more of the schedule at high noise (shift = 1 is the identity)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


# FlowSchedule.grid: the sampling grid's reference. "scheduler": diffusers' FlowMatchEulerDiscreteScheduler
# set_timesteps(n) (SD3, lrm's own flow DiTs; Wan, whose pipeline's UniPC solver spaces its steps otherwise: lrm samples
# it with DDIM / Euler on this grid); "flux": FluxPipeline's sigmas = linspace(1, 1/n, n), shifted once
FLOW_GRIDS = ("scheduler", "flux")


@dataclass(frozen=True)
class FlowSchedule:
    """Rectified flow: sigma = t / T, alpha = 1 - sigma, for the model's float timestep t in (0, T]."""

    shift: float = 1.0  # timestep shift of the grid and of training draws; SD3 uses 3.0, Wan 5.0
    num_timesteps: int = NUM_TIMESTEPS  # T: the model's timestep is sigma * T (diffusers' convention)
    grid: str = "scheduler"  # which reference the sampling grid equals (FLOW_GRIDS; see `timesteps`)

    def __post_init__(self) -> None:
        if not isinstance(self.shift, (int, float)) or not self.shift > 0:
            raise ValueError(f"flow shift must be > 0, got {self.shift}")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}")
        if self.grid not in FLOW_GRIDS:
            raise ValueError(f"unknown flow grid {self.grid!r}; choose one of {', '.join(FLOW_GRIDS)}")

    def alpha_sigma(self, t: torch.Tensor | int | float,
                    x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t: float or (B,) model timesteps in [0, T] -> (alpha, sigma) = (1 - t/T, t/T), float64 shaped
        like t; with x (B, ...) given, shaped (B, 1, ..., 1) in x's dtype and device."""
        t = torch.as_tensor(t)
        device, t = t.device, t.cpu()
        if t.numel() and (t.min() < 0 or t.max() > self.num_timesteps):
            raise ValueError(f"flow timesteps must lie in [0, {self.num_timesteps}], "
                             f"got {float(t.min())}..{float(t.max())}")
        sigma = t.to(torch.float64) / self.num_timesteps
        return _shaped(1 - sigma, x, device), _shaped(sigma, x, device)

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """(num_steps,) float32 sampling grid, noisiest first, shifted sigmas times T, equal to
        - grid "scheduler": diffusers' FlowMatchEulerDiscreteScheduler(shift=...).set_timesteps(num_steps)
          .timesteps (what StableDiffusion3Pipeline samples on): sigmas evenly spaced from 1 to shift(1/T),
          then shifted (diffusers shifts its sigma_min twice; kept for parity);
        - grid "flux": the timesteps FluxPipeline samples on: it passes sigmas = linspace(1, 1/n, n) to the
          scheduler, which shifts them once (FLUX.1-dev's dynamic shift exp(mu) is this schedule's `shift`)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if self.grid == "flux":
            sigmas = shift_sigma(torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64), self.shift)
            return sigmas.float() * self.num_timesteps  # float32, as diffusers
        sigma_min = shift_sigma(torch.tensor(1.0 / self.num_timesteps, dtype=torch.float64), self.shift)
        sigmas = shift_sigma(torch.linspace(1.0, float(sigma_min), num_steps, dtype=torch.float64), self.shift)
        return sigmas.float() * self.num_timesteps  # float32, as diffusers

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) float32 training timesteps: sigma = shift(u), u ~ U(0, 1), times T."""
        gen_device = generator.device if generator is not None else device
        u = torch.rand(batch_size, generator=generator, device=gen_device, dtype=torch.float64)
        return (shift_sigma(u, self.shift) * self.num_timesteps).float().to(device)

    def config(self) -> dict:
        return {"type": "flow", "shift": self.shift, "num_timesteps": self.num_timesteps, "grid": self.grid}


SCHEDULE_TYPES: dict[str, type] = {"vp": VPSchedule, "flow": FlowSchedule}


def schedule_from_config(cfg: dict) -> VPSchedule | FlowSchedule:
    """A schedule from its JSON-able config (`Schedule.config()`); missing fields take the defaults."""
    if not isinstance(cfg, dict) or cfg.get("type") not in SCHEDULE_TYPES:
        got = cfg.get("type") if isinstance(cfg, dict) else cfg
        raise ValueError(f"schedule config needs \"type\" in {sorted(SCHEDULE_TYPES)}, got {got!r}")
    cls = SCHEDULE_TYPES[cfg["type"]]
    allowed = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(cfg) - allowed - {"type"})
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {cfg['type']} schedule config; allowed: {sorted(allowed)}")
    return cls(**{k: v for k, v in cfg.items() if k != "type"})
