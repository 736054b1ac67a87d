"""MSCN-Gaussian backbone: the patch-Gaussian NIQE at pixel resolution, on learned pixel planes.

The patch-Gaussian backbone (lrm.models.patch_gaussian) forms its patch statistics at the latent
resolution, where one cell is an 8x8 pixel block. NIQE's statistics are pixel-level: every pixel
is divided by the contrast of its 7x7 neighbourhood (MSCN coefficients), and the features are
moments of those coefficients and of their products with each neighbour, on 96-px patches at full
and half scale. How a photo's NIQE moves under blur, noise or JPEG is decided there, below the
latent cell. This backbone upsamples the latents to a few learned pixel planes and computes those
statistics itself, with NIQE's fixed window; it learns only the planes and the feature map:

    frames (M, c, h, w)
        -> len(widths) x (Conv 3x3 stride 1 pad 1 (+ FiLM) + SiLU)              (M, width, h, w)
        -> Conv 1x1 over [latents, hidden] -> PixelShuffle(8): pixel planes     (M, planes, 8h, 8w)
           (the latents' own linear path spans a linear codec's decoder, as dct's)
        -> at full scale and at half scale (2x2 mean):
           MSCN (x - mu) / (sigma + c), 7x7 Gaussian window (sigma 7/6), c learned per plane
           signals: the coefficients and their products with the H, V, D1, D2 neighbours
           within each patch (wrapping around it, as NIQE's do)
           per signal: mean over each patch (96 px; 48 at half scale) of
           s^2, |s|, relu(-s)^2, [s < 0], then log                              (M, P, K)
        -> per-patch MLP K -> 64 -> F, mean mu and covariance S over the P patches,
           d = sqrt((mu - nu)^T ((L L^T + S) / 2 + eps I)^-1 (mu - nu))            (M,)
    features (M, 1 + F): [d, mu]

K = planes x 2 scales x 5 signals x 4 moments. The four moments are those NIQE's AGGD fits read
(variance, mean absolute value, the left side's variance, the share of negative values; the
right side's variance is the first less the third);
their logs make the fits' ratios differences, as in the latent patch-Gaussian. Frames need two
96-px patches (24x12 latent cells at 8x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrm.models.aggd import MOMENTS, SIGNALS
from lrm.models.fullres import full_resolution_stages
from lrm.models.patch_gaussian import MOMENT_EPS, NIQE_PATCH_CELLS, PatchGaussianDistance, check_two_patches
from lrm.rewards.quality import PAIR_SHIFTS, gaussian_window

PIXELS_PER_CELL = 8  # spatial factor of the 8x codecs (dct, taef2): latent cell -> pixels
NIQE_PATCH_PIXELS = NIQE_PATCH_CELLS * PIXELS_PER_CELL  # 96
VARIANCE_EPS = 1e-6  # under the local variance's square root (its gradient at 0 is infinite)
WINDOW = tuple(gaussian_window().tolist())  # NIQE's (and BRISQUE's) 7-tap Gaussian, sigma 7/6


def separable_blur(x: torch.Tensor, window: tuple[float, ...]) -> torch.Tensor:
    """(..., H, W) filtered by the outer product of `window` with itself, zero padding ('same').
    A weighted sum of shifted views: on CPU several times faster than a depthwise conv."""
    pad, (h, w) = len(window) // 2, x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = sum(weight * padded[..., i : i + h, :] for i, weight in enumerate(window))  # (..., H, W + 2 pad)
    return sum(weight * rows[..., j : j + w] for j, weight in enumerate(window))


def mscn(planes: torch.Tensor, c: torch.Tensor, window: tuple[float, ...] = WINDOW) -> torch.Tensor:
    """MSCN coefficients (x - mu) / (sigma + c) of (M, C, H, W) planes with a separable window,
    zero padding ('same'), and a stabiliser c (C,) per plane -> (M, C, H, W)."""
    mu, second = separable_blur(torch.stack([planes, planes * planes]), window)
    sigma = torch.sqrt((second - mu * mu).abs() + VARIANCE_EPS)
    return (planes - mu) / (sigma + c.view(1, -1, 1, 1))


def paired_products(coefficients: torch.Tensor) -> list[torch.Tensor]:
    """Products of (..., H, W) coefficients with their 4 neighbours, wrapping around (MATLAB circshift)."""
    return [coefficients * torch.roll(coefficients, shift, dims=(-2, -1)) for shift in PAIR_SHIFTS]


def patch_tiles(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(M, C, H, W) -> (M, C, P, patch, patch): whole patch x patch tiles from the top-left corner,
    row-major, a partial last row or column dropped (NIQE's crop)."""
    rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
    x = x[..., : rows * patch, : cols * patch].unflatten(-1, (cols, patch)).unflatten(-3, (rows, patch))
    return x.permute(0, 1, 2, 4, 3, 5).flatten(2, 3)  # (M, C, rows, cols, patch, patch) -> (M, C, P, patch, patch)


def signal_moments(tiles: torch.Tensor) -> torch.Tensor:
    """(M, C, P, p, p) tiles of a signal s -> (M, P, 4C) each tile's mean of s^2, |s|, relu(-s)^2 and
    [s < 0] (the right side's variance is the difference of the first and third)."""
    maps = torch.cat([tiles.square(), tiles.abs(), F.relu(-tiles).square(), (tiles < 0).to(tiles.dtype)], dim=1)
    return maps.mean(dim=(-2, -1)).transpose(1, 2)


def nss_patch_moments(planes: torch.Tensor, c: torch.Tensor, patch: int) -> torch.Tensor:
    """(M, C, H, W) pixel planes at one scale -> (M, P, 20C) patch moments of their MSCN coefficients
    and of the paired products within each patch (which wrap around the patch, as NIQE's do), on
    patch x patch tiles from the top-left corner."""
    tiles = patch_tiles(mscn(planes, c), patch)  # (M, C, P, patch, patch)
    return torch.cat([signal_moments(s) for s in [tiles, *paired_products(tiles)]], dim=2)


class MSCNGaussianBackbone(PatchGaussianDistance):
    """Frames (M, c, h, w) -> features (M, 1 + F): the learned pixel-level NIQE distance and the patches' mean."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (64, 64), planes: int = 2,
                 patch_features: int = 16, cond_dim: int | None = None):
        super().__init__()
        self.stages = full_resolution_stages(in_channels, widths, cond_dim)
        self.to_pixels = nn.Sequential(
            nn.Conv2d(in_channels + widths[-1], planes * PIXELS_PER_CELL**2, 1), nn.PixelShuffle(PIXELS_PER_CELL)
        )
        self.log_c = nn.Parameter(torch.zeros(planes))  # MSCN stabiliser c = exp(log_c) per plane
        self.add_distance(2 * SIGNALS * MOMENTS * planes, patch_features)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        check_two_patches(x)
        hidden = x
        for stage in self.stages:
            hidden = stage(hidden, cond)
        planes = self.to_pixels(torch.cat([x, hidden], dim=1))  # (M, planes, 8h, 8w)
        c = self.log_c.exp()
        moments = torch.cat([
            nss_patch_moments(planes, c, NIQE_PATCH_PIXELS),  # (M, P, 20 planes)
            nss_patch_moments(F.avg_pool2d(planes, 2), c, NIQE_PATCH_PIXELS // 2),
        ], dim=2)  # (M, P, 40 planes)
        return self.distance_features(torch.log(moments + MOMENT_EPS))  # (M, 1 + F); [s < 0] can average to 0
