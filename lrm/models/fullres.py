"""Full-resolution backbone: local quality or change maps at the latent resolution, pooled like VBench.

The strided CNN of Tab. 10 shrinks 4x in its first conv and then GroupNorms away each sample's
energy. Rewards built from fine local statistics lose most of their signal that way: BRISQUE reads
the distribution of locally normalised pixels, temporal flickering averages |frame_{t+1} - frame_t|
over all pixels, dynamic degree averages the largest 5% of optical-flow magnitudes. This backbone
keeps their shape:

    input per frame:       z_t                                   (M, c, h, w),  M = N*T
    or per frame pair:     [z_t, z_{t+1}, z_{t+1} - z_t]         (M, 3c, h, w), M = N*(T-1)
        -> len(widths) x (Conv 3x3 stride 1 pad 1 (+ FiLM) + SiLU)          (M, width, h, w)
        -> Conv 1x1 -> `maps` local maps                                    (M, K, h, w)
        -> per map: mean over positions and mean of its largest 5%          (M, 2K)
    frame pairs are averaged over the T-1 pairs here -> features (N, 2K); for single frames
    LatentRewardModel averages the per-frame outputs, as for every per-frame preset.

Stride 1 keeps motions of a fraction of a latent pixel (a few pixels) visible, and three 3x3 convs
see +-3 latent pixels (+-24 px at 8x). There is no GroupNorm: normalising each sample would divide
away the absolute size of the change, which is what flicker measures. Noise-aware surrogates
condition every conv by FiLM, as in `ConvBackbone`.
"""

from __future__ import annotations

import torch
from torch import nn

from lrm.models.cnn import ConvStage

TOP_FRACTION = 0.05  # VBench DynamicDegree: mean of the largest 5% of flow magnitudes per frame pair


def mean_of_largest(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """(M, K, P) values at P positions -> (M, K) mean of the largest max(1, round(fraction * P)) per map."""
    k = max(1, round(fraction * maps.shape[-1]))
    return maps.topk(k, dim=-1).values.mean(dim=-1)


def full_resolution_stages(in_channels: int, widths: tuple[int, ...], cond_dim: int | None) -> nn.ModuleList:
    """len(widths) x (Conv 3x3 stride 1 pad 1 (+ FiLM) + SiLU), no GroupNorm: (M, in, h, w) -> (M, widths[-1], h, w)."""
    channels = (in_channels, *widths)
    geometry = ((3, 3), (1, 1), (1, 1))
    return nn.ModuleList(
        ConvStage(channels[i], channels[i + 1], geometry, cond_dim, norm=False) for i in range(len(widths))
    )


class FullResolutionBackbone(nn.Module):
    """Frames (M, c, h, w) or, with frame_pairs, clips (N, c, T, h, w), T >= 2 -> features (., 2 * maps)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 64, 64), maps: int = 16,
                 frame_pairs: bool = False, cond_dim: int | None = None, top_fraction: float = TOP_FRACTION):
        super().__init__()
        self.stages = full_resolution_stages(3 * in_channels if frame_pairs else in_channels, widths, cond_dim)
        self.maps = nn.Conv2d(widths[-1], maps, 1)
        self.frame_pairs = frame_pairs
        self.top_fraction = top_fraction
        self.feature_dim = 2 * maps

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if not self.frame_pairs:
            return self._pooled_maps(x, cond)  # (M, 2K)
        n, c, frames, h, w = x.shape
        if frames < 2:
            raise ValueError(
                f"a frame-pair surrogate compares consecutive latent frames: it needs T >= 2, got latents "
                f"with T={frames}; use an image or 3D preset for single frames"
            )
        pairs = frames - 1
        first = x[:, :, :-1].transpose(1, 2).reshape(n * pairs, c, h, w)  # (N*(T-1), c, h, w)
        second = x[:, :, 1:].transpose(1, 2).reshape(n * pairs, c, h, w)
        if cond is not None:
            cond = cond.repeat_interleave(pairs, dim=0)  # (N*(T-1), E)
        pooled = self._pooled_maps(torch.cat([first, second, second - first], dim=1), cond)  # (N*(T-1), 2K)
        return pooled.reshape(n, pairs, -1).mean(dim=1)  # (N, 2K)

    def _pooled_maps(self, hidden: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        for stage in self.stages:
            hidden = stage(hidden, cond)
        local = self.maps(hidden).flatten(2)  # (M, K, h*w)
        return torch.cat([local.mean(dim=-1), mean_of_largest(local, self.top_fraction)], dim=1)  # (M, 2K)
