"""Timestep embedding of noise-aware surrogates: sinusoidal features (Transformer / DDPM style) -> MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_PERIOD = 10_000  # longest wavelength of the sinusoids, as in DDPM and DiT


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer or float timesteps (N,) -> (N, dim) [cos | sin] features."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class TimestepEmbedding(nn.Module):
    """t (N,) -> (N, dim): sinusoids (computed in float32) -> Linear -> SiLU -> Linear, in the MLP's dtype."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))
