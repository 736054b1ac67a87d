"""Convolutional backbones of the latent reward models (DOLLAR supplementary, Tab. 10).

`ConvBackbone` generalises Tab. 10 to any number of stages, 2D (per frame) or 3D (per clip):

    stage 0: Conv 4x4 stride 4 pad 1 + GroupNorm + SiLU      (3D: kernel 3x4x4, stride 1x4x4)
    stage 1: Conv 3x3 stride 2 pad 1 + GroupNorm + SiLU      (3D: kernel 3x3x3, stride 1x2x2)
    stage 2+: Conv 3x3 stride 1 pad 1 + GroupNorm + SiLU     (larger presets only)
    AdaptiveAvgPool -> Conv 1x1 -> Flatten                   -> features (N, feature_dim)

With widths (128, 128), feature_dim 128 and 12 input channels it is exactly Tab. 10 without its
final Linear (the head lives in `LatentRewardModel`). GroupNorm uses 32 groups (4 channels per
group at width 128); the group count does not change the parameter count (affine: 2 per channel).
Time stays at stride 1 in 3D so that clips of any length, including T = 1, pass.

A stage can be conditioned on a timestep embedding (noise-aware surrogates): the embedding is
mapped to a per-channel scale and shift applied after the GroupNorm (FiLM / AdaGN, as in diffusion
U-Nets), zero-initialised so that conditioning starts as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32  # GroupNorm groups per stage (fewer when they do not divide the width: gcd(32, width))


def _stage_geometry(index: int, temporal: bool) -> tuple[tuple, tuple, tuple]:
    """(kernel, stride, padding) of conv stage `index`; see the module docstring."""
    if index == 0:
        kernel, stride = (4, 4), (4, 4)
    elif index == 1:
        kernel, stride = (3, 3), (2, 2)
    else:
        kernel, stride = (3, 3), (1, 1)
    padding = (1, 1)
    if temporal:
        return (3, *kernel), (1, *stride), (1, *padding)
    return kernel, stride, padding


class ConvStage(nn.Module):
    """Conv + GroupNorm (+ FiLM from a condition vector) + SiLU; norm=False leaves out the GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int, geometry: tuple[tuple, tuple, tuple],
                 cond_dim: int | None, norm: bool = True):
        super().__init__()
        kernel, stride, padding = geometry
        conv = nn.Conv3d if len(kernel) == 3 else nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel, stride, padding)
        self.norm = nn.GroupNorm(math.gcd(GROUPS, out_channels), out_channels) if norm else nn.Identity()
        self.film = nn.Linear(cond_dim, 2 * out_channels) if cond_dim else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.conv(x))  # (N, C, [T,] h, w)
        if self.film is not None:
            if cond is None:
                raise ValueError("this stage is timestep-conditioned: pass cond (N, cond_dim)")
            scale, shift = self.film(cond).chunk(2, dim=1)  # (N, C) each
            shape = (*scale.shape, *([1] * (h.ndim - 2)))
            h = h * (1 + scale.reshape(shape)) + shift.reshape(shape)
        return F.silu(h)


class ConvBackbone(nn.Module):
    """Latents (N, c, h, w) [2D] or (N, c, T, h, w) [3D] -> features (N, feature_dim)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (128, 128), feature_dim: int = 128,
                 temporal: bool = False, cond_dim: int | None = None):
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"ConvBackbone needs at least 2 stages (Tab. 10), got widths={widths}")
        self.temporal = temporal
        self.feature_dim = feature_dim
        channels = (in_channels, *widths)
        self.stages = nn.ModuleList(
            ConvStage(channels[i], channels[i + 1], _stage_geometry(i, temporal), cond_dim)
            for i in range(len(widths))
        )
        self.pool = nn.AdaptiveAvgPool3d(1) if temporal else nn.AdaptiveAvgPool2d(1)
        self.project = (nn.Conv3d if temporal else nn.Conv2d)(widths[-1], feature_dim, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x, cond)
        return self.project(self.pool(x)).flatten(1)  # (N, feature_dim)
